"""What a training job will build, before it takes an allocation (`train.dry_run` / `launch.dry_run`).

The model is built on the meta device (no memory, no compute), so a paper-size plan costs seconds on a
login node. Memory per rank counts the model states only (weights, gradients, the fp32 master copy and
AdamW's two moments), with the accounting `bench/bench_zero.py` measured for DeepSpeed 0.19.8 (BENCHMARKS
"ZeRO memory per rank"): activations come on top and depend on the clips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trajtok.config import JobConfig
from trajtok.data.loader import ClipBatches, shard_sequence
from trajtok.models.info import model_summary
from trajtok.rundir import read_run_id
from trajtok.train.checkpoint import CHECKPOINT_DIR, resolve_resume

RANKS_SHOWN = 4  # ranks whose first shards are listed (the others draw the same way)


def bytes_per_parameter(zero_stage: int, precision: str, world_size: int) -> float:
    """Model-state bytes per parameter on one rank: what bench_zero measured at 2 ranks, divided out.

    Unsharded: weights (4 B fp32, 2 B half), gradients as the weights, AdamW's moments (8 B), and an fp32
    master copy (4 B) under half precision or any ZeRO stage. ZeRO-1/2 shard all but the weights (DeepSpeed
    already keeps gradients as partitions at stage 1); ZeRO-3 shards the weights too and adds its buckets
    (a quarter of the weights' bytes).
    """
    weights = 4 if precision == "fp32" else 2
    if zero_stage == 0:
        return 2 * weights + 8 + (4 if weights == 2 else 0)
    sharded = weights + 4 + 8
    if zero_stage in (1, 2):
        return weights + sharded / world_size
    return (weights + sharded) / world_size + weights / 4


def job_plan(cfg: JobConfig, world_size: int) -> dict[str, Any]:
    """Parameters, GFLOPs per clip, model-state memory per rank, steps per virtual epoch, each rank's first
    shards, and where checkpoints, weights and the MLflow run go."""
    summary = model_summary(cfg.model, cfg.clip)
    parameters = summary["parameters"]["total"]
    per_param = bytes_per_parameter(cfg.train.zero_stage, cfg.train.precision, world_size)
    first_rank = ClipBatches(cfg, 0, world_size)
    urls = first_rank.streams["video"].urls
    order = first_rank.order
    shards = {}  # rank -> the first shard each of its readers opens
    for rank in range(min(world_size, RANKS_SHOWN)):
        dataset = ClipBatches(cfg, rank, world_size)
        readers = [v for phase in range(order.phases) for v in dataset.readers_of(phase)]
        shards[f"rank {rank}"] = [next(shard_sequence(urls, cfg.seed, 0, v, order.readers)) for v in readers]
    run_dir = Path(cfg.run_dir)
    resume = resolve_resume(cfg.train.resume, run_dir)
    from trajtok.tracking import tracking_uri  # MLflow: only once the rest of the plan stands

    return {
        "model": f"{cfg.model.name} (size {cfg.model.size}), {summary['input']}",
        "parameters": parameters,
        "gflops_per_clip": summary["gflops"],
        "tokens_per_clip": summary["tokens_per_clip"],
        "world_size": world_size,
        "global_batch": world_size * cfg.train.batch_size * cfg.train.grad_accum,
        "zero": f"stage {cfg.train.zero_stage}, {cfg.train.precision}",
        "model_state_gib_per_rank": parameters * per_param / 2**30,
        "bytes_per_parameter": per_param,
        "steps": cfg.train.steps,
        "steps_per_epoch": max(first_rank.batches_per_epoch // cfg.train.grad_accum, 1),
        "shards": len(urls),
        "read_order": f"{order.readers_per_step} readers per step in {order.phases} group(s), "
        f"{first_rank.num_workers or 'no'} loader worker(s) per rank",
        "first_shards": shards,
        "checkpoints": f"{run_dir / CHECKPOINT_DIR} every {cfg.train.checkpoint_every} steps, "
        f"the last {cfg.train.keep_checkpoints} kept",
        "resumes_from": str(resume) if resume else "nothing (starts at step 0)",
        "weights": str(run_dir / "weights.safetensors"),
        "mlflow": "off"
        if not cfg.tracking.enabled
        else (
            f"{tracking_uri(cfg.tracking)}, experiment '{cfg.tracking.experiment}', "
            + (f"run {read_run_id(run_dir)} (resumed)" if read_run_id(run_dir) else "a new run")
        ),
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as aligned plain text."""
    gflops = ", ".join(f"{k} {v:,.1f}" for k, v in plan["gflops_per_clip"].items() if v is not None)
    rows = [
        ("model", plan["model"]),
        ("parameters", f"{plan['parameters'] / 1e6:,.2f} M"),
        ("forward GFLOPs per clip", gflops or "n/a"),
        ("video tokens per clip", str(plan["tokens_per_clip"])),
        ("ranks", f"{plan['world_size']} (global batch {plan['global_batch']})"),
        ("ZeRO", plan["zero"]),
        (
            "model states per rank",
            f"{plan['model_state_gib_per_rank']:.2f} GiB "
            f"({plan['bytes_per_parameter']:.1f} B/parameter; activations extra)",
        ),
        ("steps", f"{plan['steps']} ({plan['steps_per_epoch']} per virtual epoch)"),
        ("shards", f"{plan['shards']}; {plan['read_order']}; each reader opens first:"),
        *(
            (f"  {reader}", ", ".join(Path(u).name for u in urls))
            for reader, urls in plan["first_shards"].items()
        ),
        ("checkpoints", plan["checkpoints"]),
        ("resumes from", plan["resumes_from"]),
        ("weights", plan["weights"]),
        ("MLflow", plan["mlflow"]),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
