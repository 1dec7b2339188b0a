"""Checkpoints: DeepSpeed state + our training state, the last k kept, resume, and the final weights.

Layout under the run directory:
    checkpoints/step-00000050/   DeepSpeed files (model, ZeRO partitions), rng-rank<r>.pt per rank,
                                 and state.json, written last by rank 0: the checkpoint's completion marker
    weights.safetensors          consolidated fp32 weights of the final model (trajtok.models.weights)
A checkpoint without state.json (a job killed while saving) is never resumed from and is removed by the
next save. RNG states are per rank (DeepSpeed keeps client state only in rank 0's file), so a resumed run
draws the same random numbers as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import CheckpointWriteError, ConfigError
from trajtok.models.weights import WEIGHTS_FILE, save_weights
from trajtok.rundir import write_json

if TYPE_CHECKING:
    import deepspeed

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "state.json"
UNIVERSAL_DIR = "universal"  # inside a checkpoint: its DeepSpeed universal form, made for an elastic resume


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint, restored on resume."""

    step: int = 0  # optimizer steps done
    batches: int = 0  # batches this rank has taken from the loader: the data position
    epoch: int = 0  # virtual epoch of the next batch
    mlflow_run_id: str = ""
    config_digest: str = ""  # of the whole resolved config
    model_digest: str = ""  # of model + clip: a checkpoint loads only into the same model
    world_size: int = 0  # ranks that wrote it (0: written before elastic resume existed)
    read_order: dict = field(default_factory=dict)  # the run's trajtok.data.loader.ReadOrder

    def written_on_other_ranks(self, world_size: int) -> bool:
        """Whether a job of `world_size` ranks resumes this state elastically (0: unknown, taken as same)."""
        return self.world_size not in (0, world_size)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    return sorted(p.parent for p in root.glob(f"step-*/{STATE_FILE}"))


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """The checkpoint `train.resume` points at: `auto` (the run's newest, if any), `none`, or a path.

    A path may be one checkpoint or a run's `checkpoints/` directory (its newest is taken).
    """
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if (path / STATE_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.glob(f"step-*/{STATE_FILE}"))
    if not found:
        raise ConfigError(f"train.resume '{resume}': no complete checkpoint there (expected {STATE_FILE})")
    return found[-1]


def save_checkpoint(
    engine: deepspeed.DeepSpeedEngine, run_dir: str | Path, state: TrainState, keep: int
) -> Path:
    """Save on every rank (all must call), mark complete on rank 0, then drop all but the newest `keep`."""
    root = Path(run_dir) / CHECKPOINT_DIR
    name = checkpoint_name(state.step)
    target = root / name
    try:
        engine.save_checkpoint(
            str(root), tag=name, client_state={"train_state": asdict(state)}, save_latest=False
        )
        torch.save(_rng_state(), target / f"rng-rank{engine.global_rank}.pt")
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        raise _write_failed(target, err) from err
    torch.distributed.barrier()
    if engine.global_rank == 0:
        write_json(target / STATE_FILE, asdict(state))
        _retain(root, keep, target)
    torch.distributed.barrier()
    return target


def _write_failed(target: Path, err: Exception) -> CheckpointWriteError:
    """The one-line error for a checkpoint that could not be written, after removing what it left (its
    space is what the next attempt needs); the previous complete checkpoint is untouched."""
    shutil.rmtree(target, ignore_errors=True)
    kept = complete_checkpoints(target.parents[1])
    free = shutil.disk_usage(target.parent).free / 2**30
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror  # "No space left on device", "Disk quota exceeded"
    else:  # torch.save's writer says only where in the file it failed
        reason = "the write failed: " + (str(err).strip().splitlines() or [type(err).__name__])[0]
    resume = f"a rerun resumes from {kept[-1].name}" if kept else "no earlier checkpoint to resume from"
    return CheckpointWriteError(
        f"{target}: cannot write the checkpoint ({reason}; {free:.1f} GiB free there); {resume}"
    )


def set_aside_earlier_run(run_dir: str | Path, kept_files: tuple[str, ...]) -> str | None:
    """Move an earlier run's checkpoints and `kept_files` into `previous/<n>/` so a fresh start
    (`train.resume=none`) neither mixes its checkpoints with theirs nor logs into their MLflow run.
    Returns one line saying what was moved, or None when the directory held no earlier run."""
    root = Path(run_dir)
    found = [root / name for name in (CHECKPOINT_DIR, WEIGHTS_FILE, *kept_files) if (root / name).exists()]
    if not found:
        return None
    last = complete_checkpoints(root)
    previous = root / "previous"
    target = previous / str(sum(1 for _ in previous.glob("*")) if previous.is_dir() else 0)
    target.mkdir(parents=True)
    for path in found:
        path.rename(target / path.name)
    upto = f"checkpoints up to {last[-1].name}" if last else "no complete checkpoint"
    return f"train.resume=none: {root} held an earlier run ({upto}); moved to {target}, starting at step 0"


