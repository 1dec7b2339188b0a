"""The labeler interface and the registry that builds labelers by name from the config.

A labeler turns one clip (frames and their timestamps) into a trajectory label map at the frames' size,
following the label contract (`trajtok.data.labels`). It declares its name, version and parameters, which
the pipeline records in every sample it labels, and what it needs to run (CPU or GPU, batch size, memory),
which the pipeline uses to size its workers. Labelers are imported only when asked for, so an optional
backend (sam2) costs nothing to those who do not use it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trajtok.config import PseudolabelConfig
from trajtok.data.labels import LABEL_DTYPE, TrajectoryStats, trajectory_stats, validate_labels
from trajtok.errors import ConfigError

DEFAULT_MAX_TRAJECTORIES = 128

# name -> "module:Class"; imported on first use
LABELERS: dict[str, str] = {
    "classical": "pseudolabel.classical:ClassicalLabeler",
    "sam2": "pseudolabel.sam2_labeler:Sam2Labeler",
    "import": "pseudolabel.imported:ImportLabeler",
    "trajtok": "pseudolabel.trajtok_labeler:TrajTokLabeler",
}


@dataclass(frozen=True)
class Requirements:
    """What a labeler needs from the worker that runs it."""

    device: str  # "cpu", or "gpu" for a labeler that wants one (it falls back to the CPU, slowly)
    batch_size: int  # clips per `label_batch` call that use the device well
    memory_gb: (
        float  # peak host memory of a worker (classical: measured, 16 frames at 224 px; sam2: estimated)
    )


@dataclass(frozen=True)
class LabelResult:
    """A label map and the facts about its trajectories (frames present, area)."""

    labels: np.ndarray  # (T, H, W) uint16, the frames' size
    trajectories: TrajectoryStats

    @property
    def num_trajectories(self) -> int:
        return len(self.trajectories)


class Labeler(ABC):
    """Base of every labeler: checks the input, the parameters and the output against the contract.

    Subclasses set `name`, `version` (bump it when the same input would give different labels),
    `Params` (a dataclass of knobs with defaults) and implement `_label`.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    Params: ClassVar[type]

    def __init__(
        self, params: dict[str, Any] | None = None, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES
    ):
        if max_trajectories < 1:
            raise ConfigError(f"pseudolabel.max_trajectories: must be at least 1, got {max_trajectories}")
        self.max_trajectories = max_trajectories
        self.params = _parse_params(self.name, self.Params, params or {})

    @property
    @abstractmethod
    def requirements(self) -> Requirements: ...

    def describe(self) -> dict[str, Any]:
        """Name, version and every parameter (defaults included): what a labelled sample records."""
        params = OmegaConf.to_container(OmegaConf.structured(self.params), resolve=True)
        return {
            "name": self.name,
            "version": self.version,
            "params": {**params, "max_trajectories": self.max_trajectories},
        }

    def label(
        self, frames: np.ndarray, timestamps: Sequence[float], source: str | None = None
    ) -> LabelResult:
        """Label one clip: frames (T, H, W, 3) uint8 RGB, timestamps (T,) seconds, and the video it came
        from (only labelers that read files beside the video use it)."""
        return self.label_batch([(frames, timestamps, source)])[0]

    def label_batch(
        self, clips: Sequence[tuple[np.ndarray, Sequence[float], str | None]]
    ) -> list[LabelResult]:
        """Label several clips, each checked against the contract (labelers that batch on a device
        override `_label_batch`)."""
        checked = [(frames, _check_clip(frames, times), source) for frames, times, source in clips]
        results = []
        for (frames, _, _), labels in zip(checked, self._label_batch(checked), strict=True):
            validate_labels(
                labels,
                f"{self.name} labels",
                num_frames=frames.shape[0],
                frame_size=frames.shape[1:3],
                max_trajectories=self.max_trajectories,
            )
            results.append(LabelResult(labels, trajectory_stats(labels)))
        return results

    def _label_batch(self, clips: list[tuple[np.ndarray, np.ndarray, str | None]]) -> list[np.ndarray]:
        return [self._label(frames, times, source) for frames, times, source in clips]

    @abstractmethod
    def _label(self, frames: np.ndarray, timestamps: np.ndarray, source: str | None) -> np.ndarray:
        """The label map (T, H, W) uint16 with at most `max_trajectories` ids."""


def _check_clip(frames: np.ndarray, timestamps: Sequence[float]) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {getattr(frames, 'shape', frames)}")
    if frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be a non-empty (T, H, W, 3) array, got {frames.shape}")
    times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if len(times) != frames.shape[0]:
        raise ValueError(f"{len(times)} timestamps for {frames.shape[0]} frames")
    return times


def _parse_params(name: str, schema: type, params: dict[str, Any]) -> Any:
    """Typed parameters from the config's `pseudolabel.params`; unknown keys and wrong types are errors."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), params)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        reason = str(err).splitlines()[0]
        where = f"pseudolabel.params.{key}" if key else "pseudolabel.params"
        raise ConfigError(f"{where}: {reason} (labeler '{name}')") from None


def available_labelers() -> list[str]:
    return sorted(LABELERS)


def labeler_class(name: str) -> type[Labeler]:
    """The class registered under `name`; a `ConfigError` lists the names that exist."""
    if name not in LABELERS:
        known = ", ".join(available_labelers())
        raise ConfigError(f"pseudolabel.name: unknown labeler '{name}' (choose from {known})")
    module, cls = LABELERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_labeler(
    name: str, params: dict[str, Any] | None = None, max_trajectories: int = DEFAULT_MAX_TRAJECTORIES
) -> Labeler:
    return labeler_class(name)(params, max_trajectories)


def labeler_from_config(cfg: PseudolabelConfig) -> Labeler:
    """The labeler the `pseudolabel` group of a job config asks for."""
    return build_labeler(cfg.name, dict(cfg.params), cfg.max_trajectories)


def keep_largest(labels: np.ndarray, max_trajectories: int) -> np.ndarray:
    """Unlabel all but the `max_trajectories` largest trajectories (for labelers that cannot merge)."""
    stats = trajectory_stats(labels)
    if len(stats) <= max_trajectories:
        return labels
    keep = stats.ids[np.argsort(-stats.area, kind="stable")[:max_trajectories]]
    lut = np.zeros(int(labels.max()) + 1, dtype=LABEL_DTYPE)
    lut[keep] = keep
    return lut[labels]
