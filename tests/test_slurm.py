"""The SLURM launcher against a real one-node SLURM cluster (slurmctld, slurmd, slurmdbd, munge on loopback).

The dry-run tests need no cluster. The others use the session's `slurm_cluster` fixture, which installs and
starts SLURM where it can (root with apt) and skips where it cannot, except in CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit
from exported_runs import write_weights
from mlflow import MlflowClient

from launch.cli import main
from launch.commands._common import expand_aliases
from launch.commands.eval import ALIASES as EVAL_ALIASES
from launch.slurm import submit
from trajtok.config import load_config
from trajtok.eval.run import evaluate
from trajtok.tracking import start_tracker

JOB_TIMEOUT_S = 240
STARTUP_ALLOWANCE_S = 5  # a fresh interpreter importing torch on a loaded 2-core CI machine (4 s idle)


def _sbatch_lines(capsys: pytest.CaptureFixture, *overrides: str) -> set[str]:
    assert main(["submit", *overrides, "launch.backend=slurm", "launch.dry_run=true"]) == 0
    return set(capsys.readouterr().out.splitlines())


def test_dry_run_prints_the_sbatch_script(capsys, tmp_path):
    lines = _sbatch_lines(
        capsys,
        "smoke",
        f"run_dir={tmp_path}",
        "launch.nodes=4",
        "launch.gpus_per_node=8",
        "launch.cpus_per_task=10",
        "launch.partition=gpu",
        "launch.time=240",
        "launch.mem_gb=400",
    )
    for line in [
        "--nodes=4",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=10",
        "--partition=gpu",
        "--time=240",
        "--mem=400GB",
        "--signal=USR2@120",
        f"--output={tmp_path}/submitit/%j_0_log.out",
    ]:
        assert f"#SBATCH {line}" in lines
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    assert not list(tmp_path.iterdir()), "a dry run must not write anything"


def test_dry_run_on_cpu_nodes_and_for_ray_jobs(capsys, tmp_path):
    cpu = _sbatch_lines(capsys, "smoke", f"run_dir={tmp_path}", "launch.nproc=3", "launch.time=1")
    assert {"#SBATCH --ntasks-per-node=3", "#SBATCH --time=1", "#SBATCH --signal=USR2@30"} <= cpu
    assert not any("--gpus-per-node" in line or "--partition" in line for line in cpu)
    ray = _sbatch_lines(capsys, "ray-smoke", f"run_dir={tmp_path}", "launch.nodes=3", "launch.nproc=4")
    assert {"#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1"} <= ray  # one Ray node per SLURM node


@pytest.mark.parametrize(
    "written, minutes",
    [
        ("90", 90),
        ("30:30", 31),
        ("24:00:00", 1440),
        ("0:10:00", 10),
        ("2-12", 3600),
        ("1-00:30", 1470),
        ("1-00:00:30", 1441),
    ],
)
def test_launch_time_takes_every_form_sbatch_does(capsys, tmp_path, written, minutes):
    lines = _sbatch_lines(capsys, "smoke", f"run_dir={tmp_path}", f"launch.time={written}")
    assert f"#SBATCH --time={minutes}" in lines
    config = tmp_path / "job.yaml"  # in a file YAML 1.1 would read 24:00:00 as 86400 (base 60)
    config.write_text(f"launch:\n  time: {written}\n")
    assert load_config(config).launch.time == written


def test_a_launch_time_sbatch_would_not_take_is_one_line(run_cli, tmp_path):
    result = run_cli(
        "submit",
        "smoke",
        f"run_dir={tmp_path}",
        "launch.backend=slurm",
        "launch.dry_run=true",
        "launch.time=24h",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "launch.time '24h': expected minutes, MM:SS, HH:MM:SS" in result.stderr.strip().splitlines()[-1]


def test_setup_lines_extra_options_and_whole_nodes_for_ray(capsys, tmp_path):
    lines = _sbatch_lines(
        capsys,
        "smoke",
        f"run_dir={tmp_path}",
        "launch.exclusive=true",
        "launch.setup=[module load cuda/12.4,export NCCL_DEBUG=WARN]",
        "launch.sbatch={mail-type: END,comment: trajtok}",
    )
    assert {
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
        "#SBATCH --comment=trajtok",
        "module load cuda/12.4",
        "export NCCL_DEBUG=WARN",
    } <= lines
    assert not any(line.startswith("#SBATCH --cpus-per-task") for line in lines)  # SLURM's default
    manifest = tmp_path / "m.jsonl"  # `submit shard` reads its manifest before printing or queueing
    manifest.write_text('{"video": "a.mp4", "caption": "a red square moves left"}\n')
    shard = ["shard", f"run_dir={tmp_path}", f"data.manifest={manifest}", f"pipeline.out={tmp_path / 'out'}"]
    ray = _sbatch_lines(capsys, *shard, "launch.nodes=8")
    assert {"#SBATCH --exclusive", "#SBATCH --mem=0", "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_ON_NODE"} <= ray
    told = _sbatch_lines(capsys, *shard, "launch.cpus_per_task=16", "launch.mem_gb=64")
    assert {"#SBATCH --cpus-per-task=16", "#SBATCH --mem=64GB"} <= told
    assert not any("exclusive" in line or "SRUN_CPUS" in line for line in told)


@pytest.mark.parametrize(
    "target, overrides, refusal, seconds",
    [  # the target is training's: < 5 s; the shard and eval checks import Ray / MLflow (8-10 s)
        ("train", ["data.shards=/nowhere/shard-{000000..000009}.tar"], "data.shards '/nowhere/", 5),
        ("train", ["data.shards={shards}", "model.size=nope"], "model.size", 5),
        ("shard", ["data.manifest=/nowhere/m.jsonl", "pipeline.out={out}"], "/nowhere/m.jsonl", 15),
        ("eval", ["ckpt=/nowhere/run", "data.manifest=/nowhere/m.jsonl"], "eval.ckpt '/nowhere/run'", 15),
        ("eval", ["task=retrieve"], "eval.task 'retrieve'", 15),
    ],
)
def test_submit_refuses_a_job_bound_to_fail_before_sbatch(
    target, overrides, refusal, seconds, tmp_path, synthetic_shards
):
    bin_dir = tmp_path / "bin"  # an sbatch that only records that it was called
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch-called\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    filled = [
        o.replace("{shards}", synthetic_shards.pattern).replace("{out}", str(tmp_path / "out"))
        for o in overrides
    ]
    command = [
        sys.executable,
        "-m",
        "launch.cli",
        "submit",
        target,
        *filled,
        f"run_dir={tmp_path / 'run'}",
        "launch.backend=slurm",
    ]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert time.monotonic() - started < seconds + STARTUP_ALLOWANCE_S
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert refusal in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "sbatch-called").exists() and not (tmp_path / "run").exists()


def _config(tmp_path: Path, *overrides: str):
    return load_config(
        None,
        [
            f"run_dir={tmp_path / 'runs'}",
            "launch.backend=slurm",
            "launch.cpus_per_task=1",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "tracking.system_metrics=false",
            *overrides,
        ],
    )


@pytest.mark.slurm
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
def test_two_task_smoke_job_all_reduces_across_tasks(slurm_cluster, deadline, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the job's working directory
    run_dir = tmp_path / "runs"
    overrides = [
        "smoke",
        f"run_dir={run_dir}",
        "launch.backend=slurm",
        "launch.nproc=2",
        "launch.time=5",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.system_metrics=false",
    ]
    assert main(["submit", *overrides]) == 0
    out = capsys.readouterr().out
    job_id = re.search(r"submitted job (\d+)", out).group(1)
    log = Path(re.search(r"log: (\S+)", out).group(1))
    job = submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id, tasks=(0, 1))
    results = deadline(JOB_TIMEOUT_S).results(job)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["world_size"] == 2 and r["all_reduce"] == 3.0 and r["ok"] for r in results)
    assert results[0]["mlflow_run_id"] == results[1]["mlflow_run_id"] is not None
    assert log == run_dir / "submitit" / f"{job_id}_0_log.out" and '"rank": 0' in log.read_text()
    job_dir = run_dir  # the run directory is the job's identity; logs are per job id
    assert (job_dir / "mlflow_run_id").read_text().strip() == results[0]["mlflow_run_id"]
    assert load_config(job_dir / "config.yaml").run_dir == str(job_dir)


@pytest.mark.slurm
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
def test_preempted_job_is_requeued_and_resumes_its_state_and_mlflow_run(
    slurm_cluster, deadline, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    # A 60-minute limit makes submitit read the signal as a preemption; the first attempt holds 10 minutes.
    hold = ["launch.time=60", "launch.smoke_hold_s=600"]
    cfg = _config(tmp_path, "launch.nproc=2", *hold, "train.resume=none")
    job = submit("launch.smoke:smoke", cfg)
    job_dir = tmp_path / "runs"
    attempts = job_dir / "smoke_attempts.json"
    deadline(JOB_TIMEOUT_S).wait_for(attempts.is_file, "the first attempt's saved state")
    first_run_id = (job_dir / "mlflow_run_id").read_text().strip()
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # what SLURM sends before preempting

    results = deadline(JOB_TIMEOUT_S).results(job)
    assert [(r["rank"], r["attempt"], r["all_reduce"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
    assert {r["mlflow_run_id"] for r in results} == {first_run_id}
    assert [a["job_id"] for a in json.loads(attempts.read_text())] == [job.job_id, job.job_id]
    assert load_config(job_dir / "config.yaml").train.resume == "auto"  # what checkpoint() resubmitted
    assert "Requeued job" in job.paths.stderr.read_text() or "Requeued job" in job.paths.stdout.read_text()
    history = MlflowClient(cfg.tracking.uri).get_metric_history(first_run_id, "smoke/all_reduce")
    assert sorted(m.step for m in history) == [1, 2]


@pytest.mark.slurm
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
@pytest.mark.parametrize("cpus_per_task", [2, 0])  # 0: the whole node (--exclusive, --mem=0, every CPU)
def test_ray_cluster_inside_a_slurm_job(slurm_cluster, deadline, tmp_path, monkeypatch, cpus_per_task):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, f"launch.cpus_per_task={cpus_per_task}", "launch.time=10")
    job = submit("launch.ray_cluster:smoke", cfg, ray=True)
    (result,) = deadline(JOB_TIMEOUT_S).results(job)
    assert result["nodes"] == 1 and result["cpus"] == (cpus_per_task or len(os.sched_getaffinity(0)))
    assert result["address"].endswith(f":{20000 + int(job.job_id) % 20000}")


@pytest.mark.slurm
def test_a_job_sbatch_refuses_is_one_line_naming_the_reason(slurm_cluster, tmp_path, capsys):
    args = ["submit", "smoke", f"run_dir={tmp_path}", "launch.backend=slurm", "launch.partition=nope"]
    assert main(args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trajtok submit:")]
    assert "sbatch refused the job" in line and "invalid partition specified: nope" in line


@pytest.mark.slurm
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
def test_eval_job_splits_features_over_two_tasks_and_logs_under_the_training_run(
    slurm_cluster, deadline, synth_dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    tracking = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.system_metrics=false"]
    train_dir = write_weights(tmp_path / "train", step=7)
    with start_tracker(load_config(None, [f"run_dir={train_dir}", *tracking]), rank=0) as training:
        parent_id = training.run_id
    evaluation = [  # bare eval keys, as `trajtok eval` takes them
        f"ckpt={train_dir}",
        "task=retrieval",
        f"data.manifest={synth_dataset / 'manifest.jsonl'}",
        "data.num_workers=0",
        "eval.batch_size=5",
        "clip.frames=8",
        "clip.size=32",
        "clip.sampling=middle",
    ]
    run_dir = tmp_path / "eval"
    slurm = ["launch.backend=slurm", "launch.nproc=2", "launch.cpus_per_task=1", "launch.time=5"]
    assert main(["submit", "eval", *evaluation, f"run_dir={run_dir}", *tracking, *slurm]) == 0
    job_id = re.search(r"submitted job (\d+)", capsys.readouterr().out).group(1)
    job = submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id, tasks=(0, 1))
    assert deadline(JOB_TIMEOUT_S).results(job) == [0, 0]

    record = json.loads((run_dir / "eval_retrieval.json").read_text())
    assert record["world_size"] == 2 and record["details"]["videos"] == 24
    alone = load_config(None, [*expand_aliases(evaluation, EVAL_ALIASES), "tracking.enabled=false"])
    assert record["metrics"] == pytest.approx(evaluate(alone)["metrics"])  # the same as one process
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (child,) = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert child.info.status == "FINISHED" and child.data.metrics["eval/retrieval/t2v_R1"] == pytest.approx(
        record["metrics"]["t2v_R@1"]
    )
