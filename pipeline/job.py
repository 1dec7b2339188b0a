"""`trajtok shard`: a manifest of videos and captions -> labelled WebDataset shards, on Ray.

The driver reads and plans (cheap, no decoding), decides which shards are already done, starts the
workers, shows progress and writes `summary.json`. Reruns are safe: a shard whose stats exist and match
the settings is kept as it is; a shard written with other settings stops the job unless
`pipeline.overwrite=true`; anything else is (re)done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from tqdm import tqdm

from pipeline.accounting import FAILED, SKIPPED, RowOutcome, ShardStats, summarize
from pipeline.dispatch import run_shards
from pipeline.outputs import STATS_SUFFIX, SUMMARY_NAME, TAR_SUFFIX, OutputDir
from pipeline.plan import ShardPlan, plan_shards, rows_per_shard
from pipeline.shard_report import first_samples, picture
from pipeline.worker import ShardContext, start_worker
from pseudolabel.base import labeler_from_config
from trajtok.config import JobConfig, RayConfig, save_config, to_dict
from trajtok.data.manifest import Manifest, ManifestRow, read_manifest
from trajtok.data.sample import FRAME_FORMATS, SCHEMA_VERSION, frame_encoding
from trajtok.errors import ConfigError
from trajtok.rundir import write_text
from trajtok.tracking import NullTracker, start_tracker

OVERLAY_SAMPLES = 4  # samples in the trajectory picture logged with the run


@dataclass
class ResumeState:
    """Which planned shards are finished (their stats), which must be (re)done, and what is in the way."""

    done: list[ShardStats]
    todo: list[ShardPlan]
    conflicts: list[str]  # stats names written with other settings, another manifest, or outside the plan


def run_shard_job(cfg: JobConfig) -> dict[str, Any]:
    """Run (or resume) the job `cfg` describes; returns the summary also written to `OUT/summary.json`.

    The job is one MLflow run (unless `tracking.enabled=false`): the config as params, progress metrics
    per finished shard, and the summary and a picture of a few samples' trajectories as artifacts.
    """
    check_config(cfg)
    out = _output_dir(cfg.pipeline.out)
    manifest = read_manifest(cfg.data.manifest, strict=False)
    rows, rejected = _usable_rows(manifest)
    per_shard = rows_per_shard(cfg.pipeline.clips_per_shard, cfg.clip.clips_per_video)
    plans = plan_shards(rows, per_shard, row_fingerprint)
    settings = settings_digest(cfg)
    state = resume_state(out, plans, settings, cfg.pipeline.retry_failed)
    if state.conflicts:
        if not cfg.pipeline.overwrite:
            raise ConfigError(
                f"pipeline.out={out.url}: {len(state.conflicts)} finished shard(s) were written with other "
                f"clip/labeler settings or from another manifest (e.g. {state.conflicts[0]}); rerun with "
                "pipeline.overwrite=true to rewrite them, or choose another pipeline.out"
            )
        _remove_conflicts(out, state.conflicts)
    out.remove_leftovers()  # of a killed run; its workers died with its driver
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir)
    ctx = ShardContext(cfg, out, settings)
    with start_tracker(cfg, rank=0, run_dir=run_dir) as tracker:
        # the start of the lineage manifest -> shards (pipeline.out) -> training -> evaluation
        content = "".join(plan.digest for plan in plans)  # the plan's digests already identify the rows
        tracker.log_dataset([manifest.source], "manifest", context="labelling", content=content)
        with ray_session(cfg.ray), _Progress(state.todo, cfg.clip.clips_per_video, tracker) as progress:
            gpus = worker_gpus(cfg)
            result = run_shards(
                state.todo,
                lambda: start_worker(ctx, gpus),
                workers=cfg.pipeline.label_actors or cluster_workers(gpus),
                stall_timeout=cfg.pipeline.stall_timeout,
                max_attempts=cfg.pipeline.max_attempts,
                on_progress=progress.update,
            )
        stats, outcomes = state.done + result.stats, rejected + result.lost
        summary = summarize(stats, outcomes, manifest.source, manifest.total)
        summary["run"] = {
            "shards_planned": len(plans),
            "shards_already_done": len(state.done),
            "shards_written": len(result.stats),
            "shards_given_up": len(state.todo) - len(result.stats),
            "worker_restarts": result.worker_restarts,
            **progress.rates(),
        }
        out.write_json(SUMMARY_NAME, summary)
        _track_result(tracker, summary, out, run_dir)
    return summary


class _Progress:
    """The driver's progress bar (clips done of the estimated total, clips/s, ETA) and per-shard metrics."""

    def __init__(self, todo: list[ShardPlan], clips_per_video: int, tracker: NullTracker) -> None:
        self.estimate = {plan.name: len(plan.rows) * clips_per_video for plan in todo}
        self.tracker, self.shards, self.failures, self.bytes = tracker, 0, 0, 0
        self.started = time.monotonic()
        self.bar = tqdm(total=sum(self.estimate.values()), desc="shard", unit="clip", mininterval=1.0)

    def update(self, clips: int, finished: ShardStats | None) -> None:
        if finished is not None:
            self.bar.total += finished.clips - self.estimate[finished.shard]
            self.shards += 1
            self.failures += sum(row.status == FAILED for row in finished.rows)
            self.bytes += finished.bytes
            metrics = {"clips": clips, "failures": self.failures, "bytes": self.bytes, **self.rates(clips)}
            self.tracker.log_metrics({f"shard/{k}": v for k, v in metrics.items()}, step=self.shards)
        self.bar.update(clips - self.bar.n)

    def rates(self, clips: int | None = None) -> dict[str, float]:
        clips = self.bar.n if clips is None else clips
        seconds = time.monotonic() - self.started
        rate = clips / seconds if seconds > 0 else 0.0
        return {"clips_per_second": round(rate, 3), "seconds": round(seconds, 2)}

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()


