"""`trajtok shards inspect`: what a folder of shards holds, and whether every sample keeps the contract.

Each tar is read back with WebDataset's tar iterators, every sample is validated (frames decoded too),
and the counts are checked against the shard's stats: the keys a finished shard says it wrote must be
exactly the keys in its tar, with no key in two places. A picture shows a few samples' frames with their
trajectories.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.accounting import WRITTEN
from pipeline.outputs import STATS_SUFFIX, SUMMARY_NAME, TAR_SUFFIX, OutputDir
from trajtok.data.loader import read_shard
from trajtok.data.sample import ClipSample, decode_sample
from trajtok.errors import TrajTokError
from trajtok.viz import overlay_frames, tile

_PICTURE_FRAMES = 8


@dataclass
class ShardReport:
    name: str
    bytes: int
    samples: int = 0
    finished: bool = False  # its stats JSON exists
    problems: list[str] = field(default_factory=list)


@dataclass
class InspectReport:
    """Counts over all shards, and every problem found (an empty `problems` means all is well)."""

    folder: str
    shards: list[ShardReport] = field(default_factory=list)
    samples: int = 0
    images: int = 0
    labelled: int = 0
    frames_per_clip: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)  # "HxW" of the stored frames
    trajectories: list[int] = field(default_factory=list)  # per labelled clip
    labelers: Counter = field(default_factory=Counter)  # "name v<version>"
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # temporary files of killed writers
    summary: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and all(not s.problems for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "shards": [vars(s) for s in self.shards],
            "samples": self.samples,
            "images": self.images,
            "labelled": self.labelled,
            "bytes": sum(s.bytes for s in self.shards),
            "frames_per_clip": dict(sorted(self.frames_per_clip.items())),
            "sizes": dict(self.sizes.most_common()),
            "trajectories_per_clip": _spread(self.trajectories),
            "labelers": dict(self.labelers),
            "problems": self.problems + [f"{s.name}: {p}" for s in self.shards for p in s.problems],
            "leftovers": self.leftovers,
            "summary": self.summary,
        }

    def text(self) -> str:
        """The report for a terminal: one line per fact, problems last."""
        data = self.to_json()
        finished = sum(s.finished for s in self.shards)
        lines = [
            f"{self.folder}: {len(self.shards)} shards ({finished} finished), {data['bytes'] / 1e6:.1f} MB",
            f"samples: {self.samples} ({self.samples - self.images} clips, {self.images} images), "
            f"{self.labelled} labelled",
            f"frames per clip: {_counts(self.frames_per_clip)}",
            f"frame sizes: {_counts(self.sizes)}",
        ]
        if self.trajectories:
            t = data["trajectories_per_clip"]
            spread = ", ".join(f"{k} {v}" for k, v in t.items())
            lines.append(f"trajectories per clip: {spread}")
        if self.labelers:
            lines.append(f"labelers: {_counts(self.labelers)}")
        if self.summary:
            s = self.summary
            lines.append(
                f"summary.json: {s.get('rows')} rows: {s.get('written')} written, "
                f"{s.get('skipped')} skipped, {s.get('failed')} failed"
            )
        if self.leftovers:
            lines.append(f"temporary files of a killed writer (a rerun removes them): {len(self.leftovers)}")
        lines += [f"PROBLEM {p}" for p in data["problems"]]
        lines.append("all samples valid" if self.ok else f"{len(data['problems'])} problem(s)")
        return "\n".join(lines)


def inspect_shards(folder: str, picture_samples: int = 4) -> tuple[InspectReport, np.ndarray | None]:
    """Read and validate every sample of every tar in `folder`; also a picture of the first few samples."""
    out = OutputDir(folder)
    names = out.names()
    report = InspectReport(out.url)
    report.leftovers = [n for n in names if ".tmp-" in n]
    if SUMMARY_NAME in names:
        report.summary = out.read_json(SUMMARY_NAME)
    shown: list[ClipSample] = []
    where: dict[str, str] = {}
    for name in (n for n in names if n.endswith(TAR_SUFFIX)):
        shard = ShardReport(name, out.size(name))
        report.shards.append(shard)
        keys = []
        for raw in read_shard(out.display(name), lambda url, reason, s=shard: s.problems.append(reason)):
            key = raw["__key__"]
            keys.append(key)
            if key in where:
                shard.problems.append(f"{key}: duplicate of a sample in {where[key]}")
            where.setdefault(key, name)
            try:
                sample = decode_sample(raw)
            except TrajTokError as err:
                shard.problems.append(str(err))
                continue
            _count(report, sample)
            if len(shown) < picture_samples and sample.labels is not None:
                shown.append(sample)
        shard.samples = len(keys)
        stats_name = name.removesuffix(TAR_SUFFIX) + STATS_SUFFIX
        if stats_name in names:
            shard.finished = True
            _check_against_stats(shard, keys, out.read_json(stats_name))
    if not report.shards:
        report.problems.append("no .tar shards in the folder")
    return report, picture(shown) if shown else None


def _count(report: InspectReport, sample: ClipSample) -> None:
    meta = sample.meta
    report.samples += 1
    report.images += sample.is_image
    report.frames_per_clip[meta.frame_count] += 1
    report.sizes[f"{meta.height}x{meta.width}"] += 1
    if sample.labels is not None:
        report.labelled += 1
        report.trajectories.append(int(meta.num_trajectories))
        report.labelers[f"{meta.labeler.name} v{meta.labeler.version}"] += 1


def _check_against_stats(shard: ShardReport, keys: list[str], stats: dict[str, Any]) -> None:
    rows = stats.get("rows", [])
    expected = [k for row in rows if row.get("status") == WRITTEN for k in row.get("keys", [])]
    if sorted(expected) != sorted(keys):
        missing, extra = set(expected) - set(keys), set(keys) - set(expected)
        shard.problems.append(
            f"the tar holds {len(keys)} samples, its stats list {len(expected)} "
            f"(missing {sorted(missing)[:3]}, unlisted {sorted(extra)[:3]})"
        )
    if stats.get("clips") != len(keys):
        shard.problems.append(f"its stats count {stats.get('clips')} clips, the tar holds {len(keys)}")


def first_samples(out: OutputDir, n: int) -> list[ClipSample]:
    """The first `n` valid labelled samples of the finished shards in `out`, in shard order."""
    samples: list[ClipSample] = []
    names = set(out.names())
    finished = [n.removesuffix(STATS_SUFFIX) + TAR_SUFFIX for n in sorted(names) if n.endswith(STATS_SUFFIX)]
    for name in (n for n in finished if n in names):
        for raw in read_shard(out.display(name), lambda url, why: None):
            if len(samples) == n:
                return samples
            try:
                sample = decode_sample(raw)
            except TrajTokError:
                continue
            if sample.labels is not None:
                samples.append(sample)
    return samples


def picture(samples: list[ClipSample]) -> np.ndarray:
    """One row per sample: up to 8 evenly spaced frames, each tinted with its trajectories."""
    rows = []
    for sample in samples:
        keep = np.unique(np.linspace(0, sample.meta.frame_count - 1, _PICTURE_FRAMES).round().astype(int))
        overlay = overlay_frames(sample.frames[keep], sample.labels[keep])
        rows.append(np.concatenate([sample.frames[keep], overlay]))  # frames above, trajectories below
    width = max(len(r) // 2 for r in rows)
    height, cell = max(r.shape[1] for r in rows), max(r.shape[2] for r in rows)
    padded = np.zeros((len(rows), 2 * width, height, cell, 3), np.uint8)
    for i, r in enumerate(rows):
        n = len(r) // 2
        padded[i, :n, : r.shape[1], : r.shape[2]] = r[:n]
        padded[i, width : width + n, : r.shape[1], : r.shape[2]] = r[n:]
    return tile(padded.reshape(-1, height, cell, 3), columns=width)


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    v = np.asarray(values)
    return {
        "min": int(v.min()),
        "median": float(np.median(v)),
        "mean": round(float(v.mean()), 2),
        "max": int(v.max()),
    }


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k}: {n}" for k, n in sorted(counter.items(), key=lambda kv: str(kv[0]))) or "-"
