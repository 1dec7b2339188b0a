"""The cluster smoke test behind `trajtok submit smoke`: every rank joins the process group and all_reduces,
rank 0 records the attempt in the run directory and in MLflow, so one command checks ranks, networking, the
shared file system, tracking and (with `launch.smoke_hold_s`) requeue on preemption.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trajtok.config import JobConfig
from trajtok.distributed import init_process_group
from trajtok.rundir import write_json
from trajtok.tracking import start_tracker


def _record_attempt(run_dir: Path, record: dict[str, Any]) -> int:
    """Append this attempt to the run directory's smoke log; its length says which attempt this is."""
    path = run_dir / "smoke_attempts.json"
    attempts = json.loads(path.read_text()) if path.is_file() else []
    attempts.append(record)
    write_json(path, attempts)
    return len(attempts)


def smoke(cfg: JobConfig) -> dict[str, Any]:
    """Check the whole job: ranks, the process group, the run directory and MLflow; return what this rank saw.

    The first attempt holds the allocation for `launch.smoke_hold_s` seconds after the check, so requeue can
    be drilled on a real cluster (`scancel --signal=USR2 JOB` or a short `launch.time`): the requeued attempt
    finds the earlier one in `smoke_attempts.json` and continues the same MLflow run.
    """
    env = init_process_group()
    total = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(total)
    expected = env.world_size * (env.world_size + 1) / 2
    shared: list[Any] = [None, None]
    if env.rank == 0:
        tracker = start_tracker(cfg, rank=0)
        attempt = _record_attempt(
            Path(cfg.run_dir),
            {"job_id": os.environ.get("SLURM_JOB_ID", ""), "world_size": env.world_size, "time": time.time()},
        )
        metrics = {"smoke/all_reduce": total.item(), "smoke/world_size": env.world_size}
        tracker.log_metrics(metrics, step=attempt)
        shared = [attempt, tracker.run_id]
        tracker.close()
    dist.broadcast_object_list(shared, src=0)
    attempt, run_id = shared
    result = {
        "rank": env.rank,
        "world_size": env.world_size,
        "host": socket.gethostname(),
        "backend": dist.get_backend(),
        "all_reduce": total.item(),
        "ok": total.item() == expected,
        "attempt": attempt,
        "mlflow_run_id": run_id,
    }
    print(json.dumps(result), flush=True)
    if attempt == 1 and cfg.launch.smoke_hold_s > 0:
        time.sleep(cfg.launch.smoke_hold_s)
    dist.destroy_process_group()
    return result
