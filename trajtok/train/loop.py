"""The training loop, top to bottom: `main(cfg)` is one rank of `trajtok train` / `trajtok submit train`.

Every rank runs this function; its place in the job comes from the environment the launcher set
(`trajtok.distributed`). One step = `train.grad_accum` micro-batches through the DeepSpeed engine; the
learning rate is a function of the step; logs, trajectory overlays and checkpoints happen every N steps.
A resumed job (`train.resume=auto`, what a requeue uses) continues from its newest checkpoint with the
same data order, the same RNG streams and the same MLflow run. A stop signal (SLURM's USR2 or TERM) ends
a job after the step it is in, with a checkpoint of that step (`trajtok.train.preemption`).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from trajtok.config import JobConfig, config_digest, save_config
from trajtok.data.colour import apply_colour
from trajtok.data.device_decode import frames_on_device, start_decoders
from trajtok.data.loader import ReadOrder, build_loader, expand_shards, open_batches, stable_seed
from trajtok.data.normalise import normalise_frames
from trajtok.distributed import init_process_group
from trajtok.errors import RunDirectoryInUse
from trajtok.losses import EarlyMatching, total_loss
from trajtok.models.registry import VLM_NAMES, build_model
from trajtok.models.segmenter import VideoSegmenter
from trajtok.models.text import build_tokenizer
from trajtok.models.weights import WEIGHTS_FILE
from trajtok.rundir import RUN_ID_FILE, writer_lock
from trajtok.schedule import lr_at
from trajtok.tracking import start_tracker
from trajtok.train.checkpoint import (
    TrainState,
    export_weights,
    load_checkpoint,
    make_universal,
    needs_universal,
    read_state,
    resolve_resume,
    save_checkpoint,
    set_aside_earlier_run,
)
from trajtok.train.checks import check_job
from trajtok.train.engine import build_engine, compute_dtype, set_lr
from trajtok.train.metrics import TrainMeter, format_line
from trajtok.train.preemption import StopRequest
from trajtok.train.validation import HeldOut
from trajtok.train.vlm_loop import train_vlm
from trajtok.train.warm_start import warm_start

log = logging.getLogger("trajtok.train")

LOG_FILE = "train.log"
LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def early_matching(model: torch.nn.Module) -> EarlyMatching | None:
    """Hungarian matching queued right after the model's segmenter (None when the model does not segment)."""
    video_segmenter = model if isinstance(model, VideoSegmenter) else None
    if video_segmenter is None:
        video_segmenter = getattr(getattr(model, "tokenizer", None), "segmenter", None)
    return EarlyMatching(video_segmenter.head) if video_segmenter is not None else None


def main(cfg: JobConfig) -> int:
    """Train `cfg.model` on `cfg.data.shards` as one rank of the job; returns 0 when training is done."""
    check_job(cfg)
    language = cfg.model.name in VLM_NAMES  # a VLM on questions and answers: trajtok.train.vlm_loop
    env = init_process_group()
    device = torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    with _logging(env.rank, Path(cfg.run_dir)) as log_file, _sole_writer(cfg.run_dir, env.rank):
        return (train_vlm if language else _train)(cfg, env.rank, env.world_size, device, log_file)


@contextlib.contextmanager
def _sole_writer(run_dir: str, rank: int) -> Iterator[None]:
    """Rank 0 holds the run directory's writer lock for the whole job; when another live job holds it,
    every rank stops with the same one-line error before touching checkpoints or the MLflow run."""
    with contextlib.ExitStack() as stack:
        refusal = [""]
        if rank == 0:
            try:
                taken_over = stack.enter_context(writer_lock(run_dir))
            except RunDirectoryInUse as err:
                refusal = [str(err)]
            else:
                if taken_over:
                    log.warning(taken_over)
        torch.distributed.broadcast_object_list(refusal, src=0)
        if refusal[0]:  # every rank is here: leave the group together (a rank exiting alone aborts gloo)
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            raise RunDirectoryInUse(refusal[0])
        yield


