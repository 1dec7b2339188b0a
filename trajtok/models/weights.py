"""A trained model as one file: weights.safetensors, with what rebuilds it (registry configs) in its metadata.

The model library owns this format, so every reader (evaluation, warm starts, the MLflow model, benchmarks)
loads weights without importing the trainer; training only writes them (`trajtok.train.checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import safe_open
from torch import nn

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.rundir import atomic_path

WEIGHTS_FILE = "weights.safetensors"


def weights_file(location: str, setting: str) -> Path:
    """The weights `setting` (e.g. `eval.ckpt`) names: a .safetensors file, or a run directory holding one."""
    path = Path(location)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise ConfigError(
            f"{setting} '{location}': no weights there (a .safetensors file or a finished run directory "
            f"with {WEIGHTS_FILE})"
        )
    return weights


def save_weights(
    weights: dict[str, torch.Tensor],
    out: str | Path,
    model_cfg: ModelConfig,
    clip_cfg: ClipConfig,
    **metadata: str,
) -> Path:
    """Write `weights` reshaped to the registry model's shapes, with its configs (and `metadata`) inside,
    atomically: a reader never sees a half-written file."""
    from safetensors.torch import save_file

    from trajtok.models.registry import build_model

    with torch.device("meta"):  # shapes only: DeepSpeed stores 0-dim parameters as 1-element vectors
        shapes = {name: p.shape for name, p in build_model(model_cfg, clip_cfg).state_dict().items()}
    shaped = {name: tensor.reshape(shapes[name]) for name, tensor in weights.items()}
    described = {"model": json.dumps(asdict(model_cfg)), "clip": json.dumps(asdict(clip_cfg)), **metadata}
    with atomic_path(out) as tmp:
        save_file(shaped, str(tmp), metadata=described)
    return Path(out)


def load_weights(path: str | Path) -> tuple[nn.Module, dict[str, str]]:
    """The model of a weights file, built through the registry, and the file's metadata."""
    from safetensors.torch import load_file

    from trajtok.models.registry import build_model

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    model = build_model(
        config_from_metadata(ModelConfig, metadata, "model", path),
        config_from_metadata(ClipConfig, metadata, "clip", path),
    )
    if torch.empty(0).device.type != "meta":  # a shapes-only build (under torch.device("meta")) reads none
        model.load_state_dict(load_file(str(path)))
    return model, metadata


def config_from_metadata(schema: type, metadata: dict[str, str], key: str, path: str | Path):
    """A config group from the file's metadata, checked against this version's schema."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), json.loads(metadata[key]))
        return OmegaConf.to_object(merged)
    except (KeyError, ValueError, OmegaConfBaseException) as err:
        raise ConfigError(f"{path}: metadata '{key}' does not fit this version's config: {err}") from None
