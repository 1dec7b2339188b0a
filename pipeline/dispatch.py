"""Hands shards to worker actors, one at a time each, and keeps the job going when a worker goes wrong.

Only small things cross the object store: a shard's plan on the way out, its stats on the way back, and
a worker's status (row, clips done) when polled. Frames stay inside the worker that decodes them.

The watchdog: a worker whose status has not changed for `stall_timeout` seconds since it began its
shard is stuck on one row (a decode that never returns, a labeler that hangs). It is killed and replaced,
the row is recorded as failed, and the shard starts again without it. A worker that dies (segfault, out
of memory, kill -9) is replaced and its shard run again; a row that two workers died on is recorded as
failed. A shard that keeps failing with nobody to blame is given up after `max_attempts`; its rows
count as failed for this run (not recorded in stats), so a rerun tries it again.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from pipeline.accounting import FAILED, RowOutcome, ShardStats
from pipeline.plan import ShardPlan

POLL_SECONDS = 0.5


@dataclass
class WorkerStatus:
    """What a worker is doing: its shard ("" before it starts one), the manifest line it is on (-1 between
    rows) and the clips it has made in that shard."""

    shard: str = ""
    line: int = -1
    clips: int = 0
    rows_done: int = 0


@dataclass
class _Job:
    plan: ShardPlan
    abandoned: dict[int, str] = field(default_factory=dict)  # line -> why the row was given up
    deaths: Counter = field(default_factory=Counter)  # line -> workers that died on it
    attempts: int = 0


class _Slot:
    """One worker actor and the shard it is on."""

    def __init__(self, start_worker: Callable[[], Any]) -> None:
        self._start_worker = start_worker
        self.handle = start_worker()
        self.job: _Job | None = None
        self.ref: ray.ObjectRef | None = None
        self.status = WorkerStatus()
        self.status_ref: ray.ObjectRef | None = None
        self.changed_at = time.monotonic()

    def assign(self, job: _Job) -> None:
        job.attempts += 1
        self.job, self.status, self.changed_at = job, WorkerStatus(), time.monotonic()
        self.ref = self.handle.process.remote(job.plan, dict(job.abandoned))

    def release(self) -> _Job:
        job, self.job, self.ref, self.status_ref = self.job, None, None, None
        return job

    def replace_worker(self) -> None:
        ray.kill(self.handle)
        self.handle, self.status_ref = self._start_worker(), None

    def started(self) -> bool:
        """The worker has begun this slot's shard (an actor that is still starting is not stalled)."""
        return self.job is not None and self.status.shard == self.job.plan.name

    def note(self, status: WorkerStatus) -> None:
        if status != self.status:
            self.status, self.changed_at = status, time.monotonic()


@dataclass
class DispatchResult:
    stats: list[ShardStats]
    lost: list[RowOutcome]  # rows of shards given up in this run (counted as failed, not marked done)
    worker_restarts: int = 0


def run_shards(
    plans: list[ShardPlan],
    start_worker: Callable[[], Any],
    workers: int,
    stall_timeout: float,
    max_attempts: int = 3,
    on_progress: Callable[[int, ShardStats | None], None] = lambda clips, stats: None,
) -> DispatchResult:
    """Process every plan on `workers` actors made by `start_worker`; `on_progress(clips, finished)`.

    `clips` is the running total of clips written in this run, in finished and in running shards.
    """
    queue = deque(_Job(plan) for plan in plans)
    result = DispatchResult([], [])
    slots = [_Slot(start_worker) for _ in range(min(workers, len(plans)))]
    clips_finished = 0
    try:
        while queue or any(slot.job for slot in slots):
            for slot in slots:
                if slot.job is None and queue:
                    slot.assign(queue.popleft())
            busy = {slot.ref: slot for slot in slots if slot.job is not None}
            ready, _ = ray.wait(list(busy), num_returns=len(busy), timeout=POLL_SECONDS)
            for ref in ready:
                slot = busy[ref]
                finished = _collect(slot, queue, result, max_attempts)
                if finished is not None:
                    clips_finished += finished.clips
                    on_progress(clips_finished, finished)
            _poll(slots)
            for slot in slots:
                if slot.started() and time.monotonic() - slot.changed_at > stall_timeout:
                    reason = f"stalled: no progress for {stall_timeout:g} s"
                    _lose_worker(slot, queue, result, max_attempts, reason, stalled=True)
            on_progress(clips_finished + sum(s.status.clips for s in slots if s.started()), None)
    finally:
        for slot in slots:
            ray.kill(slot.handle)
    return result


def _collect(slot: _Slot, queue: deque[_Job], result: DispatchResult, max_attempts: int) -> ShardStats | None:
    """Take a finished call's result; on failure, blame a row or retry or give the shard up."""
    try:
        stats = ray.get(slot.ref)
    except RayActorError as err:
        _lose_worker(slot, queue, result, max_attempts, f"worker died: {_first_line(err)}", stalled=False)
        return None
    except RayTaskError as err:
        job = slot.release()
        _retry_or_give_up(job, queue, result, max_attempts, _first_line(err.cause or err))
        return None
    slot.release()
    result.stats.append(stats)
    return stats


def _lose_worker(
    slot: _Slot, queue: deque[_Job], result: DispatchResult, max_attempts: int, reason: str, stalled: bool
) -> None:
    """Replace the worker and run its shard again first. The row it was on is failed with `reason` if
    it stalled, or if a worker already died on it: one death may be the node's fault (OOM killer,
    preemption, kill -9), so that row gets another try."""
    line = slot.status.line if slot.started() else -1
    job = slot.release()
    slot.replace_worker()
    result.worker_restarts += 1
    if line >= 0:
        job.deaths[line] += 1
        if stalled or job.deaths[line] >= 2:
            job.abandoned[line] = f"{reason} ({'' if stalled else 'twice on this row; '}worker restarted)"
            job.attempts -= 1  # the culprit is known and excluded: this try does not count
    _retry_or_give_up(job, queue, result, max_attempts, reason)


def _retry_or_give_up(
    job: _Job, queue: deque[_Job], result: DispatchResult, max_attempts: int, why: str
) -> None:
    if job.attempts >= max_attempts:
        _give_up(job, result, why)
    else:
        queue.appendleft(job)


def _give_up(job: _Job, result: DispatchResult, why: str) -> None:
    for row in job.plan.rows:
        reason = job.abandoned.get(row.line, f"{job.plan.name} given up after {job.attempts} attempts: {why}")
        result.lost.append(RowOutcome(row.line, row.path, FAILED, reason))


def _poll(slots: list[_Slot]) -> None:
    """Ask each busy worker what it is doing, without waiting on one that does not answer."""
    for slot in slots:
        if slot.job is not None and slot.status_ref is None:
            slot.status_ref = slot.handle.status.remote()
    pending = {slot.status_ref: slot for slot in slots if slot.status_ref is not None}
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.05)
    for ref in ready:
        slot = pending[ref]
        slot.status_ref = None
        try:
            slot.note(ray.get(ref, timeout=1))
        except (RayActorError, GetTimeoutError):
            continue  # the worker is gone or busy dying; its process call reports how


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
