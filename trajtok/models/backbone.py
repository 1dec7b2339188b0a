"""Per-frame ConvNeXt backbone that gives the dense features F every trajectory model works on.

Each of the 4 stages (strides 4, 8, 16, 32) is projected to width D, layer-normed, resized to 1/4 of the
input and summed, so F mixes fine edges with coarse semantics at one resolution: (B, T*h*w, D).
Module names follow timm's ConvNeXt, so a timm weights file loads as it is; torchvision's is renamed.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.errors import ConfigError
from trajtok.models.attention import Mlp
from trajtok.models.positions import Grid


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x MLP, layer scale, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, downsample: bool):
        super().__init__()
        self.downsample = (
            nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, kernel_size=2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNeXtBackbone(nn.Module):
    """Frames (B, T, 3, H, W) -> dense features (B, T*h*w, D) with h, w = H//4, W//4, and the grid."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...], feature_dim: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], kernel_size=4, stride=4), LayerNorm2d(widths[0]))
        self.stages = nn.ModuleList(
            ConvNeXtStage(widths[max(i - 1, 0)], widths[i], depths[i], downsample=i > 0)
            for i in range(len(widths))
        )
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, feature_dim, kernel_size=1), LayerNorm2d(feature_dim))
            for width in widths
        )
        self.feature_dim = feature_dim
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> None:
        """Run the convolutions in NHWC: the layout tensor-core kernels want, and the one the blocks'
        LayerNorms and MLPs already work in, so their permutes stop copying."""
        self.memory_format = torch.channels_last
        self.to(memory_format=torch.channels_last)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        batch, time, _, height, width = frames.shape
        size = (height // 4, width // 4)
        x = self.stem(frames.flatten(0, 1).contiguous(memory_format=self.memory_format))
        dense = 0
        for stage, projection in zip(self.stages, self.projections):
            x = stage(x)
            y = projection(x)
            dense = dense + (y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear"))
        features = dense.view(batch, time, self.feature_dim, *size).permute(0, 1, 3, 4, 2)
        return features.reshape(batch, -1, self.feature_dim), (time, *size)

    def load_convnext_weights(self, path: str | Path) -> None:
        """Load a local timm or torchvision ConvNeXt checkpoint (.pth/.pt/.bin/.safetensors) into the trunk.

        The stage widths and depths must match the file (size `paper` matches ConvNeXt-T). The classifier
        head is ignored; the stage projections stay randomly initialised, as they are not part of ConvNeXt.
        """
        state = _read_state_dict(Path(path))
        if any(key.startswith("features.") for key in state):
            state = _from_torchvision(state)
        trunk = {k: v for k, v in self.state_dict().items() if not k.startswith("projections.")}
        missing = [k for k in trunk if k not in state]
        if missing:
            raise ConfigError(
                f"model.backbone_weights '{path}': not a ConvNeXt of this size; "
                f"{len(missing)} weights missing, first '{missing[0]}'"
            )
        wrong = [k for k in trunk if state[k].shape != trunk[k].shape]
        if wrong:
            raise ConfigError(
                f"model.backbone_weights '{path}': '{wrong[0]}' has shape {tuple(state[wrong[0]].shape)}, "
                f"this backbone needs {tuple(trunk[wrong[0]].shape)} (choose the matching model.size)"
            )
        self.load_state_dict({k: state[k] for k in trunk}, strict=False)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f"model.backbone_weights '{path}': file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's input problem, in one line
        raise ConfigError(
            f"model.backbone_weights '{path}': cannot read: {str(err).splitlines()[0]}"
        ) from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"model.backbone_weights '{path}': holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


_TORCHVISION_BLOCK_PARTS = {
    "block.0": "conv_dw",
    "block.2": "norm",
    "block.3": "mlp.fc1",
    "block.5": "mlp.fc2",
}


def _from_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision `convnext_*` names -> timm names (features.0 = stem, odd = stages, even = downsamples)."""
    renamed = {}
    for key, value in state.items():
        if match := re.fullmatch(r"features\.0\.(\d)\.(\w+)", key):
            renamed[f"stem.{match[1]}.{match[2]}"] = value
        elif match := re.fullmatch(r"features\.(\d)\.(\d+)\.(block\.\d|layer_scale)\.?(\w*)", key):
            index, block, part, leaf = int(match[1]), match[2], match[3], match[4]
            if part == "layer_scale":
                renamed[f"stages.{index // 2}.blocks.{block}.gamma"] = value.flatten()
            else:
                renamed[f"stages.{index // 2}.blocks.{block}.{_TORCHVISION_BLOCK_PARTS[part]}.{leaf}"] = value
        elif match := re.fullmatch(r"features\.(\d)\.([01])\.(weight|bias)", key):  # downsample: norm, conv
            renamed[f"stages.{int(match[1]) // 2}.downsample.{match[2]}.{match[3]}"] = value
    return renamed
