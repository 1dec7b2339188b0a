"""Process-group set-up that works the same under every launcher.

A rank learns who it is from the environment, torchrun style (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). `launch.local` sets these for its processes; inside a submitit SLURM task they are exported
from SLURM's own variables (submitit's TorchDistributedEnvironment: the first node of the allocation is the
master; the port is derived from the job id, `job_master_port`, so every task agrees without talking); a
plain `python` process gets a world of one on loopback. DeepSpeed's `init_distributed` and
`torch.distributed` both read the result.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def job_master_port(job_id: str) -> int:
    """The master port of a SLURM job, the same on every task: 29500 + job id modulo 3000.

    submitit derives one from the job id too, but anywhere in 20000-60000, which overlaps Linux's
    ephemeral ports (32768-60999): a busy node's outgoing connection can hold it, and the job dies with
    EADDRINUSE. This range stays below the ephemeral ones.
    """
    digits = "".join(c for c in job_id.split("_")[0] if c.isdigit()) or "0"
    return 29500 + int(digits) % 3000


def distributed_env() -> DistEnv:
    """Read this process's rank and master from the environment, exporting them first when missing.

    Inside a submitit job they come from SLURM; otherwise a single process gets rank 0 of 1 on 127.0.0.1.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        # sbatch hands the submitter's environment to the job: a RANK or MASTER_PORT left there by the
        # submitting process must not win over this job's own
        os.environ["MASTER_PORT"] = str(job_master_port(os.environ["SLURM_JOB_ID"]))
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    elif "RANK" not in os.environ:
        single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        os.environ.update(single, MASTER_PORT=str(free_port()))
    return DistEnv(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        master_addr=os.environ["MASTER_ADDR"],
        master_port=int(os.environ["MASTER_PORT"]),
    )


def init_process_group(backend: str = "") -> DistEnv:
    """Join the job's process group (NCCL on GPUs, gloo on CPU unless `backend` says otherwise)."""
    env = distributed_env()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(env.local_rank)
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    return env


def get_rank() -> int:
    """This process's global rank: from the process group once it exists, else from the environment."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 writes files, logs to MLflow and prints summaries; the other ranks stay quiet."""
    return get_rank() == 0
