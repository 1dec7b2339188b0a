"""Real DeepSpeed training on CPU through `trajtok train`: 2 gloo processes on shards that `trajtok shard`
made from `trajtok synth` videos.

One uninterrupted ZeRO-2 run is the reference; a second run with the same settings is SIGKILLed (every
process: launcher, ranks, loader workers) after its step-8 checkpoint and started again, and must finish
on the same loss curve, with the same weights, in the same MLflow run.
"""

from __future__ import annotations

import contextlib
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from launch.cli import main as cli
from trajtok.config import load_config
from trajtok.data.normalise import normalise_frames
from trajtok.models.weights import WEIGHTS_FILE, load_weights
from trajtok.train.checkpoint import complete_checkpoints

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"
STEPS = 16


def _overrides(shards: str, run_dir: Path, db: Path, *extra: str) -> list[str]:
    return [
        f"data.shards={shards}",
        f"run_dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        "tracking.system_metrics=false",
        f"train.steps={STEPS}",
        "train.batch_size=4",
        "train.warmup_steps=2",
        "train.log_every=1",
        "train.checkpoint_every=4",
        "train.overlay_every=8",
        "data.samples_per_epoch=64",
        *extra,
    ]


def _train(*overrides: str) -> None:
    assert cli(["train", str(CONFIG), *overrides]) == 0


def _history(db: Path, run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """Metric by step; where a killed attempt and its resume both logged a step, the later value."""
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in points}


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture(scope="module")
def pipeline_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shards made as users make them: `trajtok synth`, then `trajtok shard` (a Ray job) on its manifest."""
    work = tmp_path_factory.mktemp("pipeline")
    trajtok = [sys.executable, "-m", "launch.cli"]
    synth = [
        "synth",
        f"synth.out={work / 'synth'}",
        "synth.videos=24",
        "synth.frames=8",
        "synth.height=72",
        "synth.width=96",
    ]
    shard = [
        "shard",
        str(CONFIG.parents[1] / "shard.yaml"),
        f"manifest={work / 'synth' / 'manifest.jsonl'}",
        f"out={work / 'shards'}",
        f"run_dir={work / 'run'}",
        "clip.frames=8",
        "clip.size=72",
        "pipeline.clips_per_shard=4",
        "tracking.enabled=false",
    ]
    for command in (synth, shard):
        done = subprocess.run([*trajtok, *command], capture_output=True, text=True, timeout=300, cwd=work)
        assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((work / "shards").glob("shard-*.tar"))) == 6
    return str(work / "shards" / "shard-*.tar")


@pytest.fixture(scope="module")
def reference_run(pipeline_shards: str, tracking_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted ZeRO-2 run, on shards the pipeline wrote, that the other tests compare with."""
    run_dir = tmp_path_factory.mktemp("reference")
    _train(*_overrides(pipeline_shards, run_dir, tracking_db, "train.zero_stage=2", "tracking.register=tiny"))
    return run_dir