def _track_result(tracker: NullTracker, summary: dict[str, Any], out: OutputDir, run_dir: Path) -> None:
    """Final counts as metrics; the summary (also kept in the run directory) and a picture as artifacts."""
    counts = {k: summary[k] for k in ("rows", "written", "skipped", "failed", "clips", "bytes", "shards")}
    tracker.log_metrics({f"summary/{k}": v for k, v in counts.items()}, step=0)
    local = write_text(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    tracker.log_artifact(local)
    samples = first_samples(out, OVERLAY_SAMPLES)
    if samples:
        tracker.log_image(picture(samples), "overlays.png")


def check_submission(cfg: JobConfig) -> None:
    """`submit shard` on the submit host: the settings and the manifest, read, before the queue wait."""
    check_config(cfg)
    read_manifest(cfg.data.manifest, strict=False)


def check_config(cfg: JobConfig) -> None:
    """Refuse, before any work, settings the job cannot run with; the message names the key."""
    p, c = cfg.pipeline, cfg.clip
    checks = {
        "data.manifest": (bool(cfg.data.manifest), "must name the manifest to shard (manifest=...)"),
        "pipeline.out": (bool(p.out), "must name the output folder (out=...)"),
        "pipeline.clips_per_shard": (p.clips_per_shard >= 1, "must be at least 1"),
        "pipeline.label_actors": (p.label_actors >= 0, "must not be negative (0 = one per CPU)"),
        "pipeline.label_gpus": (p.label_gpus >= 0, "must not be negative"),
        "pipeline.decode_timeout": (p.decode_timeout > 0, "must be positive"),
        "pipeline.stall_timeout": (p.stall_timeout > 0, "must be positive"),
        "pipeline.max_attempts": (p.max_attempts >= 1, "must be at least 1"),
        "pipeline.frame_format": (p.frame_format in FRAME_FORMATS, f"must be one of {FRAME_FORMATS}"),
        "clip.frames": (c.frames >= 1, "must be at least 1"),
        "clip.size": (c.size >= 2, "must be at least 2"),
        "clip.seconds": (c.seconds >= 0, "must not be negative"),
        "clip.clips_per_video": (c.clips_per_video >= 1, "must be at least 1"),
        "clip.sampling": (c.sampling in ("middle", "random"), "must be middle or random"),
    }
    for key, (ok, problem) in checks.items():
        if not ok:
            group, name = key.split(".")
            raise ConfigError(f"{key}={getattr(getattr(cfg, group), name)!r}: {problem}")


def settings_digest(cfg: JobConfig) -> str:
    """Digest of every setting that changes a shard's bytes: clip policy, labeler and version, format.

    Builds the labeler once in the driver, so an unknown name or bad parameters stop the job here.
    """
    labeler = labeler_from_config(cfg.pseudolabel).describe() if cfg.pipeline.label else None
    settings = {
        "clip": to_dict(cfg.clip),
        "labeler": labeler,
        "frame_format": frame_encoding(cfg.pipeline.frame_format),
        "schema_version": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resume_state(
    out: OutputDir, plans: list[ShardPlan], settings: str, retry_failed: bool = False
) -> ResumeState:
    """Split the plan into finished and pending shards by the stats found in `out`; with `retry_failed`,
    a finished shard that recorded failed rows counts as pending."""
    names = set(out.names())
    planned = {f"{plan.name}{STATS_SUFFIX}": plan for plan in plans}
    state = ResumeState([], [], [n for n in sorted(names) if n.endswith(STATS_SUFFIX) and n not in planned])
    for stats_name, plan in planned.items():
        if stats_name not in names:
            state.todo.append(plan)
            continue
        stats = _read_stats(out, stats_name)
        if stats is None:  # unreadable: as if absent
            state.todo.append(plan)
        elif stats.settings_digest == settings and stats.plan_digest == plan.digest:
            if retry_failed and any(row.status == FAILED for row in stats.rows):
                state.todo.append(plan)
            else:
                state.done.append(stats)
        else:
            state.conflicts.append(stats_name)
            state.todo.append(plan)
    return state


def _read_stats(out: OutputDir, name: str) -> ShardStats | None:
    try:
        return ShardStats.from_json(out.read_json(name))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_conflicts(out: OutputDir, stats_names: list[str]) -> None:
    """Stats first: from here on the shard counts as not done, whatever happens to its tar."""
    for stats_name in stats_names:
        out.remove(stats_name)
        out.remove(stats_name.removesuffix(STATS_SUFFIX) + TAR_SUFFIX)


def _output_dir(url: str) -> OutputDir:
    try:
        out = OutputDir(url)
        out.make()
    except (OSError, ValueError, ImportError) as err:
        raise ConfigError(f"pipeline.out={url}: cannot write there ({err})") from None
    return out


def _usable_rows(manifest: Manifest) -> tuple[list[ManifestRow], list[RowOutcome]]:
    """Good rows, and skipped outcomes for malformed rows and repeats of an earlier row's video and window."""
    rejected = [RowOutcome(p.line, "", SKIPPED, _problem_reason(p.reason)) for p in manifest.problems]
    rows, first_line = [], {}
    for row in manifest.rows:
        identity = (row.path, row.start or 0.0, row.end)
        if identity in first_line:
            reason = f"duplicate: same video and window as line {first_line[identity]}"
            rejected.append(RowOutcome(row.line, row.path, SKIPPED, reason))
            continue
        first_line[identity] = row.line
        rows.append(row)
    return rows, rejected


def _problem_reason(reason: str) -> str:
    kind = "bad caption" if "caption" in reason else "bad row"
    return f"{kind}: {reason}"


def row_fingerprint(row: ManifestRow) -> list[Any]:
    """What of a row decides its samples: the digest of a shard's plan is made of these."""
    return [row.line, row.path, row.captions, row.start, row.end, row.id, row.extra]


def worker_gpus(cfg: JobConfig) -> float:
    """GPUs per worker: `pipeline.label_gpus`, or, when that is 0, one if the labeler wants a GPU and the
    cluster has one (an actor without GPUs sees none: a GPU labeler would silently run on the CPU)."""
    if cfg.pipeline.label_gpus > 0 or not cfg.pipeline.label:
        return cfg.pipeline.label_gpus
    wants_gpu = labeler_from_config(cfg.pseudolabel).requirements.device == "gpu"
    return 1.0 if wants_gpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def cluster_workers(gpus_per_worker: float) -> int:
    """One worker per CPU of the cluster, or per `gpus_per_worker` share of its GPUs when labelling on GPU."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Join the cluster at `ray.address`, or start a local Ray; reuse a connection that already exists."""
    if ray.is_initialized():
        yield
        return
    if cfg.address:
        ray.init(address=cfg.address, logging_level=logging.WARNING)
    else:
        # "local": a new instance of our own, even where `ray start` left a cluster for ray.init() to find
        cpus = cfg.num_cpus or None
        ray.init("local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
