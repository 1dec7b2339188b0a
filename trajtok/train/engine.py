"""The DeepSpeed engine, built from `JobConfig.train`: ZeRO stage, precision, accumulation, clipping, AdamW.

The optimizer is plain `torch.optim.AdamW` built here and handed to DeepSpeed: it needs no JIT-compiled
C++ op (DeepSpeed's CPUAdam/FusedAdam take ~35 s each to build on first use), runs on CPU and GPU alike
(fused kernels on CUDA), and ZeRO partitions its state the same way. The learning rate is set by the loop
each step (`trajtok.schedule`), so DeepSpeed gets no scheduler.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from trajtok.config import TrainConfig
from trajtok.errors import ConfigError

if TYPE_CHECKING:  # DeepSpeed loads when an engine is built: the submit host's checks do without it
    import deepspeed

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_train_config(train: TrainConfig, on_gpu: bool) -> None:
    """Refuse settings DeepSpeed would reject later with a long traceback."""
    if train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage {train.zero_stage}: expected 0, 1, 2 or 3")
    if train.precision not in PRECISIONS:
        raise ConfigError(f"train.precision '{train.precision}': expected one of {', '.join(PRECISIONS)}")
    if train.precision == "fp16" and not on_gpu:
        raise ConfigError("train.precision fp16: not supported by DeepSpeed on CPU; use bf16 or fp32")
    if train.batch_size < 1 or train.grad_accum < 1 or train.steps < 1:
        raise ConfigError("train.batch_size, train.grad_accum and train.steps must be >= 1")


def bucket_elements(num_params: int) -> int:
    """Communication bucket size: a quarter of the model, at least 1M and at most DeepSpeed's 5e8 elements.

    DeepSpeed's defaults (5e8 elements) are sized for billion-parameter models; ZeRO-3 allocates a reduce
    bucket of that size up front, 2 GB in fp32, which for our models is many times the model itself
    (bench/bench_zero.py measured 248 bytes per parameter instead of 8 on an 8M-parameter model).
    """
    return int(min(max(num_params // 4, 2**20), 5e8))


def deepspeed_config(train: TrainConfig, world_size: int, num_params: int, universal: bool = False) -> dict:
    """The DeepSpeed JSON config for a run of `world_size` ranks on a model of `num_params` parameters;
    `universal`: it resumes from a checkpoint's universal form (`checkpoint.make_universal`)."""
    bucket = bucket_elements(num_params)
    return {
        "checkpoint": {"load_universal": universal},
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {
            "stage": train.zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
            "stage3_prefetch_bucket_size": bucket,
        },
        "zero_allow_untested_optimizer": True,  # our torch AdamW: ZeRO only partitions its state
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": train.precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 2**31 - 1,  # the loop logs; DeepSpeed's own step prints stay off
        "wall_clock_breakdown": False,
    }


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None
) -> list[dict]:
    """Decay matrices and convolutions; leave biases, norms, the temperature and other 1-d params alone.
    `lr_scales`: a learning-rate multiple per part of `model.parts()` (`lr_scale` in each group)."""
    parts = model.parts() if lr_scales else {"model": model}
    groups = []
    for name, part in parts.items():
        decay, no_decay = [], []
        for param in part.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        scale = (lr_scales or {}).get(name, 1.0)
        groups += [
            {"params": params, "weight_decay": wd, "lr_scale": scale}
            for params, wd in ((decay, weight_decay), (no_decay, 0.0))
            if params or not lr_scales
        ]
    return groups


def scalars_as_vectors(model: nn.Module) -> None:
    """Turn 0-dim parameters (the learned temperature, the segmenter's scale) into 1-element vectors.

    DeepSpeed 0.19.8 broadcasts and partitions parameters through byte views (`p.data.view(torch.uint8)`),
    which a 0-dim tensor cannot take. Every use of these parameters broadcasts, so the model computes the
    same; `checkpoint.export_weights` gives them back the registry's shapes.
    """
    for param in model.parameters():
        if param.ndim == 0:
            param.data = param.data.reshape(1)


def build_engine(
    model: nn.Module,
    train: TrainConfig,
    world_size: int,
    universal: bool = False,
    lr_scales: dict[str, float] | None = None,
) -> deepspeed.DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine with our AdamW (the process group must already exist); `universal`:
    it will load a checkpoint's universal form (a resume on another number of ranks); `lr_scales`: per-part
    learning-rate multiples (`param_groups`)."""
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # said, so that DeepSpeed does not warn that it had to guess
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    # DeepSpeed's ZeRO collectives call all_gather_into_tensor, which this torch marks deprecated: a warning
    # per rank and run that the user can do nothing about
    warnings.filterwarnings(
        "ignore", r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning
    )
    check_train_config(train, on_gpu)
    scalars_as_vectors(model)
    optimizer = torch.optim.AdamW(
        param_groups(model, train.weight_decay, lr_scales),
        lr=train.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=on_gpu,
    )
    config = deepspeed_config(train, world_size, sum(p.numel() for p in model.parameters()), universal)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def set_lr(engine: deepspeed.DeepSpeedEngine, lr: float) -> None:
    """Set the learning rate of every parameter group, times its `lr_scale` (through ZeRO's wrapper, which
    shares the groups)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def compute_dtype(train: TrainConfig) -> torch.dtype:
    """The dtype the engine keeps the module in, hence the dtype of its float inputs."""
    return PRECISIONS[train.precision]
