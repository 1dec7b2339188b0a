"""A job told to go stops at the end of its step with a checkpoint of that step, then goes as it was told.

SLURM signals a job before it ends it: USR2 `signal_delay_s` before a time limit or a preemption (the
`--signal` that `trajtok submit` asks for), TERM at the end (a preemption with a grace time, a time limit,
an administrator's `scancel --signal=TERM`). Either signal, on any rank, asks every rank to stop after
the step it is in: the ranks agree at each step's end (one all-reduce of the signal number), save a
checkpoint of that step, and the signal then does what it did before training started. Under submitit,
rank 0 requeues the job (`SlurmTask.checkpoint`, for TERM as for USR2) and exits; the requeued job resumes
at the step it stopped at, not at the last periodic checkpoint. Without a handler, TERM ends the process
as TERM does, after the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopRequest:
    """Inside its `with` block, notes a stop signal instead of acting on it; `agreed` and `hand_on` act on
    it between steps. The signals' earlier handlers are back when the block ends."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}
        self.group: Any = None  # where the ranks agree: a host-side (gloo) group, never the GPUs' NCCL

    def __enter__(self) -> StopRequest:
        if torch.distributed.get_backend() != "gloo":  # every rank enters: new_group is collective
            self.group = torch.distributed.new_group(backend="gloo")
        for signum in STOP_SIGNALS:
            self.previous[signum] = signal.getsignal(signum)
            if self.previous[signum] is not signal.SIG_IGN:
                signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum

    def agreed(self) -> int:
        """The stop signal any rank has seen (0: none); every rank calls this at the end of the same step.
        A CPU all-reduce over a gloo group: the training step's GPU work is never waited for."""
        seen = torch.tensor([self.signum], dtype=torch.int64)
        torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return int(seen.item())

    def hand_on(self, signum: int) -> None:
        """After the checkpoint, give the signal to the handler it had before training (submitit's requeue
        on rank 0: it exits), or its default action. Returns where that handler returns (other ranks)."""
        self._restore()
        requeue = self.previous[signal.SIGUSR2]
        handler: Callable[[int, Any], Any] | int | None = self.previous[signum]
        if signum == signal.SIGTERM and callable(requeue):  # submitit bypasses TERM: it means go, requeue
            if _cancelled():
                log.warning("the job was cancelled: not requeued; a rerun resumes from the checkpoint")
                return
            signum, handler = signal.SIGUSR2, requeue
        if callable(handler):
            try:
                handler(signum, None)
            except subprocess.CalledProcessError as err:  # `scontrol requeue` of a job being cancelled
                log.warning("the job was not requeued (%s); a rerun resumes from the checkpoint", err)
        elif handler in (signal.SIG_DFL, None):
            os.kill(os.getpid(), signum)


def _cancelled() -> bool:
    """Whether SLURM's accounting says this job was cancelled (scancel sends TERM too; `scontrol requeue`
    would bring a cancelled job back). Without an answer from sacct, the job counts as cancelled."""
    job = os.environ.get("SLURM_JOB_ID", "")
    try:
        done = subprocess.run(
            ["sacct", "-n", "-X", "-j", job, "-o", "State"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return True
    state = done.stdout.strip()
    return done.returncode != 0 or not state or state.startswith("CANCELLED")
