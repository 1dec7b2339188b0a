"""What training shows, while it runs, about clips it does not learn from; logged into the training run.

- Pictures: at every overlay step the same fixed clips (the first `train.picture_clips` of `train.eval_set`,
  else of the first batch drawn) as rows of frames | pseudo-label | prediction, upscaled, lightly tinted,
  with outlines: whether the segmenter learns is then a look at successive steps of one picture.
- Validation: retrieval on `train.eval_set` every `train.eval_every` steps (`val/retrieval/*`), through the
  code `trajtok eval` runs, on the engine's own weights in its own precision.

Every rank calls both, with the same clips: under ZeRO-3 the forward gathers parameters, which takes all
ranks. Rank 0 logs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import torch
from torch import nn

from trajtok.config import JobConfig
from trajtok.errors import ConfigError
from trajtok.eval.evalset import EvalClips, EvalItem, is_shard_spec, read_items
from trajtok.eval.pictures import prediction_picture
from trajtok.eval.run import Evaluation, mlflow_metrics, run_retrieval


class HeldOut:
    """The fixed picture clips and the validation set of one training job."""

    def __init__(self, cfg: JobConfig, device: torch.device, dtype: torch.dtype) -> None:
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.eval_cfg = _evaluation_config(cfg)
        self.items: list[EvalItem] = read_items(cfg.train.eval_set) if cfg.train.eval_set else []
        self.clips: dict[str, torch.Tensor | None] | None = None

    def fix_clips(self, batch: dict[str, torch.Tensor]) -> None:
        """Choose the picture clips once: the eval set's first (with their labels when it has them), else
        `batch`'s first."""
        if self.clips is not None:
            return
        count = self.cfg.train.picture_clips
        if not self.items:
            self.clips = {"frames": batch["frames"][:count].cpu(), "labels": batch["labels"][:count]}
            return
        items = self.items[:count]
        try:
            clips = EvalClips(items, self.eval_cfg.clip, with_labels=True)
            samples = [clips[i] for i in range(len(items))]
        except ConfigError:  # an unlabelled eval set: frames and predictions only
            clips = EvalClips(items, self.eval_cfg.clip)
            samples = [clips[i] for i in range(len(items))]
        labels = [s.get("labels") for s in samples]
        self.clips = {
            "frames": torch.stack([s["frames"] for s in samples]),
            "labels": torch.stack(labels) if labels[0] is not None else None,
        }

    def picture(self, module: nn.Module) -> np.ndarray | None:
        """The clips drawn with the model's hard trajectories now (None if the model makes none)."""
        with self._own_random_numbers():
            return prediction_picture(
                module, self.clips["frames"], self.clips["labels"], self.device, self.dtype
            )

    def validate(self, module: nn.Module, step: int) -> dict[str, float]:
        """Retrieval on the eval set with the weights as they are: `val/retrieval/*` metrics."""
        metadata = {"model": json.dumps(dataclasses.asdict(self.cfg.model)), "step": str(step)}
        job = Evaluation(self.eval_cfg, self.device, loaded=(module, metadata), dtype=self.dtype)
        was_training = module.training
        module.eval()
        try:
            with self._own_random_numbers():  # its DataLoaders draw seeds: training's stream stays as it was
                record = {"task": "retrieval", **run_retrieval(job, self.items)}
        finally:
            module.train(was_training)
        return mlflow_metrics(record, prefix="val")

    def _own_random_numbers(self) -> contextlib.AbstractContextManager:
        """Torch's RNG saved and restored around a block, so validating does not change what training
        draws next (a run with validation trains exactly as one without)."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])


def _evaluation_config(cfg: JobConfig) -> JobConfig:
    """The job's config as an evaluation of `train.eval_set` sees it: deterministic frames, no workers."""
    location = cfg.train.eval_set
    data = dataclasses.replace(
        cfg.data,
        manifest="" if is_shard_spec(location) else location,
        eval_shards=location if is_shard_spec(location) else "",
        num_workers=0,
    )
    clip = dataclasses.replace(cfg.clip, sampling="middle")
    return dataclasses.replace(cfg, data=data, clip=clip)
