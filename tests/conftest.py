"""Shared fixtures: the repository root and the real sample videos in ../shared/data/videos."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO_ROOT.parent / "shared" / "data" / "videos"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """Directory holding vtest.avi (msmpeg4, 795 frames) and tree.avi (cinepak, declares 444, has 68)."""
    if not (SHARED_VIDEOS / "vtest.avi").is_file():
        pytest.fail(f"shared sample videos not found in {SHARED_VIDEOS}")
    return SHARED_VIDEOS
