"""The generic SLURM launcher: any "module:function" entry, submitted with submitit, requeued when cut short.

`submit(entry, cfg)` asks for `launch.nodes` nodes with one task per GPU (`launch.gpus_per_node`), or
`launch.nproc` tasks per node on CPU nodes. Every task runs a `SlurmTask`, which exports RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT from SLURM (`trajtok.distributed.distributed_env`) and calls the
entry with the config. The run directory is the job's identity, not the job id: a job resubmitted with the
same config after a crash, a `scancel` or its last requeue finds the earlier job's checkpoints and MLflow run
id there and resumes (`train.resume=auto`, the default). With `ray=True` a job gets one task per node
instead, which starts a Ray cluster across the allocation and runs the entry as its driver
(`launch.ray_cluster`); such a job takes whole nodes unless `launch.cpus_per_task` says how many CPUs.

On timeout or preemption SLURM signals the job (USR2, `signal_delay_s` before the end); submitit then calls
`SlurmTask.checkpoint`, which resubmits the same task with `train.resume=auto` and requeues the job under
the same id, so the next attempt resumes from the latest checkpoint in the same run directory and logs
into the same MLflow run. Time-outs are requeued at most `launch.max_requeues` times; preemptions always.

submitit's logs for all jobs go to `launch.folder` (default `<run_dir>/submitit`): `<job id>_<task>_log.out`.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from launch.local import load_entry
from launch.ray_cluster import run_ray_job
from trajtok.config import JobConfig, save_config
from trajtok.distributed import distributed_env
from trajtok.errors import ConfigError


class SlurmTask(submitit.helpers.Checkpointable):
    """What each task of a submitted job runs; picklable, so submitit can ship it and requeue it."""

    def __init__(self, entry: str, cfg: JobConfig, ray: bool = False) -> None:
        self.entry, self.cfg, self.ray = entry, cfg, ray

    def __call__(self) -> Any:
        cfg = self.cfg
        if submitit.JobEnvironment().global_rank == 0:
            save_config(cfg, cfg.run_dir)
        if self.ray:
            return run_ray_job(self.entry, cfg)
        distributed_env()
        return load_entry(self.entry)(cfg)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on timeout or preemption: run again, resuming from the run directory."""
        cfg = copy.deepcopy(self.cfg)
        cfg.train.resume = "auto"
        return submitit.helpers.DelayedSubmission(SlurmTask(self.entry, cfg, self.ray), *args, **kwargs)


def log_folder(cfg: JobConfig) -> Path:
    """Where submitit keeps the sbatch files, pickles and task logs of this config's jobs."""
    return Path(cfg.launch.folder or Path(cfg.run_dir) / "submitit").resolve()


# sbatch --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
SLURM_TIME = re.compile(
    r"^(?:(?P<days>\d+)-(?P<hours>\d+)(?::(?P<d_min>\d+)(?::(?P<d_sec>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)


def time_minutes(value: str) -> int:
    """`launch.time` in whole minutes (seconds round up), read the way sbatch reads --time."""
    match = SLURM_TIME.match(str(value).strip())
    if match is None:
        raise ConfigError(
            f"launch.time '{value}': expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    part = {key: int(number) if number else 0 for key, number in match.groupdict().items()}
    if match["days"] is not None:
        seconds = ((part["days"] * 24 + part["hours"]) * 60 + part["d_min"]) * 60 + part["d_sec"]
    elif match["c"] is not None:
        seconds = (part["a"] * 60 + part["b"]) * 60 + part["c"]
    else:
        seconds = part["a"] * 60 + part["b"]
    return -(-seconds // 60)


def slurm_parameters(cfg: JobConfig, ray: bool = False) -> dict[str, Any]:
    """The sbatch options for `cfg.launch`, named as submitit's SlurmExecutor takes them."""
    launch = cfg.launch
    minutes = time_minutes(launch.time)
    if launch.nodes < 1 or launch.nproc < 1 or minutes < 1:
        raise ConfigError("launch.nodes, launch.nproc and launch.time must be >= 1")
    whole_nodes = ray and not launch.cpus_per_task  # Ray schedules its own workers over every CPU it sees
    setup = list(launch.setup)
    if whole_nodes:  # the task, not just the job, gets every CPU: srun reads this as --cpus-per-task
        setup.append("export SRUN_CPUS_PER_TASK=$SLURM_CPUS_ON_NODE")
    params: dict[str, Any] = {
        "job_name": f"trajtok-{Path(cfg.run_dir).name}",
        "nodes": launch.nodes,
        "ntasks_per_node": 1 if ray else (launch.gpus_per_node or launch.nproc),
        "time": minutes,
        # Time to save state before the kill: 2 minutes, or half of a short job.
        "signal_delay_s": min(120, minutes * 30),
    }
    optional = {
        "cpus_per_task": launch.cpus_per_task,
        "gpus_per_node": launch.gpus_per_node,
        "mem": f"{launch.mem_gb}GB" if launch.mem_gb else ("0" if whole_nodes else ""),
        "exclusive": launch.exclusive or whole_nodes,
        "partition": launch.partition,
        "account": launch.account,
        "qos": launch.qos,
        "constraint": launch.constraint,
        "setup": setup,
        "additional_parameters": dict(launch.sbatch),
    }
    params.update({key: value for key, value in optional.items() if value})
    return params


def sbatch_script(cfg: JobConfig, ray: bool = False) -> str:
    """The batch script `submit` gives sbatch (what `launch.dry_run=true` prints); needs no SLURM here."""
    folder = log_folder(cfg)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(cfg, ray))


def submit(entry: str, cfg: JobConfig, ray: bool = False) -> submitit.Job:
    """Submit `entry` as a SLURM job (see the module docstring); returns at once with the submitit job."""
    load_entry(entry)  # a typo fails here, not on the cluster
    try:
        executor = submitit.SlurmExecutor(log_folder(cfg), max_num_timeout=cfg.launch.max_requeues)
    except RuntimeError as err:  # submitit's "Could not detect srun"
        raise ConfigError(f"launch.backend=slurm: {err}") from None
    executor.update_parameters(**slurm_parameters(cfg, ray))
    try:
        return executor.submit(SlurmTask(entry, cfg, ray))
    except submitit.core.utils.FailedJobError as err:  # sbatch said no: a partition, account or limit
        reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ConfigError(f"launch: sbatch refused the job: {reason}") from None
