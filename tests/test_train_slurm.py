"""DeepSpeed training as a real SLURM job (the session's one-node cluster on loopback, see conftest).

A 2-task job killed after its first checkpoint and submitted again with the same command resumes from it
in the same MLflow run (the run directory, not the job id, is the job's identity); a job preempted (USR2 or
TERM) after its first checkpoint saves the step it is in, is requeued by submitit's `checkpoint()`, and its
second attempt resumes from that step in the same MLflow run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import submitit
from exported_runs import write_weights
from mlflow import MlflowClient

from launch.cli import main
from launch.slurm import submit
from trajtok.config import SynthConfig, load_config
from trajtok.data.synth import write_dataset
from trajtok.models.weights import WEIGHTS_FILE
from trajtok.train.checkpoint import complete_checkpoints

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"
VLM_CONFIG = CONFIG.parent / "trajvlm-tiny.yaml"
JOB_TIMEOUT_S = 300


def _overrides(shards: str, tmp_path: Path, steps: int) -> list[str]:
    return [
        f"data.shards={shards}",
        f"run_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.system_metrics=false",
        f"train.steps={steps}",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "data.samples_per_epoch=64",
        "launch.backend=slurm",
        "launch.nproc=2",
        "launch.cpus_per_task=1",
    ]


def _losses(tmp_path: Path, job_dir: Path) -> dict[int, float]:
    run_id = (job_dir / "mlflow_run_id").read_text().strip()
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "train/loss")
    return {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


def _submitted(capsys: pytest.CaptureFixture, args: list[str], run_dir: Path) -> submitit.SlurmJob:
    assert main(args) == 0
    job_id = re.search(r"submitted job (\d+)", capsys.readouterr().out).group(1)
    return submitit.SlurmJob(folder=run_dir / "submitit", job_id=job_id, tasks=(0, 1))


@pytest.mark.slurm
@pytest.mark.timeout(2 * JOB_TIMEOUT_S + 60)
def test_a_killed_job_resubmitted_with_the_same_command_resumes_in_the_same_run(
    slurm_cluster, deadline, synthetic_shards, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs"
    args = [
        "submit",
        "train",
        str(CONFIG),
        *_overrides(synthetic_shards.pattern, tmp_path, steps=12),
        "launch.time=0:10:00",
    ]
    first = _submitted(capsys, args, run_dir)
    deadline(JOB_TIMEOUT_S).wait_for(
        (run_dir / "checkpoints" / "step-00000004" / "state.json").is_file, "the first checkpoint"
    )
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    subprocess.run(["scancel", first.job_id], check=True)  # a kill: nothing is requeued
    deadline(JOB_TIMEOUT_S).wait_for(first.done, f"job {first.job_id} to end")

    second = _submitted(capsys, args, run_dir)  # the same command again
    assert second.job_id != first.job_id
    assert deadline(JOB_TIMEOUT_S).results(second) == [0, 0]
    logs = second.paths.stdout.read_text() + second.paths.stderr.read_text()
    resumed = re.findall(r"resumed from \S+step-(\d+) at step (\d+)", logs)
    assert resumed and int(resumed[0][1]) >= 4, logs[-3000:]
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id  # the same MLflow run
    assert [p.name for p in complete_checkpoints(run_dir)][-1] == "step-00000012"
    assert (run_dir / "checkpoints" / "step-00000012" / "rng-rank1.pt").is_file()  # both tasks saved
    assert (run_dir / WEIGHTS_FILE).is_file()
    assert sorted(_losses(tmp_path, run_dir)) == list(range(1, 13))


def _vlm_job(tmp_path: Path) -> tuple[Path, list[str]]:
    """TrajVLM's config and what it reads: a small synthetic QA set and tiny vision and segmenter runs."""
    qa = write_dataset(
        SynthConfig(out=str(tmp_path / "qa"), videos=8, frames=16, height=32, width=32, questions=True)
    )
    runs = {name: write_weights(tmp_path / name, name) for name in ("vit3d", "segmenter")}
    settings = [f"data.manifest={qa}", "clip.frames=16", "clip.size=32", "data.num_workers=0"]
    settings += [f"model.vlm.vision={runs['vit3d']}", f"model.vlm.segmenter={runs['segmenter']}"]
    return VLM_CONFIG, settings


@pytest.mark.slurm
@pytest.mark.timeout(JOB_TIMEOUT_S + 60)
@pytest.mark.parametrize(
    ("signal_name", "model", "steps"),
    [("USR2", "trajvit2", 40), ("TERM", "trajvit2", 40), ("USR2", "trajvlm", 150)],
)
def test_preempted_training_checkpoints_where_it_stops_requeues_and_resumes_there(
    slurm_cluster, deadline, synthetic_shards, tmp_path, monkeypatch, signal_name, model, steps
):
    monkeypatch.chdir(tmp_path)
    config, settings = _vlm_job(tmp_path) if model == "trajvlm" else (CONFIG, [])
    # A 60-minute limit makes submitit read USR2 as a preemption (requeue) rather than a timeout.
    overrides = [*_overrides(synthetic_shards.pattern, tmp_path, steps=steps), *settings, "launch.time=60"]
    job = submit("trajtok.train.loop:main", load_config(config, overrides))
    job_dir = tmp_path / "runs"
    first_checkpoint = job_dir / "checkpoints" / "step-00000004" / "state.json"
    deadline(JOB_TIMEOUT_S).wait_for(first_checkpoint.is_file, "the first checkpoint")
    run_id = (job_dir / "mlflow_run_id").read_text().strip()
    # USR2: what SLURM sends before a time limit or preemption; TERM: what it sends at the end
    subprocess.run(["scancel", f"--signal={signal_name}", job.job_id], check=True)

    assert deadline(JOB_TIMEOUT_S).results(job) == [0, 0]
    logs = job.paths.stdout.read_text() + job.paths.stderr.read_text()
    assert "Requeued job" in logs
    stopped = re.findall(rf"SIG{signal_name}: stopped at step (\d+) with its checkpoint", logs)
    resumed = re.findall(r"resumed from \S+step-(\d+) at step (\d+)", logs)
    assert stopped and resumed, logs[-3000:]
    assert resumed[-1] == (f"{int(stopped[0]):08d}", stopped[0])  # not back at a periodic checkpoint
    assert (job_dir / "mlflow_run_id").read_text().strip() == run_id
    assert sorted(_losses(tmp_path, job_dir)) == list(range(1, steps + 1))
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).info.status == "FINISHED"
    assert load_config(job_dir / "config.yaml").train.resume == "auto"
    assert (job_dir / WEIGHTS_FILE).is_file()
