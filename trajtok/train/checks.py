"""What a training job refuses before it starts: on the launching host (`trajtok train`) and on the submit
host before sbatch (`trajtok submit train`), where a refusal saves a queue wait.

Kept light on purpose: torch and the model registry, but no DeepSpeed, MLflow or data stack, so that
`submit` answers in seconds.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import torch

from trajtok.config import DEVICE_DECODE_FORMATS, JobConfig
from trajtok.data.qa import read_qa
from trajtok.data.shard_urls import expand_shards
from trajtok.errors import ConfigError
from trajtok.models.hf_features import PREFIX as HF_PREFIX
from trajtok.models.registry import VLM_NAMES, build_model
from trajtok.models.weights import weights_file
from trajtok.train.engine import check_train_config

# trajadapter probes frozen features: evaluation's job
TRAINABLE = ("trajvit2", "vit3d", "segmenter", *VLM_NAMES)
VLM_STAGES = ("connector", "all")


def check_job(cfg: JobConfig, on_gpu: bool | None = None) -> None:
    """Refuse a config the training loop cannot run (`on_gpu`: default, this host's)."""
    if cfg.model.name not in TRAINABLE:
        raise ConfigError(f"model.name '{cfg.model.name}': train takes one of {', '.join(TRAINABLE)}")
    if cfg.model.name in VLM_NAMES:
        check_vlm_job(cfg, on_gpu)
        return
    if not expand_shards(cfg.data.shards):
        raise ConfigError(f"data.shards '{cfg.data.shards}': names no shard")
    unknown = sorted(set(cfg.data.device_decode) - set(DEVICE_DECODE_FORMATS))
    if unknown:
        raise ConfigError(
            f"data.device_decode: {unknown[0]!r} cannot be decoded on a device; choose from "
            f"{', '.join(DEVICE_DECODE_FORMATS)}"
        )
    if cfg.model.init:
        weights_file(cfg.model.init, "model.init")
    check_train_config(cfg.train, on_gpu=torch.cuda.is_available() if on_gpu is None else on_gpu)
    check_validation(cfg)


def check_vlm_job(cfg: JobConfig, on_gpu: bool | None = None) -> None:
    """Refuse a VLM training config that cannot run, before any process starts."""
    vlm = cfg.model.vlm
    if vlm.stage not in VLM_STAGES:
        raise ConfigError(f"model.vlm.stage '{vlm.stage}': choose one of {', '.join(VLM_STAGES)}")
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: a VLM trains on a QA manifest (rows with question and answer)")
    read_qa(cfg.data.manifest)
    if not vlm.vision.startswith(HF_PREFIX):  # a Hugging Face directory is checked when it loads
        weights_file(vlm.vision, "model.vlm.vision")
    if vlm.segmenter:
        weights_file(vlm.segmenter, "model.vlm.segmenter")
    if cfg.train.dry_run:
        raise ConfigError(f"train.dry_run: not available for {cfg.model.name} yet (the plan reads shards)")
    check_train_config(cfg.train, on_gpu=torch.cuda.is_available() if on_gpu is None else on_gpu)


def check_validation(cfg: JobConfig) -> None:
    """Refuse validation settings (`train.eval_set`, `train.eval_every`) that cannot run."""
    train = cfg.train
    if train.eval_every < 0 or train.picture_clips < 1:
        raise ConfigError("train.eval_every must be >= 0 and train.picture_clips >= 1")
    if train.eval_every and not train.eval_set:
        raise ConfigError("train.eval_every: name the held-out clips in train.eval_set")
    if train.eval_every and cfg.model.name == "segmenter":
        raise ConfigError("train.eval_every: retrieval needs a video-text model; the segmenter has pictures")
    if train.eval_set:
        from trajtok.eval.evalset import read_items  # the decoding stack: only when there is a set to read

        read_items(train.eval_set)


def check_submission(cfg: JobConfig) -> None:
    """`submit train` on the submit host: the job's own checks for the GPUs it asks for, every shard
    reachable, and the model built on the meta device (no memory, no time), so a bad size or part fails
    before the queue wait."""
    check_job(cfg, on_gpu=cfg.launch.gpus_per_node > 0)
    if cfg.model.name in VLM_NAMES:  # a QA manifest, the vision and segmenter runs: checked by check_job
        return
    urls = expand_shards(cfg.data.shards)
    local = [url for url in urls if "://" not in url]
    remote = [url for url in urls if "://" in url]
    remote = remote[:: max(len(remote) - 1, 1)]  # the first and the last: one request each
    missing = [url for url in local if not Path(url).is_file()]
    missing += [url for url in remote if not fsspec.core.url_to_fs(url)[0].exists(url)]
    if missing:
        raise ConfigError(
            f"data.shards '{cfg.data.shards}': {len(missing)} of {len(urls)} shard(s) not found from this "
            f"host (e.g. {missing[0]})"
        )
    with torch.device("meta"):
        build_model(cfg.model, cfg.clip)
