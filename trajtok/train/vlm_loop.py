"""Training TrajVLM / PatchVLM: `trajtok train` with `model.name=trajvlm|patchvlm`, one rank of the job.

The same DeepSpeed engine, checkpoints, resume, run directory and MLflow run as the video-text models
(`trajtok.train.loop` dispatches here); what differs is the data and the loss. Data: a QA manifest
(`data.manifest`: rows with `question` and `answer`, `trajtok.data.qa`), each row's video cut per `clip`
(frames, size), shuffled by a seeded sampler that the data position (`batches`) replays on resume. Loss:
the language model's cross-entropy on the answer tokens only. Stages as in the release: `model.vlm.stage`
connector (the language model and the vision side frozen) or all, with a learning rate per part
(`model.vlm.lr_connector`, `lr_vision`, `lr_language`, multiples of `train.lr`). A tiny language model
gets a byte-level BPE trained on the set's questions and answers, kept in the run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from trajtok.config import JobConfig, config_digest, save_config
from trajtok.data.normalise import normalise_frames
from trajtok.data.qa import QAItem, read_qa
from trajtok.errors import ConfigError
from trajtok.eval.evalset import QAClips
from trajtok.models.output import ModelOutput
from trajtok.models.registry import build_model
from trajtok.models.vlm import QATokenizer, tokenizer_location, train_qa_tokenizer
from trajtok.models.weights import WEIGHTS_FILE
from trajtok.rundir import RUN_ID_FILE
from trajtok.schedule import lr_at
from trajtok.tracking import start_tracker
from trajtok.train.checkpoint import (
    TrainState,
    export_weights,
    load_checkpoint,
    read_state,
    resolve_resume,
    save_checkpoint,
    set_aside_earlier_run,
)
from trajtok.train.engine import build_engine, compute_dtype, set_lr
from trajtok.train.metrics import TrainMeter, format_line
from trajtok.train.preemption import StopRequest
from trajtok.train.warm_start import warm_start

log = logging.getLogger("trajtok.train")

TOKENIZER_FILE = "tokenizer.json"


def train_vlm(cfg: JobConfig, rank: int, world_size: int, device: torch.device, log_file: Path | None) -> int:
    if cfg.train.resume == "none" and rank == 0:
        moved = set_aside_earlier_run(cfg.run_dir, (RUN_ID_FILE, TOKENIZER_FILE))
        if moved:
            log.warning(moved)
    items = read_qa(cfg.data.manifest)
    cfg = _with_tokenizer(cfg, items, rank)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.clip)
    if cfg.model.init:  # stage `all` from stage `connector`'s run, as the release does
        started = warm_start(model, cfg.model.init)
        if rank == 0:
            log.info(started.describe())
    _set_stage(model, cfg)
    state = TrainState(
        config_digest=config_digest(cfg), model_digest=config_digest(cfg.model), world_size=world_size
    )
    checkpoint = resolve_resume(cfg.train.resume, cfg.run_dir)
    saved = read_state(checkpoint, state.model_digest) if checkpoint is not None else None
    engine = build_engine(model, cfg.train, world_size, lr_scales=_lr_scales(cfg))
    dtype = compute_dtype(cfg.train)
    if saved is not None:
        load_checkpoint(engine, checkpoint)
        state.step, state.batches, state.epoch = saved.step, saved.batches, saved.epoch
        log.info("resumed from %s at step %d", checkpoint, state.step)
    tracker = start_tracker(cfg, rank)
    state.mlflow_run_id = tracker.run_id or ""
    tokenizer = QATokenizer(cfg.model.vlm.tokenizer)
    batches = _batches(cfg, items, rank, world_size, state.batches)
    step = partial(_step, cfg, engine, tokenizer, TrainMeter(world_size, device), tracker, rank, dtype)
    engine.train()
    stop = StopRequest()  # SLURM's USR2 / TERM: a checkpoint of the step they came in, then a requeue
    stopped_by = 0
    with stop:
        while state.step < cfg.train.steps and not stopped_by:
            step(state, batches)
            last = state.step == cfg.train.steps
            stop_signal = stop.agreed()
            if state.step % cfg.train.checkpoint_every == 0 or last or stop_signal:
                save_checkpoint(engine, cfg.run_dir, state, cfg.train.keep_checkpoints)
            stopped_by = 0 if last else stop_signal
    if stopped_by:
        log.warning("%s: stopped at step %d with its checkpoint", signal.Signals(stopped_by).name, state.step)
        stop.hand_on(stopped_by)  # rank 0 under submitit requeues the job and exits here
        return 0
    if rank == 0:
        final = resolve_resume("auto", cfg.run_dir)
        weights = export_weights(final, Path(cfg.run_dir) / WEIGHTS_FILE, cfg.model, cfg.clip, state.step)
        tracker.log_artifact(save_config(cfg, cfg.run_dir))
        tracker.log_artifact(weights)
        log.info("trained %d steps; weights in %s", state.step, weights)
        if log_file is not None:
            tracker.log_artifact(log_file)
    tracker.close()
    torch.distributed.barrier()
    return 0


def _step(
    cfg: JobConfig,
    engine,
    tokenizer: QATokenizer,
    meter: TrainMeter,
    tracker,
    rank: int,
    dtype: torch.dtype,
    state: TrainState,
    batches: Iterator[tuple[dict, int]],
) -> None:
    """One optimizer step (train.grad_accum micro-batches) and its log line."""
    lr = lr_at(state.step, cfg.train)
    set_lr(engine, lr)
    for _ in range(cfg.train.grad_accum):
        with meter.waiting_for_data():
            batch, state.epoch = next(batches)
        state.batches += 1
        frames = normalise_frames(batch["frames"].to(engine.device), engine.device, dtype)
        ids, mask, labels = tokenizer.training_batch(
            batch["question"], batch["answer"], cfg.model.vlm.max_text_tokens
        )
        output = engine(frames, ids.to(engine.device), mask.to(engine.device), labels.to(engine.device))
        engine.backward(output.loss)
        engine.step()
        meter.add({"loss": output.loss}, ModelOutput(num_tokens=output.video_tokens), batch)
    state.step += 1
    if state.step % cfg.train.log_every == 0 or state.step == cfg.train.steps:
        metrics = meter.flush()
        metrics.update(lr=lr, epoch=state.epoch)
        if rank == 0:
            log.info(format_line(state.step, cfg.train.steps, lr, None, metrics))
        tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=state.step)


def _with_tokenizer(cfg: JobConfig, items: list[QAItem], rank: int) -> JobConfig:
    """The config with the language model's tokenizer: a tiny model without one gets a BPE trained on the
    set's prompts and answers (rank 0 writes it into the run directory; a resume reuses it)."""
    vlm = cfg.model.vlm
    if vlm.tokenizer or vlm.language != "tiny":
        location = tokenizer_location(vlm.language, vlm.tokenizer)
    else:
        path = Path(cfg.run_dir) / TOKENIZER_FILE
        if rank == 0 and not path.is_file():
            prompts = [QATokenizer.prompt(item.question) for item in items]
            train_qa_tokenizer(prompts + [" " + item.answer for item in items], path)
        torch.distributed.barrier()
        location = str(path.resolve())
    model = dataclasses.replace(cfg.model, vlm=dataclasses.replace(vlm, tokenizer=location))
    return dataclasses.replace(cfg, model=model)