def test_zero2_loss_falls_and_the_run_is_tracked(reference_run: Path, tracking_db: Path):
    losses = _history(tracking_db, reference_run)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    first, last = [losses[s] for s in (1, 2, 3, 4)], [losses[s] for s in range(STEPS - 3, STEPS + 1)]
    assert sum(last) / 4 < 0.85 * sum(first) / 4, losses

    client = mlflow.MlflowClient(f"sqlite:///{tracking_db}")
    run = client.get_run((reference_run / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED"
    for key in (
        "lr",
        "temperature",
        "samples_per_s",
        "samples_per_s_per_gpu",
        "data_wait_frac",
        "tokens_per_clip/mean",
        "tokens_per_clip/min",
        "tokens_per_clip/max",
        "memory_gib",
        "loss/contrastive",
        "loss/focal",
        "loss/dice",
        "data/skipped",
        "data/decode_ms_per_clip",
        "data/augment_ms_per_clip",
        "data/clips_per_s_per_worker",
        "epoch",
    ):
        assert f"train/{key}" in run.data.metrics, key
    assert run.data.metrics["train/samples_per_s"] == pytest.approx(
        2 * run.data.metrics["train/samples_per_s_per_gpu"]
    )
    assert run.data.params["train.zero_stage"] == "2"
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "train-shards"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "provenance.json", "train.log"} <= artifacts
    logged = (reference_run / "train.log").read_text()
    assert f"step {STEPS}/{STEPS}" in logged and f"trained {STEPS} steps" in logged
    assert "ms decode + " in logged and "clips/s per worker" in logged  # the loader's health, every line
    assert any("trajectories" in p for p in _all_artifacts(client, run.info.run_id)), "no overlay image"

    kept = [p.name for p in complete_checkpoints(reference_run)]
    assert kept == ["step-00000012", "step-00000016"]  # train.keep_checkpoints=2


def _all_artifacts(client: mlflow.MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _all_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_exported_weights_rebuild_the_model(reference_run: Path):
    model, metadata = load_weights(reference_run / WEIGHTS_FILE)
    assert metadata["step"] == str(STEPS) and model.registry_name == "trajvit2"
    assert model.logit_scale.log_scale.shape == ()  # the registry's shapes, not the engine's vectors
    with safe_open(str(reference_run / WEIGHTS_FILE), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    cfg = load_config(CONFIG)
    assert not torch.equal(
        model.state_dict()["video_head.proj.weight"], _fresh_state(cfg)["video_head.proj.weight"]
    )  # trained, not the initial weights
    out = model.eval()(torch.randn(2, 8, 3, 64, 64))
    assert out.video_embedding.shape == (2, model.video_head.proj.out_features)


def test_the_run_logs_and_registers_a_model_that_embeds_as_the_exported_weights(
    reference_run: Path, tracking_db: Path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracking_db}")
    run_id = (reference_run / "mlflow_run_id").read_text().strip()
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    clips = torch.randint(
        0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    exported, _ = load_weights(reference_run / WEIGHTS_FILE)
    with torch.no_grad():
        expected = exported.eval().encode_video(normalise_frames(clips.permute(0, 1, 4, 2, 3), "cpu"))
    assert torch.equal(torch.from_numpy(logged.predict(clips.numpy())), expected)
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'tiny'")
    assert version.run_id == run_id and int(version.version) == 1


def _fresh_state(cfg) -> dict[str, torch.Tensor]:
    from trajtok.models.registry import build_model

    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.clip).state_dict()


def _kill_everything(root: subprocess.Popen) -> None:
    """SIGKILL the launcher, its ranks (own sessions) and their loader workers at once: a crashed node."""
    parent = psutil.Process(root.pid)
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that exited on its own meanwhile
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)
    root.wait(timeout=30)


def test_killed_run_resumes_on_the_same_curve_and_mlflow_run(
    reference_run: Path, pipeline_shards: str, tracking_db: Path, tmp_path: Path
):
    run_dir = tmp_path / "killed"
    overrides = _overrides(pipeline_shards, run_dir, tracking_db, "train.zero_stage=2")
    first = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", str(CONFIG), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = run_dir / "checkpoints" / "step-00000008" / "state.json"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert first.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no step-8 checkpoint in time"
        time.sleep(0.05)
    _kill_everything(first)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert not (run_dir / WEIGHTS_FILE).exists()

    assert (run_dir / "writer.lock").is_file()  # left by the killed job

    _train(*overrides)  # train.resume=auto (the default): what a requeued job does

    assert "took over the lock" in (run_dir / "train.log").read_text()  # its writer was gone
    assert not (run_dir / "writer.lock").exists()
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    reference, resumed = _history(tracking_db, reference_run), _history(tracking_db, run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-5), step
    client = mlflow.MlflowClient(f"sqlite:///{tracking_db}")
    assert client.get_run(run_id).info.status == "FINISHED"
    runs = client.search_runs(
        [client.get_run(run_id).info.experiment_id], f"tags.run_dir = '{run_dir.resolve()}'"
    )
    assert [r.info.run_id for r in runs] == [run_id]
    with (
        safe_open(str(reference_run / WEIGHTS_FILE), "pt") as a,
        safe_open(str(run_dir / WEIGHTS_FILE), "pt") as b,
    ):
        for key in a.keys():  # noqa: SIM118 (a safetensors file, not a dict)
            assert torch.allclose(a.get_tensor(key), b.get_tensor(key), rtol=1e-4, atol=1e-6), key


def _kill_after_checkpoint(overrides: list[str], run_dir: Path, step: int) -> None:
    """Start `trajtok train`, and SIGKILL all of it once the step-`step` checkpoint is complete."""
    job = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "train", str(CONFIG), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = run_dir / "checkpoints" / f"step-{step:08d}" / "state.json"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert job.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, f"no step-{step} checkpoint in time"
        time.sleep(0.05)
    _kill_everything(job)


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_number_of_ranks(
    reference_run: Path, pipeline_shards: str, tracking_db: Path, tmp_path: Path, before: int, after: int
):
    """Elastic resume: ZeRO-2 state through DeepSpeed's universal form, the same global batch of the same
    samples (the run's read order), draws seeded by the step: the resumed steps repeat the uninterrupted
    run's losses, in the same MLflow run."""
    global_batch = 8
    ranks = lambda n: [f"launch.nproc={n}", f"train.batch_size={global_batch // n}"]  # noqa: E731
    same = ["train.zero_stage=2", "data.readers_per_step=2"]  # readers for 2 ranks, from the first start
    if before == 2:  # the reference run is this job uninterrupted (2 ranks, one reader each)
        reference = reference_run
    else:
        reference = tmp_path / "reference"
        _train(*_overrides(pipeline_shards, reference, tracking_db, *same, *ranks(1)))
    run_dir = tmp_path / "elastic"
    _kill_after_checkpoint(
        _overrides(pipeline_shards, run_dir, tracking_db, *same, *ranks(before)), run_dir, 8
    )
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    _train(*_overrides(pipeline_shards, run_dir, tracking_db, *same, *ranks(after)))

    logged = (run_dir / "train.log").read_text()
    assert (
        f"resumed from {run_dir / 'checkpoints' / 'step-00000008'} at step 8 (saved on {before} ranks)"
        in logged
    )
    assert (run_dir / "mlflow_run_id").read_text().strip() == run_id
    expected, resumed = _history(tracking_db, reference), _history(tracking_db, run_dir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed[9] == pytest.approx(expected[9], abs=1e-3)  # the first resumed step (measured: 2.4e-7)
    for step in range(10, STEPS + 1):  # and on: the reduction order differs, the arithmetic does not
        assert resumed[step] == pytest.approx(expected[step], abs=1e-4), step


def test_zero1_bf16_training_falls(pipeline_shards: str, tracking_db: Path, tmp_path: Path):
    run_dir = tmp_path / "zero1"
    _train(*_overrides(pipeline_shards, run_dir, tracking_db, "train.zero_stage=1", "train.precision=bf16"))
    losses = _history(tracking_db, run_dir)
    assert sum(losses[s] for s in range(STEPS - 3, STEPS + 1)) < 0.85 * sum(losses[s] for s in (1, 2, 3, 4))
    assert _history(tracking_db, run_dir, "train/memory_gib")[STEPS] > 0


@pytest.mark.parametrize("name", ["vit3d", "segmenter"])
def test_other_models_train_in_one_process(name: str, synthetic_shards, tmp_path: Path):
    run_dir = tmp_path / name
    _train(
        *_overrides(
            synthetic_shards.pattern,
            run_dir,
            tmp_path / "unused.db",
            f"model.name={name}",
            "train.zero_stage=0",
            "tracking.enabled=false",
            "train.steps=4",
            "launch.nproc=1",
        )
    )
    model, metadata = load_weights(run_dir / WEIGHTS_FILE)
    assert model.registry_name == name


def test_validation_and_pictures_of_fixed_held_out_clips_during_training(synthetic_shards, tmp_path: Path):
    run_dir, db = tmp_path / "validated", tmp_path / "mlflow.db"
    held_out = [
        f"train.eval_set={synthetic_shards.pattern}",
        "train.eval_every=2",
        "train.overlay_every=2",
        "train.picture_clips=2",
    ]
    _train(
        *_overrides(synthetic_shards.pattern, run_dir, db, "train.zero_stage=0", "launch.nproc=1"),
        "train.steps=4",
        *held_out,
    )
    history = _history(db, run_dir, "val/retrieval/t2v_R1")
    assert sorted(history) == [2, 4] and all(0 <= v <= 100 for v in history.values())
    assert "step 4 held-out: t2v_R1" in (run_dir / "train.log").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    pictures = sorted(p for p in _all_artifacts(client, run_id) if p.endswith(".png") and "trajectories" in p)
    assert len(pictures) == 2  # steps 2 and 4
    with Image.open(client.download_artifacts(run_id, pictures[0], str(tmp_path))) as first:
        # 2 clips x (frame, pseudo-label, prediction) rows of 4 frames, each upscaled to >= 192 px
        assert first.height >= 2 * 3 * 192 and first.width >= 4 * 192
    # validating and drawing leave training's random numbers alone: the same losses as a run without them
    plain = tmp_path / "plain"
    _train(
        *_overrides(synthetic_shards.pattern, plain, db, "train.zero_stage=0", "launch.nproc=1"),
        "train.steps=4",
    )
    assert _history(db, plain) == pytest.approx(_history(db, run_dir), rel=1e-6)


@pytest.mark.parametrize("shared_kv", [False, True])
def test_zero3_trains(synthetic_shards, tmp_path: Path, run_cli, shared_kv: bool):
    """ZeRO-3 re-gathers parameters for backward only through tensors it finds in module outputs (dicts),
    and gathers a module's weights only in its forward (the shared key/value read is one)."""
    run_dir = tmp_path / "zero3"
    overrides = _overrides(synthetic_shards.pattern, run_dir, tmp_path / "unused.db")
    zero3 = ["train.zero_stage=3", "tracking.enabled=false", "train.steps=2", "launch.nproc=1"]
    zero3.append(f"model.shared_kv={str(shared_kv).lower()}")
    proc = run_cli("train", str(CONFIG), *overrides, *zero3)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    model, metadata = load_weights(run_dir / WEIGHTS_FILE)
    assert metadata["step"] == "2" and model.registry_name == "trajvit2"
