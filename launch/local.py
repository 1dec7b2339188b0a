"""Run a job as `launch.nproc` processes on this machine, through torch's own launcher (what torchrun runs).

`run_local(entry, cfg)` is what `trajtok train` (and `trajtok submit ... launch.backend=local`) calls. The
entry is a "module:function" whose function takes the `JobConfig`. torch's elastic launch API starts the
ranks (a standalone c10d rendezvous on localhost, as `torchrun --standalone`), gives each RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT, prefixes their output with `[rank N]` (and keeps
it per rank in `<run_dir>/launch/<start time>_*/`), and when one rank fails stops the others' process
groups at once: a crashed rank must not leave the rest waiting in a collective forever. What it does not
do, done here: the resolved config goes to `<run_dir>/config.yaml` and every rank reads it from there (all
ranks run the same settings), a user error in a rank is one line and its status, a rank dies with its
launcher (`_die_with_the_launcher`), and ranks are not restarted (a training job resumes from its
checkpoints when run again; `max_restarts` would replay a user error).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trajtok.config import JobConfig, load_config, save_config
from trajtok.errors import ConfigError, TrajTokError

LAUNCHER_PID = "TRAJTOK_LAUNCHER_PID"  # tells a rank which process must outlive it
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def load_entry(entry: str) -> Callable[[JobConfig], Any]:
    """Import the function named "package.module:function" (the form every launcher takes)."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry '{entry}': expected 'module:function'")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"entry '{entry}': {module_name} has no function {attr}")
    return function


def run_local(entry: str, cfg: JobConfig) -> int:
    """Run `entry` in `cfg.launch.nproc` local processes; 0 if all succeed, else the first failed status."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc = cfg.launch.nproc
    if nproc < 1:
        raise ConfigError(f"launch.nproc {nproc}: expected at least 1 process")
    load_entry(entry)  # a typo fails here, not in every rank
    config_path = save_config(cfg, cfg.run_dir)
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=time.strftime("%Y%m%d-%H%M%S"),  # names this launch's log folder, so they sort by time
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
        start_method="spawn",
        log_line_prefix_template="[rank ${rank}] ",
        logs_specs=DefaultLogsSpecs(log_dir=str(Path(cfg.run_dir) / "launch"), tee=Std.ALL),
    )
    # Like torchrun: without a limit every rank would start one thread per core and they would fight.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    env = {"OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1", LAUNCHER_PID: str(os.getpid())}
    with _environment(**env), _quiet_agent():
        try:
            elastic_launch(launch, sys.executable)("-m", "launch.local", entry, str(config_path))
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            others = "; stopped the other ranks" if nproc > 1 else ""
            print(f"rank {rank} exited with status {failure.exitcode}{others}", file=sys.stderr, flush=True)
            return failure.exitcode
    return 0


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """`values` in os.environ while the ranks start (they inherit it), the previous values after."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """The launcher's own warnings (closing signals, the failure summary) only when something else failed:
    the failed rank's status is reported in one line by `run_local`."""
    agent = logging.getLogger("torch.distributed.elastic")
    level = agent.level
    agent.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        agent.setLevel(level)


def _die_with_the_launcher() -> None:
    """Linux: SIGKILL this rank when its launcher dies, however it dies (kill -9, the OOM killer).

    The ranks run in sessions of their own (so a failed rank's whole process group can be stopped), out of
    reach of a signal to the launcher's group: without this, a killed launcher's ranks would go on training,
    orphaned, into the run directory a rerun writes too. Their loader workers exit with them.
    """
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(launcher):  # it died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def _main(entry: str, config_path: str) -> int:
    """One rank: load the saved config and call the entry (a user error is one line, not a traceback)."""
    _die_with_the_launcher()
    try:
        load_entry(entry)(load_config(config_path))
    except TrajTokError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        _leave_process_group()
        return 2
    return 0


def _leave_process_group() -> None:
    """Destroy the rank's process group, if it has one, before the interpreter exits: gloo torn down at
    exit while its threads still run aborts the process (status -6 instead of the user error's 2)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
