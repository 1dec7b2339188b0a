"""The shard worker: a Ray actor that turns whole shards of manifest rows into WebDataset tars.

One actor per worker slot holds the labeler (loaded once, on the GPU when it asks for one) and does all
of a shard inside itself: decode, sample, label, encode, write. Frames never leave it; it returns only
the shard's stats. A row is all or nothing: its clips are written after every one of them is ready, so
a row is either written (with its sample keys), skipped (bad input, with the reason) or failed (an
unexpected error, with the message).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import cv2
import numpy as np
import ray
import torch
from webdataset import TarWriter

from pipeline.accounting import FAILED, SKIPPED, WRITTEN, RowOutcome, ShardStats
from pipeline.dispatch import WorkerStatus
from pipeline.outputs import STATS_SUFFIX, TAR_SUFFIX, OutputDir
from pipeline.plan import ShardPlan
from pseudolabel.base import Labeler, labeler_from_config
from trajtok.config import JobConfig
from trajtok.data.clips import Clip, read_clips
from trajtok.data.manifest import ManifestRow
from trajtok.data.sample import build_sample
from trajtok.errors import TrajTokError, VideoDecodeError

TAR_MTIME = 0  # fixed member times: a shard's bytes depend on its samples only; an int, as a float
# (0.0) makes tarfile add a PAX header to every member, which doubles the headers a loader parses
_WORKER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ShardContext:
    """What every worker of a job shares: the config, where to write, and the digest of the settings."""

    cfg: JobConfig
    out: OutputDir
    settings_digest: str


class ShardWorker:
    """Processes one shard at a time (`process`) and answers `status` while it does."""

    def __init__(self, ctx: ShardContext, threads: int = 1) -> None:
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        self.ctx = ctx
        self.labeler: Labeler | None = None
        self.labeler_info: dict[str, Any] | None = None
        self.batch_size = 1
        if ctx.cfg.pipeline.label:
            self.labeler = labeler_from_config(ctx.cfg.pseudolabel)
            self.labeler_info = self.labeler.describe()
            self.batch_size = max(1, self.labeler.requirements.batch_size)
        self._status = WorkerStatus()

    @ray.method(concurrency_group="status")
    def status(self) -> WorkerStatus:
        return self._status

    def process(self, plan: ShardPlan[ManifestRow], abandoned: dict[int, str]) -> ShardStats:
        """Write the shard's tar, then its stats (the completion marker); `abandoned` rows fail as given."""
        started, cpu_started = time.monotonic(), time.process_time()
        out, name = self.ctx.out, plan.name
        out.remove_leftovers(name)
        stats = ShardStats(name, self.ctx.settings_digest, plan.digest, rows=[], worker=_WORKER)
        self._status = WorkerStatus(name)
        with out.atomic_writer(name + TAR_SUFFIX) as f:
            writer = TarWriter(f, encoder=False, mtime=TAR_MTIME)
            for row in plan.rows:
                self._status = WorkerStatus(name, row.line, stats.clips, len(stats.rows))
                if row.line in abandoned:
                    stats.rows.append(RowOutcome(row.line, row.path, FAILED, abandoned[row.line]))
                    continue
                outcome, samples = self._row(row)
                for sample, clip, trajectories in samples:
                    stats.bytes += writer.write(sample)
                    stats.clips += 1
                    stats.frames += len(clip.frames)
                    stats.trajectories += trajectories
                stats.rows.append(outcome)
            writer.close()
        stats.seconds = round(time.monotonic() - started, 3)
        stats.cpu_seconds = round(time.process_time() - cpu_started, 3)
        out.write_json(name + STATS_SUFFIX, stats.to_json())
        self._status = WorkerStatus(name, -1, stats.clips, len(stats.rows))
        return stats

    def _row(self, row: ManifestRow) -> tuple[RowOutcome, list[tuple[dict[str, Any], Clip, int]]]:
        """All samples of one row, or none and the reason."""
        try:
            samples = list(self._samples(row))
        except TrajTokError as err:
            return RowOutcome(row.line, row.path, SKIPPED, skip_reason(err)), []
        except Exception as err:  # a bug or a labeler crash: recorded against the row, the shard goes on
            return RowOutcome(row.line, row.path, FAILED, f"{type(err).__name__}: {err}"), []
        keys = [s["__key__"] for s, _, _ in samples]
        sequential = any(clip.info.timestamps == "derived" for _, clip, _ in samples)
        return RowOutcome(row.line, row.path, WRITTEN, keys=keys, sequential_decode=sequential), samples

    def _samples(self, row: ManifestRow) -> Iterator[tuple[dict[str, Any], Clip, int]]:
        """The row's clips, labelled `batch_size` at a time (what a GPU labeler wants), as samples."""
        cfg = self.ctx.cfg
        clips = read_clips(row.path, row.start, row.end, cfg.clip, cfg.pipeline.decode_timeout)
        for batch in _batches(clips, self.batch_size):
            results = [None] * len(batch)
            if self.labeler is not None:
                results = self.labeler.label_batch([(c.frames, c.timestamps, row.path) for c in batch])
            for clip, result in zip(batch, results):
                labels = None if result is None else result.labels
                sample = clip_sample(clip, row, labels, self.labeler_info, cfg.pipeline.frame_format)
                status = self._status
                self._status = WorkerStatus(status.shard, row.line, status.clips + 1, status.rows_done)
                yield sample, clip, 0 if result is None else result.num_trajectories


def clip_sample(
    clip: Clip,
    row: ManifestRow,
    labels: np.ndarray | None,
    labeler_info: dict[str, Any] | None,
    frame_format: str,
) -> dict[str, Any]:
    """The shard sample of one clip of a row (what the worker writes; `bench pipeline` times the same)."""
    return build_sample(
        clip.frames,
        labels,
        source=row.path,
        clip_index=clip.index,
        clip_start=clip.start,
        clip_end=clip.end,
        timestamps=clip.timestamps,
        captions=row.captions,
        source_fps=clip.info.fps if clip.info.fps > 0 else None,
        source_width=clip.info.width,
        source_height=clip.info.height,
        source_decode={k: getattr(clip.info, k) for k in ("timestamps", "rotation", "sample_aspect_ratio")},
        labeler=labeler_info,
        frame_format=frame_format,
        extra=_extra(row),
    )


def _batches(clips: Iterator[Clip], size: int) -> Iterator[list[Clip]]:
    while batch := list(islice(clips, size)):
        yield batch


def _extra(row: ManifestRow) -> dict[str, Any]:
    """The row's id and other manifest columns, kept with the sample for tracing."""
    return {**({"id": row.id} if row.id is not None else {}), **row.extra}


def skip_reason(err: TrajTokError) -> str:
    """'<kind>: <message>' where kind is what the summary counts (missing file, too short, ...)."""
    return f"{getattr(err, 'kind', VideoDecodeError.kind)}: {err}"


def start_worker(ctx: ShardContext, num_gpus: float) -> Any:
    """A new worker actor: one CPU, `num_gpus` GPUs, status answered beside the running shard."""
    actor = ray.remote(concurrency_groups={"status": 1})(ShardWorker)
    return actor.options(num_cpus=1, num_gpus=num_gpus).remote(ctx)
