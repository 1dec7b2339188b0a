"""A Hugging Face vision model saved in a local directory, as a frozen feature map (`hf:<dir>`).

Video models (VideoMAE, V-JEPA 2: `tubelet_size` in their config) read the clip whole; image models (SigLIP,
CLIP, DINOv2 vision towers) read each frame. Either way the last hidden states become (B, T', h, w, C) with
T' = T / tubelet, h, w = H, W / patch (a class token, when there is one, dropped), which is what TrajAdapter
and the VLMs' connectors read. Frames come ImageNet-normalised, as everywhere here; they are brought to the
model's own normalisation (its preprocessor_config.json `image_mean`/`image_std`). Loaded with
`local_files_only`: never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from trajtok.data.normalise import IMAGENET_MEAN, IMAGENET_STD
from trajtok.errors import ConfigError

PREFIX = "hf:"
PREPROCESSOR_FILE = "preprocessor_config.json"


class HFFeatureMap(nn.Module):
    """Normalised frames (B, T, 3, H, W) -> the model's last hidden states as (B, T', h, w, C)."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        config = model.config
        self.patch = int(getattr(config, "patch_size", 16))
        self.tubelet = int(getattr(config, "tubelet_size", 0))  # 0: an image model, frame by frame
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", (torch.tensor(IMAGENET_STD) / torch.tensor(std)).view(1, 1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 1, 3, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, time, _, height, width = frames.shape
        frames = frames * self.scale + self.shift
        h, w = height // self.patch, width // self.patch
        if self.tubelet:
            states = self.model(pixel_values=frames).last_hidden_state
            grid = (time // self.tubelet, h, w)
        else:
            states = self.model(pixel_values=frames.flatten(0, 1)).last_hidden_state
            grid = (time, h, w)
        cells = grid[0] * h * w
        states = states.reshape(batch, -1, states.shape[-1])
        if states.shape[1] == cells + grid[0] and not self.tubelet:  # one class token per frame
            states = states.view(batch, time, h * w + 1, -1)[:, :, 1:].reshape(batch, cells, -1)
        if states.shape[1] != cells:
            raise ConfigError(
                f"{type(self.model).__name__}: {states.shape[1]} hidden states for a {grid} grid of "
                f"{self.patch} px patches (frames {time} x {height} x {width})"
            )
        return states.view(batch, *grid, -1)


def load_hf_feature_map(spec: str, setting: str) -> HFFeatureMap:
    """`hf:<dir>` -> the directory's model (AutoModel, or its vision tower) as a feature map."""
    from transformers import AutoModel

    directory = Path(spec.removeprefix(PREFIX))
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{setting} '{spec}': no Hugging Face model there (config.json)")
    try:
        model = AutoModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{setting} '{spec}': {str(err).splitlines()[0]}") from None
    model = getattr(model, "vision_model", model)  # a CLIP/SigLIP pair: its image tower
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    preprocessor = directory / PREPROCESSOR_FILE
    if preprocessor.is_file():
        settings = json.loads(preprocessor.read_text())
        mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
    return HFFeatureMap(model.eval(), list(mean), list(std))