def _set_stage(model: torch.nn.Module, cfg: JobConfig) -> None:
    """Freeze what the stage keeps fixed: the vision side (and segmenter) unless stage all without
    freeze_vision; the language model in stage connector."""
    vlm = cfg.model.vlm
    parts = model.parts()
    for name, part in parts.items():
        learns = {
            "connector": True,
            "language": vlm.stage == "all",
            "vision": vlm.stage == "all" and not vlm.freeze_vision,
            "video_segmenter": vlm.stage == "all" and not vlm.freeze_vision,
        }[name]
        part.requires_grad_(learns)


def _lr_scales(cfg: JobConfig) -> dict[str, float]:
    vlm = cfg.model.vlm
    scales = {"connector": vlm.lr_connector, "vision": vlm.lr_vision, "language": vlm.lr_language}
    return {**scales, "video_segmenter": vlm.lr_vision}


def _batches(
    cfg: JobConfig, items: list[QAItem], rank: int, world_size: int, done: int
) -> Iterator[tuple[dict, int]]:
    """(batch, epoch) forever: each epoch a new seeded order, split over the ranks; the first `done`
    batches (a resumed job's) are skipped without decoding."""
    data = QAClips(items, cfg.clip)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    per_epoch = len(sampler) // cfg.train.batch_size
    if per_epoch < 1:
        raise ConfigError(
            f"data.manifest: {len(items)} questions give no batch of train.batch_size={cfg.train.batch_size} "
            f"on each of {world_size} ranks"
        )
    epoch, skip = divmod(done, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)[skip * cfg.train.batch_size :]
        loader = DataLoader(
            data,
            batch_size=cfg.train.batch_size,
            sampler=order,
            num_workers=cfg.data.num_workers,
            drop_last=True,
        )
        for batch in loader:
            yield batch, epoch
        epoch, skip = epoch + 1, 0
