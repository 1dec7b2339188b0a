"""Warm start (`model.init`): an earlier run's weights into the parts of a new model that match.

The official release trains TrajViT-v2 in two stages: the segmenter first, on masks alone, then the
whole model under the contrastive and segmentation losses. Here any exported run (a run directory or its
weights.safetensors) starts any model, part by registry part name (`parts()`): a `segmenter` run gives a
`trajvit2` its `backbone` and `segmenter`; a `trajvit2` or `vit3d` run gives the same model everything.
A part found in both must match key for key and shape for shape; anything else is a `ConfigError`. One
exception, by design: a model with `model.shared_kv` builds its segmenter without a key/value projection
of its own (it reads the trajectory encoder's), so a source segmenter's projection is left out, and said.
Resuming (`train.resume`) is a different thing: it continues one run, optimizer and data position included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trajtok.errors import ConfigError
from trajtok.models.weights import load_weights, weights_file

SEGMENTER_PROJECTION = "perceiver.reader."  # the segmenter's own keys and values, absent with shared K/V


@dataclass(frozen=True)
class WarmStart:
    """What `warm_start` did, for the one line the loop prints."""

    source: str  # the weights file read
    source_model: str  # its registry name
    source_step: int
    loaded: tuple[str, ...]  # part names taken from the source
    kept: tuple[str, ...]  # part names left at their initialisation
    dropped: tuple[str, ...] = ()  # source weights this model does not build (model.shared_kv)

    def describe(self) -> str:
        kept = ", ".join(self.kept) or "nothing"
        line = (
            f"model.init {self.source} ({self.source_model}, step {self.source_step}): loaded "
            f"{', '.join(self.loaded)}; left at init: {kept}"
        )
        if self.dropped:
            part = self.dropped[0].split(".")[0]
            line += f"; not used (model.shared_kv): {len(self.dropped)} weights of {part}"
        return line


def warm_start(model: nn.Module, init: str) -> WarmStart:
    """Copy the weights of every part `model` shares (by name) with the run `init` names, in place."""
    weights = weights_file(init, "model.init")
    source, metadata = load_weights(weights)
    source_parts, target_parts = source.parts(), model.parts()
    shared = [name for name in target_parts if name in source_parts]
    if not shared:
        raise ConfigError(
            f"model.init '{init}': a {source.registry_name} run shares no part with {model.registry_name} "
            f"(it has {', '.join(source_parts)}; this model has {', '.join(target_parts)})"
        )
    dropped = []
    for name in shared:
        state = source_parts[name].state_dict()
        if name == "segmenter" and target_parts[name].perceiver.reader is None:
            own_projection = [key for key in state if key.startswith(SEGMENTER_PROJECTION)]
            dropped += [f"{name}.{key}" for key in own_projection]
            state = {key: value for key, value in state.items() if key not in own_projection}
        _copy_part(name, state, target_parts[name], init)
    return WarmStart(
        source=str(weights),
        source_model=source.registry_name,
        source_step=int(metadata.get("step", 0)),
        loaded=tuple(shared),
        kept=tuple(name for name in target_parts if name not in source_parts),
        dropped=tuple(dropped),
    )


def _copy_part(name: str, state: dict[str, torch.Tensor], part: nn.Module, init: str) -> None:
    own = part.state_dict()
    if own.keys() != state.keys():
        odd = sorted(own.keys() ^ state.keys())[0]
        raise ConfigError(
            f"model.init '{init}': part '{name}' is built differently ('{odd}' is in only one of them; "
            "choose the same model.size and options as that run)"
        )
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise ConfigError(
                f"model.init '{init}': part '{name}' weight '{key}' has shape {tuple(tensor.shape)}, this "
                f"model needs {tuple(own[key].shape)} (choose the same model.size as that run)"
            )
    part.load_state_dict(state)
