"""Local multi-process launch (`launch.local.run_local`) and the process-group helpers, in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from launch.cli import main
from launch.local import load_entry, run_local
from trajtok.config import load_config
from trajtok.distributed import distributed_env

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR")


def test_a_plain_process_is_a_world_of_one(monkeypatch):
    for name in DIST_VARS:
        monkeypatch.delenv(name, raising=False)
    env = distributed_env()
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (0, 1, 0, "127.0.0.1")
    assert os.environ["MASTER_PORT"] == str(env.master_port) and env.master_port > 0


def test_explicit_environment_wins(monkeypatch):
    values = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n7", "MASTER_PORT": "29500"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # set variables win over SLURM's
    env = distributed_env()
    assert (env.rank, env.world_size, env.local_rank) == (3, 8, 1)
    assert (env.master_addr, env.master_port) == ("n7", 29500)


@pytest.mark.parametrize("entry", ["trajtok.distributed", "trajtok.distributed:", "trajtok.distributed:nope"])
def test_load_entry_rejects_what_is_not_a_function(entry):
    with pytest.raises(ValueError, match="entry 'trajtok.distributed"):
        load_entry(entry)


def test_submit_smoke_locally_runs_two_ranks_that_all_reduce(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["submit", "smoke", f"run_dir={run_dir}", "launch.nproc=2", "tracking.enabled=false"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    results = {}
    for rank in (0, 1):
        (line,) = [line for line in lines if line.startswith(f"[rank {rank}] {{")]
        results[rank] = json.loads(line.removeprefix(f"[rank {rank}] "))
    assert all(r["world_size"] == 2 and r["all_reduce"] == 3.0 and r["ok"] for r in results.values())
    assert results[0]["backend"] == "gloo" and results[0]["attempt"] == results[1]["attempt"] == 1
    assert load_config(run_dir / "config.yaml").launch.nproc == 2  # what every rank read


@pytest.fixture
def entries(tmp_path, monkeypatch) -> str:
    """A module of test entry points, importable by the spawned ranks through PYTHONPATH."""
    (tmp_path / "entries_for_launch.py").write_text(textwrap.dedent("""
        import os
        import time
        from pathlib import Path

        from trajtok.errors import ConfigError

        def rank1_dies(cfg):
            Path(cfg.run_dir, f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
            if os.environ["RANK"] == "1":
                while not Path(cfg.run_dir, "pid0").exists():  # rank 0 must be up before its peer dies
                    time.sleep(0.05)
                raise SystemExit(3)
            time.sleep(600)  # rank 0 would wait forever, as in a collective with a dead peer

        def both_wait(cfg):
            Path(cfg.run_dir, f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
            time.sleep(600)

        def bad_input(cfg):
            raise ConfigError("data.shards 'nowhere/*.tar': no shards match")
    """))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "entries_for_launch"


def test_one_rank_failing_stops_the_others_at_once(entries, tmp_path, capsys):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "launch.nproc=2"])
    start = time.monotonic()
    assert run_local(f"{entries}:rank1_dies", cfg) == 3
    assert time.monotonic() - start < 120
    assert "rank 1 exited with status 3; stopped the other ranks" in capsys.readouterr().err
    rank0 = int((tmp_path / "run" / "pid0").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(rank0, 0)


def test_a_launcher_killed_with_sigkill_takes_its_ranks_with_it(entries, tmp_path):
    run_dir = tmp_path / "run"
    script = (
        "from launch.local import run_local; from trajtok.config import load_config; "
        f"run_local('{entries}:both_wait', load_config(None, ['run_dir={run_dir}', 'launch.nproc=2']))"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not all((run_dir / f"pid{rank}").exists() for rank in (0, 1)):
        assert launcher.poll() is None and time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.1)
    ranks = [psutil.Process(int((run_dir / f"pid{rank}").read_text())) for rank in (0, 1)]
    launcher.kill()  # SIGKILL: no chance to stop anything itself
    launcher.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "ranks outlived their launcher"


def test_a_user_error_in_a_rank_is_one_line(entries, tmp_path, capsys):
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", "launch.nproc=1"])
    assert run_local(f"{entries}:bad_input", cfg) == 2
    printed = capsys.readouterr()
    assert "[rank 0] error: data.shards 'nowhere/*.tar': no shards match" in printed.err
    assert "Traceback" not in printed.out + printed.err
    assert printed.err.strip().splitlines()[-1] == "rank 0 exited with status 2"


def test_slurm_master_port_is_below_the_ephemeral_range_and_the_same_for_array_tasks():
    from trajtok.distributed import job_master_port

    ports = {job_master_port(str(job)) for job in range(1, 10000, 7)}
    assert min(ports) >= 29500 and max(ports) < 32768
    assert job_master_port("1234_5") == job_master_port("1234")