def _retain(root: Path, keep: int, newest: Path) -> None:
    """Remove complete checkpoints beyond the newest `keep`, and any incomplete one (a killed save)."""
    complete = complete_checkpoints(root.parent)
    doomed = set(complete[: max(len(complete) - keep, 0)])
    doomed |= {p for p in root.glob("step-*") if p.is_dir() and not (p / STATE_FILE).exists()}
    for path in sorted(doomed - {newest}):
        log.info("removing old checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path, model_digest: str) -> TrainState:
    """The training state a checkpoint was saved with; refuse a checkpoint of another model."""
    state = TrainState(**json.loads((path / STATE_FILE).read_text()))
    if state.model_digest and state.model_digest != model_digest:
        raise ConfigError(
            f"train.resume: {path} holds a different model or clip config than this job "
            f"(digest {state.model_digest} != {model_digest}); use train.resume=none to start afresh"
        )
    return state


def needs_universal(state: TrainState, world_size: int, zero_stage: int) -> bool:
    """Whether a checkpoint must go through DeepSpeed's universal form to load on `world_size` ranks:
    its optimizer state is partitioned (ZeRO >= 1) over another number of ranks."""
    return zero_stage > 0 and state.written_on_other_ranks(world_size)


def make_universal(path: Path, rank: int) -> None:
    """Rank 0 converts checkpoint `path` to DeepSpeed's universal form (fp32 weights and AdamW moments,
    whole per parameter), once, in `path/universal`; every rank waits. Its chatter goes to the debug log."""
    target = path / UNIVERSAL_DIR
    if rank == 0 and not (target / STATE_FILE).is_file():
        from deepspeed.checkpoint.ds_to_universal import main as to_universal

        shutil.rmtree(target, ignore_errors=True)  # an earlier conversion that was cut short
        args = argparse.Namespace(
            input_folder=str(path), output_folder=str(target), num_extract_workers=1, num_merge_workers=1,
            keep_temp_folder=False, strict=True, inject_missing_state=True,
        )  # fmt: skip
        chatter = io.StringIO()
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            to_universal(args)
        log.debug("universal form of %s: %s", path, chatter.getvalue())
        shutil.copy(path / STATE_FILE, target / STATE_FILE)  # its completion marker
        log.info("converted %s to DeepSpeed's universal form for %s", path.name, target)
    torch.distributed.barrier()


def load_checkpoint(engine: deepspeed.DeepSpeedEngine, path: Path, universal: bool = False) -> None:
    """Restore engine and optimizer from `path` (its universal form when `universal`), and this rank's RNG
    when the checkpoint has it (a resume on other ranks starts them from seeds of the step instead)."""
    tag = f"{path.name}/{UNIVERSAL_DIR}" if universal else path.name
    quiet = logging.getLogger("DeepSpeed")  # warns, on every load of a universal form, that it has no MPU
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        loaded, _ = engine.load_checkpoint(str(path.parent), tag=tag, load_lr_scheduler_states=False)
    finally:
        quiet.setLevel(level)
    if loaded is None:
        raise ConfigError(f"train.resume: DeepSpeed could not load {path}")
    rng_file = path / f"rng-rank{engine.global_rank}.pt"
    if rng_file.is_file() and not universal:
        _set_rng_state(torch.load(rng_file, weights_only=False))


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def consolidated_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """fp32 weights of a checkpoint, whatever its ZeRO stage or precision (run it on one process)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model_states = path / "mp_rank_00_model_states.pt"  # ZeRO-3 keeps partitioned ones instead
    module = (
        torch.load(model_states, map_location="cpu", weights_only=False)["module"]
        if model_states.is_file()
        else {}
    )
    if any(path.glob("*optim_states.pt")):
        chatter = io.StringIO()  # its progress bars and prints: for the debug log, not the terminal
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            state = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
        log.debug("consolidating %s: %s", path, chatter.getvalue())
        # frozen parameters (a VLM's vision tower) have no optimizer state; ZeRO-2 and 3 save them as
        # fragments the consolidation reads, ZeRO-1 does not: there the module holds them as used
        state = {**module, **state}
    else:  # ZeRO stage 0 in fp32: the module's weights are the master weights
        state = module
    return {name: tensor.float().contiguous().clone() for name, tensor in state.items()}


def export_weights(
    checkpoint: Path, out: str | Path, model_cfg: ModelConfig, clip_cfg: ClipConfig, step: int
) -> Path:
    """Write a checkpoint's consolidated weights as the model library's weights file, with its step and
    source checkpoint in the metadata."""
    weights = consolidated_state_dict(checkpoint)
    return save_weights(weights, out, model_cfg, clip_cfg, step=str(step), source=str(checkpoint))
