"""Where every manifest row ended: written, skipped (bad input, with the reason) or failed (with the error).

A shard's stats hold the outcome of each of its rows; the job's summary is the union of all shard stats
plus the rows the manifest reader rejected, so the counts always add up to the manifest, however many
reruns it took to get there.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

WRITTEN, SKIPPED, FAILED = "written", "skipped", "failed"
STATS_VERSION = 1


@dataclass
class RowOutcome:
    """The fate of one manifest row; `keys` are the samples it produced, `reason` why it produced none."""

    line: int
    source: str
    status: str  # written | skipped | failed
    reason: str = ""
    keys: list[str] = field(default_factory=list)
    sequential_decode: bool = False  # its video's timestamps could not be trusted: read frame by frame


@dataclass
class ShardStats:
    """What a finished shard holds; written as JSON after the tar is in place (the completion marker)."""

    shard: str
    settings_digest: str  # clip, labeler and format settings: a rerun with other settings must not mix in
    plan_digest: str  # which rows this shard covers
    rows: list[RowOutcome]
    clips: int = 0
    frames: int = 0
    trajectories: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the worker process (all its threads) while on this shard
    worker: str = ""  # host:pid of the worker that wrote it
    version: int = STATS_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardStats:
        rows = [RowOutcome(**row) for row in data["rows"]]
        return cls(**{**data, "rows": rows})


def summarize(
    stats: list[ShardStats], rejected: list[RowOutcome], manifest: str, rows: int
) -> dict[str, Any]:
    """The job summary: counts that add up to `rows`, and the skipped and failed rows with their reasons."""
    outcomes = sorted([o for s in stats for o in s.rows] + list(rejected), key=lambda o: o.line)
    counts = Counter(o.status for o in outcomes)
    reasons = Counter(_reason_kind(o.reason) for o in outcomes if o.status == SKIPPED)
    return {
        "manifest": manifest,
        "rows": rows,
        "accounted": len(outcomes),
        WRITTEN: counts[WRITTEN],
        SKIPPED: counts[SKIPPED],
        FAILED: counts[FAILED],
        "skip_reasons": dict(sorted(reasons.items())),
        "clips": sum(s.clips for s in stats),
        "frames": sum(s.frames for s in stats),
        "trajectories": sum(s.trajectories for s in stats),
        "bytes": sum(s.bytes for s in stats),
        "shards": len(stats),
        "sequential_decode_rows": sum(o.sequential_decode for o in outcomes if o.status == WRITTEN),
        "skipped_rows": [_brief(o) for o in outcomes if o.status == SKIPPED],
        "failed_rows": [_brief(o) for o in outcomes if o.status == FAILED],
    }


def _brief(outcome: RowOutcome) -> dict[str, Any]:
    return {"line": outcome.line, "source": outcome.source, "reason": outcome.reason}


def _reason_kind(reason: str) -> str:
    """The reason's category: the text before the first colon ('undecodable: moov atom not found')."""
    return reason.split(":", 1)[0].strip() or "unknown"
