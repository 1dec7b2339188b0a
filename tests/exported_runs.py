"""Exported runs for tests: a freshly initialised model written the way training exports its weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from trajtok.config import ClipConfig, ModelConfig
from trajtok.models.registry import build_model


def write_weights(
    run_dir: Path, name: str = "trajvit2", step: int = 5, seed: int = 0, **model: object
) -> Path:
    """A run directory holding weights.safetensors of a tiny model (weights + configs in the metadata)."""
    model_cfg, clip_cfg = ModelConfig(name=name, size="tiny", **model), ClipConfig(frames=8, size=32)
    torch.manual_seed(seed)
    network = build_model(model_cfg, clip_cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        "model": json.dumps(dataclasses.asdict(model_cfg)),
        "clip": json.dumps(dataclasses.asdict(clip_cfg)),
        "step": str(step),
        "source": "test",
    }
    save_file(network.state_dict(), str(run_dir / "weights.safetensors"), metadata=metadata)
    return run_dir
