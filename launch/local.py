"""Run a job as `launch.nproc` processes on this machine, the way torchrun would.

`run_local(entry, cfg)` is what `trajtok train` (and `trajtok submit ... launch.backend=local`) calls. The
entry is a "module:function" whose function takes the `JobConfig`; each process gets RANK, WORLD_SIZE,
LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, so
`trajtok.distributed.init_process_group` (or DeepSpeed) finds its place in the job. The resolved config goes
to `<run_dir>/config.yaml` and every process reads it from there, so all ranks run the same settings. Output
is streamed line by line with a `[rank N]` prefix. If one process fails, the others are stopped at once and
its exit status is returned: a crashed rank must not leave the rest waiting in a collective forever.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from trajtok.config import JobConfig, load_config, save_config
from trajtok.distributed import free_port
from trajtok.errors import ConfigError, TrajTokError

GRACE_S = 5.0  # how long stopped ranks get to exit after SIGTERM before SIGKILL


def load_entry(entry: str) -> Callable[[JobConfig], Any]:
    """Import the function named "package.module:function" (the form every launcher takes)."""
    module_name, sep, attr = entry.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry '{entry}': expected 'module:function'")
    function = getattr(importlib.import_module(module_name), attr, None)
    if not callable(function):
        raise ValueError(f"entry '{entry}': {module_name} has no function {attr}")
    return function


def _stream(pipe: IO[str], prefix: str, lock: threading.Lock) -> None:
    for line in pipe:
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each running rank's process group (its own workers too); SIGKILL what outlives the grace."""
    running = [p for p in procs if p.poll() is None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in running):
            time.sleep(0.05)
        running = [p for p in running if p.poll() is None]
        if not running:
            return


def run_local(entry: str, cfg: JobConfig) -> int:
    """Run `entry` in `cfg.launch.nproc` local processes; 0 if all succeed, else the first failed status."""
    nproc = cfg.launch.nproc
    if nproc < 1:
        raise ConfigError(f"launch.nproc {nproc}: expected at least 1 process")
    load_entry(entry)  # a typo fails here, not in every rank
    config_path = save_config(cfg, cfg.run_dir)
    base_env = {
        **os.environ,
        "WORLD_SIZE": str(nproc),
        "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    # Like torchrun: without a limit every rank would start one thread per core and they would fight.
    base_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    streams: list[threading.Thread] = []
    try:
        for rank in range(nproc):
            proc = subprocess.Popen(
                [sys.executable, "-m", "launch.local", entry, str(config_path)],
                env={**base_env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group, so _stop reaches the rank's children too
            )
            procs.append(proc)
            streams.append(threading.Thread(target=_stream, args=(proc.stdout, f"[rank {rank}] ", lock)))
            streams[-1].start()
        failed = _wait_first_failure(procs)
    finally:
        _stop(procs)
        for thread in streams:
            thread.join()
    if failed is None:
        return 0
    status = procs[failed].returncode
    print(f"rank {failed} exited with status {status}; stopped the other ranks", file=sys.stderr, flush=True)
    return status


def _wait_first_failure(procs: list[subprocess.Popen]) -> int | None:
    """Wait until every rank has succeeded (None) or one has failed (its rank)."""
    while True:
        codes = [p.poll() for p in procs]
        failed = next((rank for rank, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None or all(code == 0 for code in codes):
            return failed
        time.sleep(0.1)


def _main(entry: str, config_path: str) -> int:
    """One rank: load the saved config and call the entry (a user error is one line, not a traceback)."""
    try:
        load_entry(entry)(load_config(config_path))
    except TrajTokError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
