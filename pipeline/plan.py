"""Which manifest rows go into which shard: a deterministic assignment that a rerun reproduces exactly.

Rows are cut into consecutive runs in manifest order, `rows_per_shard` each, so shard `i` always holds
the same rows for the same manifest and settings, and a rerun can trust a finished shard's stats. Each
shard carries a digest of its rows: a manifest edited between runs is detected, not silently mixed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline.outputs import shard_name

Row = TypeVar("Row")


@dataclass(frozen=True)
class ShardPlan(Generic[Row]):
    """One unit of work: consecutive manifest rows that become one tar."""

    index: int
    rows: tuple[Row, ...]
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


def rows_per_shard(clips_per_shard: int, clips_per_video: int) -> int:
    """Rows per shard so that a shard holds about `clips_per_shard` clips (at least one row)."""
    return max(1, clips_per_shard // max(1, clips_per_video))


def plan_shards(
    rows: Sequence[Row], per_shard: int, fingerprint: Callable[[Row], Any]
) -> list[ShardPlan[Row]]:
    """Cut `rows` into shards of `per_shard` consecutive rows; `fingerprint(row)` (JSON) feeds the digest."""
    if per_shard < 1:
        raise ValueError(f"rows per shard must be at least 1, got {per_shard}")
    plans = []
    for index, start in enumerate(range(0, len(rows), per_shard)):
        chunk = tuple(rows[start : start + per_shard])
        blob = json.dumps([fingerprint(row) for row in chunk], sort_keys=True, default=str).encode()
        plans.append(ShardPlan(index, chunk, hashlib.sha256(blob).hexdigest()[:16]))
    return plans