def _train(cfg: JobConfig, rank: int, world_size: int, device: torch.device, log_file: Path | None) -> int:
    if cfg.train.resume == "none" and rank == 0:  # a fresh start over another run's state says so
        moved = set_aside_earlier_run(cfg.run_dir, (RUN_ID_FILE,))
        if moved:
            log.warning(moved)
    torch.distributed.barrier()
    mode = "segmenter" if cfg.model.name == "segmenter" else "joint"

    # model and engine: the same seed on every rank, so the same initial weights and the same random draws
    # in the forward (tokens per trajectory), which keeps the ranks' work balanced
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.clip)
    if cfg.model.init:  # every rank reads the same file, so the ranks start equal; a resume overrides it
        started = warm_start(model, cfg.model.init)
        if rank == 0:
            log.info(started.describe())

    # resume: weights, optimizer, RNG and data position from the newest checkpoint (or the one named), on
    # these ranks or on another number of them (through DeepSpeed's universal form, same data order)
    state = TrainState(
        config_digest=config_digest(cfg), model_digest=config_digest(cfg.model), world_size=world_size
    )
    checkpoint = resolve_resume(cfg.train.resume, cfg.run_dir)
    saved = read_state(checkpoint, state.model_digest) if checkpoint is not None else None
    order = (
        ReadOrder(**saved.read_order) if saved and saved.read_order else ReadOrder.for_job(cfg, world_size)
    )
    order.check(world_size, cfg.train.batch_size)
    state.read_order = asdict(order)
    universal = saved is not None and needs_universal(saved, world_size, cfg.train.zero_stage)
    if universal:
        make_universal(checkpoint, rank)
    engine = build_engine(model, cfg.train, world_size, universal)
    dtype = compute_dtype(cfg.train)
    if saved is not None:
        load_checkpoint(engine, checkpoint, universal)
        state.step, state.batches, state.epoch = saved.step, saved.batches, saved.epoch
        elastic = f" (saved on {saved.world_size} ranks)" if saved.written_on_other_ranks(world_size) else ""
        log.info("resumed from %s at step %d%s", checkpoint, state.step, elastic)
        if saved.config_digest != state.config_digest:
            log.warning(
                "the config differs from the one %s was saved with (see its run's config.yaml)", checkpoint
            )
    tracker = start_tracker(cfg, rank)  # a requeued job finds its MLflow run id in the run directory
    state.mlflow_run_id = tracker.run_id or ""
    tracker.log_dataset(expand_shards(cfg.data.shards), "train-shards")

    stop = StopRequest()
    decoders = start_decoders(cfg.data.device_decode, device)  # checked here, one line for each missing
    loader, dataset = build_loader(
        cfg, rank, world_size, state.batches, order=order, device_formats=frozenset(decoders)
    )
    tokenizer = build_tokenizer(cfg.model.text_tokenizer) if mode == "joint" else None
    matching = early_matching(engine.module)
    held_out = HeldOut(cfg, device, dtype)
    meter = TrainMeter(world_size, device)
    engine.train()

    stopped_by = 0  # the stop signal the ranks agreed on, if one came
    with stop, open_batches(loader) as batches:
        while state.step < cfg.train.steps:
            lr = lr_at(state.step, cfg.train)
            set_lr(engine, lr)
            for micro in range(cfg.train.grad_accum):
                with meter.waiting_for_data():
                    batch = next(batches)
                state.batches += 1
                # the forward's draws (tokens per trajectory) follow the step, whatever the ranks
                torch.manual_seed(stable_seed(cfg.seed, state.step, micro))
                on_device = frames_on_device(batch, device, decoders)  # the batch's one copy (or its bytes)
                frames = normalise_frames(apply_colour(on_device, batch["colour"]), device, dtype)
                if tokenizer is not None:
                    ids, mask = tokenizer.encode_batch(batch["captions"], cfg.model.text_max_len)
                    output = engine(frames, ids.to(device), mask.to(device))
                else:
                    output = engine(frames)
                # the labels stay on the host: the matching reads them there, queued behind the forward
                targets = matching.targets(batch["labels"]) if matching is not None else None
                parts = total_loss(output, batch["labels"], cfg.train.loss, mode, seg_targets=targets)
                engine.backward(parts["loss"])
                engine.step()
                meter.add(parts, output, batch)
            state.step += 1
            state.epoch = state.batches // dataset.batches_per_epoch
            last = state.step == cfg.train.steps

            if state.step % cfg.train.log_every == 0 or last:
                metrics = meter.flush()
                metrics.update(lr=lr, epoch=state.epoch)
                if output.logit_scale is not None:
                    metrics["temperature"] = 1.0 / output.logit_scale.float().item()
                if rank == 0:
                    temperature = metrics.get("temperature")
                    log.info(format_line(state.step, cfg.train.steps, lr, temperature, metrics))
                tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step=state.step)
            every = cfg.train.overlay_every
            if matching is not None and (last or (every and state.step % every == 0)):  # the model segments
                held_out.fix_clips({"frames": on_device, "labels": batch["labels"]})
                picture = held_out.picture(engine.module)  # on every rank: a ZeRO-3 forward takes them all
                if rank == 0 and picture is not None:
                    tracker.log_image(picture, "train/trajectories", state.step)
            every = cfg.train.eval_every
            if every and (last or state.step % every == 0):
                metrics = held_out.validate(engine.module, state.step)
                if rank == 0:
                    log.info("step %d held-out: %s", state.step, _short(metrics))
                tracker.log_metrics(metrics, step=state.step)
            stop_signal = stop.agreed()
            if state.step % cfg.train.checkpoint_every == 0 or last or stop_signal:
                save_checkpoint(engine, cfg.run_dir, state, cfg.train.keep_checkpoints)
                if log_file is not None:  # a job killed later still leaves its log in the run
                    tracker.log_artifact(log_file)
            if stop_signal and not last:
                stopped_by = stop_signal
                break
    if stopped_by:
        name = signal.Signals(stopped_by).name
        log.warning("%s: stopped at step %d with its checkpoint", name, state.step)
        stop.hand_on(stopped_by)  # rank 0 under submitit requeues the job and exits here
        return 0

    if rank == 0:
        final = resolve_resume("auto", cfg.run_dir)
        weights = export_weights(final, Path(cfg.run_dir) / WEIGHTS_FILE, cfg.model, cfg.clip, state.step)
        tracker.log_model(weights, save_config(cfg, cfg.run_dir), state.step, cfg.tracking.register)
        logged = f", and as MLflow model runs:/{tracker.run_id}/model" if tracker.run_id else ""
        log.info("trained %d steps; weights in %s%s", state.step, weights, logged)
        if log_file is not None:
            tracker.log_artifact(log_file)
    tracker.close()
    torch.distributed.barrier()
    return 0


def _short(metrics: dict[str, float]) -> str:
    """`t2v_R1 12.5 | v2t_R1 9.4 ...` for a log line."""
    return " | ".join(f"{key.rsplit('/', 1)[-1]} {value:.1f}" for key, value in metrics.items())


@contextlib.contextmanager
def _logging(rank: int, run_dir: Path) -> Iterator[Path | None]:
    """Rank 0 prints the step lines, and appends everything trajtok logs to `<run_dir>/train.log` (kept as
    the MLflow run's artifact; a resumed job adds to it); the other ranks print only warnings. A logging
    set-up by the caller wins for the terminal."""
    if not logging.getLogger().handlers:
        level = logging.INFO if rank == 0 else logging.WARNING
        logging.basicConfig(format=LOG_FORMAT, level=level)
    if rank != 0:
        yield None
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOG_FILE
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    package = logging.getLogger("trajtok")
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        yield path
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()
