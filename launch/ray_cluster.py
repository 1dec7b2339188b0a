"""A Ray cluster inside a SLURM allocation, for the pipeline's jobs (`trajtok submit shard`, `ray-smoke`).

`launch.slurm` runs one task per node and calls `run_ray_job` in each. The first node starts the Ray head
(`ray start --head --block`), runs the entry as the driver with `cfg.ray.address` pointing at the head, and
stops the head when the driver returns. The other nodes wait for the head, join it (`ray start --address
--block`), and leave when the head goes away. Only the Ray processes this job started are stopped: `ray stop`
would also kill other users' Ray on a shared node.

Token authentication is on, with a fresh token per attempt in the job's run directory (a shared file system,
as submitit already requires), so head, workers and driver agree without relying on `~/.ray`, and nobody else
on the network can submit work. The head's port is derived from the job id, so every node computes it alike.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from launch.local import load_entry
from trajtok.config import JobConfig

READY_TIMEOUT_S = 300.0  # how long a worker waits for the head (the head node may start late)
STOP_TIMEOUT_S = 60.0  # `ray start --block` drains for up to 30 s on SIGTERM


def head_port(job_id: str) -> int:
    """The head's GCS port: the same on every node of a job, different for jobs sharing a node."""
    return 20000 + int(job_id.split("_")[0]) % 20000


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _ray_start(args: list[str], cfg: JobConfig) -> subprocess.Popen:
    cpus = cfg.launch.cpus_per_task or len(os.sched_getaffinity(0))  # 0: the whole node the task was given
    resources = ["--num-cpus", str(cpus)]
    if cfg.launch.gpus_per_node:
        resources += ["--num-gpus", str(cfg.launch.gpus_per_node)]
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats"]
    return subprocess.Popen([*command, *args, *resources])


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets `ray start --block` drain and stop the processes it started; SIGKILL if it hangs."""
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_for_head(host: str, port: int, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _port_open(host, port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no Ray head at {host}:{port} after {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.5)


def run_ray_job(entry: str, cfg: JobConfig) -> Any:
    """One node's part of a Ray job: the head node returns the driver's result, the others None."""
    job = submitit.JobEnvironment()
    head, port = job.hostnames[0], head_port(str(job.job_id))
    token = Path(cfg.run_dir) / "ray_auth_token"
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    if job.node == 0:
        token.parent.mkdir(parents=True, exist_ok=True)
        token.unlink(missing_ok=True)
        token.touch(mode=0o600)  # readable by this user only, from the start
        token.write_text(secrets.token_hex(32))  # before the head listens, so workers never read a stale one
        ray_head = _ray_start(["--head", f"--port={port}", "--include-dashboard=false"], cfg)
        try:
            _wait_for_head(head, port, ray_head)
            cfg.ray.address = f"{head}:{port}"
            return load_entry(entry)(cfg)
        finally:
            _stop(ray_head)
    _wait_for_head(head, port)
    ray_worker = _ray_start([f"--address={head}:{port}"], cfg)
    try:
        while ray_worker.poll() is None and _port_open(head, port):
            time.sleep(5)
    finally:
        _stop(ray_worker)
    return None


def _hostname() -> str:
    return socket.gethostname()


def smoke(cfg: JobConfig) -> dict[str, Any]:
    """Ray smoke test (`trajtok submit ray-smoke`): join the cluster, run a task per CPU, report the nodes."""
    import ray

    if cfg.ray.address:
        ray.init(address=cfg.ray.address)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus or None)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        hostname = ray.remote(num_cpus=1)(_hostname)
        hosts = ray.get([hostname.remote() for _ in range(cpus)])
        result = {
            "nodes": sum(node["Alive"] for node in ray.nodes()),
            "cpus": cpus,
            "hosts": sorted(set(hosts)),
            "address": cfg.ray.address or "local",
        }
    finally:
        ray.shutdown()
    print(result, flush=True)
    return result
