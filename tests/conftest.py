"""Shared fixtures: the repository root, the real sample videos in ../shared/data/videos, synthetic shards."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _fresh_mlflow_tracking_uri() -> Iterator[None]:
    """Every in-process MLflow call a test makes (`mlflow.set_tracking_uri`, which the tracker calls) leaves
    a process-wide URI that wins over MLFLOW_TRACKING_URI; reset after each test, so no later test talks to
    an earlier test's store or stopped server."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:  # not imported: nothing was set
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


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


@dataclass(frozen=True)
class SyntheticShards:
    """WebDataset shards of synthetic clips (`trajtok.data.synth`) written per the sample contract."""

    directory: Path
    pattern: str  # brace pattern of the video shards, as `data.shards` takes it
    image_pattern: str  # brace pattern of the image (T = 1) shards
    num_shards: int
    clips_per_shard: int
    frames: int


def write_synthetic_shards(
    directory: Path,
    prefix: str,
    num_shards: int,
    per_shard: int,
    frames: int,
    height: int,
    width: int,
    seed: int,
    frame_format: str = "mp4",
) -> str:
    """Write `num_shards` tars of `per_shard` labelled synthetic clips each; returns their brace pattern."""
    import webdataset as wds

    from trajtok.data.sample import build_sample
    from trajtok.data.synth import generate_clip

    directory.mkdir(parents=True, exist_ok=True)
    fps = 8.0
    for shard in range(num_shards):
        with wds.TarWriter(str(directory / f"{prefix}-{shard:06d}.tar")) as sink:
            for i in range(per_shard):
                index = shard * per_shard + i
                clip = generate_clip(seed + index, max(frames, 2), height, width)  # an image: a first frame
                sink.write(
                    build_sample(
                        clip.frames[:frames],
                        clip.labels[:frames],
                        source=f"synth/{prefix}/{index:05d}",
                        clip_index=0,
                        clip_start=0.0,
                        clip_end=frames / fps,
                        timestamps=[t / fps for t in range(frames)],
                        captions=clip.caption,
                        source_fps=None if frames == 1 else fps,
                        source_width=width,
                        source_height=height,
                        labeler={"name": "synth", "version": "1", "params": {"seed": seed + index}},
                        frame_format=frame_format,
                    )
                )
    return str(directory / f"{prefix}-{{000000..{num_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> SyntheticShards:
    """8 shards of 4 labelled 8-frame 72x96 synthetic clips, and 2 shards of 4 images (T = 1)."""
    directory = tmp_path_factory.mktemp("synthetic-shards")
    pattern = write_synthetic_shards(directory, "video", 8, 4, frames=8, height=72, width=96, seed=0)
    image_pattern = write_synthetic_shards(directory, "image", 2, 4, frames=1, height=72, width=96, seed=1000)
    return SyntheticShards(directory, pattern, image_pattern, num_shards=8, clips_per_shard=4, frames=8)


def _free_port_block(count: int) -> int:
    """The first of `count` consecutive TCP ports that are all free right now."""
    for _ in range(100):
        base = random.randrange(30000, 60000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """A fresh one-node SLURM cluster for the session (scripts/slurm-local.sh, ROOT under /tmp, own ports).

    Yields its slurm.conf, also exported as SLURM_CONF so sbatch, sacct and submitit find it. Where it cannot
    start (not root, no apt) the tests are skipped with the reason, except under CI=true, where that fails.
    """
    root = Path(tempfile.mkdtemp(prefix="trajtok-slurm-"))
    env = {**os.environ, "ROOT": str(root), "PORT": str(_free_port_block(3))}
    previous = os.environ.get("SLURM_CONF")
    try:
        # Output to a file, not a pipe: a daemon inheriting the pipe would hold it open after the script ends.
        script = ["bash", str(REPO_ROOT / "scripts" / "slurm-local.sh")]
        with open(root / "start.log", "w") as log:
            status = subprocess.run(script, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
        if status.returncode != 0:
            detail = ((root / "start.log").read_text().strip().splitlines() or ["no message"])[-1]
            reason = f"local SLURM cluster did not start (status {status.returncode}): {detail}"
            if os.environ.get("CI") == "true":
                pytest.fail(reason)
            pytest.skip(reason)
        os.environ["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
        yield root / "etc" / "slurm.conf"
    finally:
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "slurm-local-stop.sh")], env=env, check=False)
        shutil.rmtree(root, ignore_errors=True)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_cli(*args, timeout=300)`: the `trajtok` CLI in a fresh process, as users run it."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "launch.cli", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    return run


@dataclass(frozen=True)
class Deadline:
    """Waits for a background job (a file it writes, its end) for at most `timeout_s`, then fails the test."""

    timeout_s: float

    def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + self.timeout_s
        while not predicate():
            if time.monotonic() > end:
                pytest.fail(f"timed out after {self.timeout_s:.0f} s waiting for {what}")
            time.sleep(0.5)

    def results(self, job: Any) -> list:
        """Every task's return value of a submitit job; the job is cancelled if it does not finish in time."""
        try:
            self.wait_for(job.done, f"SLURM job {job.job_id}")
        except BaseException:
            job.cancel(check=False)
            raise
        return job.results()


@pytest.fixture(scope="session")
def deadline() -> type[Deadline]:
    """`deadline(seconds)`: a `Deadline` for the SLURM tests' jobs."""
    return Deadline


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small set written by `trajtok.data.synth`: 24 clips of 8 frames at 64x64 with exact label maps
    (manifest.jsonl with `gt_labels`, videos/, labels/, and scenes.jsonl saying what each clip shows)."""
    from trajtok.config import SynthConfig
    from trajtok.data.synth import write_dataset

    out = tmp_path_factory.mktemp("synth-dataset")
    write_dataset(SynthConfig(out=str(out), videos=24, frames=8, height=64, width=64, fps=8.0, seed=0))
    return out
