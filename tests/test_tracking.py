"""MLflow tracking against the real stores: the default SQLite file and an `mlflow server` on loopback.

Each store gets the same story: a run is started in a run directory, logs metrics, artifacts, an image, text,
a dataset input and a nested evaluation run, is closed, and is then resumed from the run directory (as a
requeued job would) under the same run id. Everything is read back with a fresh MlflowClient.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from exported_runs import write_weights
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow_server import mlflow_server as serve

from trajtok.config import load_config, save_config
from trajtok.data.normalise import normalise_frames
from trajtok.errors import ConfigError
from trajtok.models.weights import WEIGHTS_FILE, load_weights
from trajtok.rundir import RUN_ID_FILE
from trajtok.tracking import NullTracker, Tracker, start_tracker, tracking_uri

SHARDS = [f"/data/shards/train-{i:06d}.tar" for i in range(3)]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on a free loopback port; yields its URI."""
    work = tmp_path_factory.mktemp("mlflow-server")
    with serve(f"sqlite:///{work / 'server.db'}", work / "art") as uri:
        yield uri


def _config(run_dir: Path, *overrides: str):
    return load_config(None, [f"run_dir={run_dir}", "train.lr=0.0003", *overrides])


def _log_a_run(cfg) -> tuple[str, str]:
    """A first attempt that logs one of everything, then a resumed attempt; returns (run id, child run id)."""
    with start_tracker(cfg, rank=0) as tracker:
        assert isinstance(tracker, Tracker)
        tracker.log_metrics({"train/loss": 2.0, "train/lr": 3e-4}, step=1)
        tracker.log_image(np.full((16, 24, 3), 200, np.uint8), "overlay", step=1)
        tracker.log_text("| R@1 | 0.5 |\n", "eval/report.md")
        note = Path(cfg.run_dir) / "note.txt"
        note.write_text("an artifact")
        tracker.log_artifact(note)
        tracker.log_dataset(SHARDS, "train-shards")
        with tracker.child("eval-retrieval") as child:
            child.log_metrics({"eval/r1": 0.5}, step=1)
        first_id, child_id = tracker.run_id, child.run_id
        time.sleep(1.5)  # at least one system-metrics sample (interval 1 s)
    with start_tracker(cfg, rank=0) as resumed:  # a requeued job: same run directory, same MLflow run
        assert resumed.run_id == first_id
        resumed.log_metrics({"train/loss": 1.0}, step=2)
    return first_id, child_id


def _check_run(client: MlflowClient, run_id: str, child_id: str, run_dir: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.0003" and run.data.params["run_dir"] == str(run_dir)
    assert run.data.tags[MLFLOW_GIT_COMMIT] and run.data.tags["run_dir"] == str(run_dir.resolve())
    history = client.get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    assert any(key.startswith("system/cpu") for key in run.data.metrics)
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "provenance.json", "note.txt", "eval", "images"} <= top
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/report.md"]
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "images"))
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "train-shards" and dataset_input.dataset.source_type == "local"
    assert {t.key: t.value for t in dataset_input.tags} == {"mlflow.data.context": "training", "files": "3"}
    child = client.get_run(child_id)
    assert child.data.tags[MLFLOW_PARENT_RUN_ID] == run_id and child.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's training pages
    assert child.data.metrics == {"eval/r1": 0.5}
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert {"config.yaml", "provenance.json"} <= {p.name for p in run_dir.iterdir()}


def test_sqlite_default_store_run_resume_and_read_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = _config(tmp_path / "run", "tracking.system_metrics_interval=1")
    assert tracking_uri(cfg.tracking) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    run_id, child_id = _log_a_run(cfg)
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()  # artifacts beside the db
    _check_run(MlflowClient(tracking_uri(cfg.tracking)), run_id, child_id, tmp_path / "run")


def test_mlflow_server_by_environment_variable(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = _config(tmp_path / "run", "tracking.system_metrics_interval=1", "tracking.experiment=served")
    run_id, child_id = _log_a_run(cfg)
    assert not (tmp_path / "mlflow.db").exists()
    _check_run(MlflowClient(mlflow_server), run_id, child_id, tmp_path / "run")


def test_other_ranks_and_disabled_tracking_log_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for tracker in (
        start_tracker(_config(tmp_path / "run"), rank=1),
        start_tracker(_config(tmp_path / "run", "tracking.enabled=false"), rank=0),
    ):
        assert type(tracker) is NullTracker and tracker.run_id is None
        with tracker, tracker.child("eval") as child:
            child.log_metrics({"loss": 1.0}, step=0)
            child.log_image(np.zeros((2, 2, 3), np.uint8), "overlay")
    assert not list(tmp_path.iterdir())


def test_a_run_id_the_store_does_not_know_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path / "run", "tracking.system_metrics=false")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_ID_FILE).write_text("0123456789abcdef0123456789abcdef\n")
    with pytest.raises(ConfigError, match=r"mlflow_run_id: cannot resume MLflow run 0123456789abcdef"):
        start_tracker(cfg, rank=0)


@pytest.mark.parametrize(
    ("store", "name"), [("sqlite", "trajvit2"), ("sqlite", "segmenter"), ("server", "vit3d")]
)
def test_the_logged_model_loads_by_uri_and_predicts_what_the_weights_do(
    store, name, mlflow_server, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = mlflow_server if store == "server" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = write_weights(tmp_path / "run", name=name)
    cfg = _config(run_dir, "tracking.system_metrics=false", f"tracking.experiment=models-{store}")
    with start_tracker(cfg, rank=0) as tracker:
        tracker.log_model(run_dir / WEIGHTS_FILE, save_config(cfg, run_dir), step=5, register=f"tiny-{name}")

    loaded = mlflow.pyfunc.load_model(f"runs:/{tracker.run_id}/model")
    clips = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    reference, _ = load_weights(run_dir / WEIGHTS_FILE)
    frames = normalise_frames(torch.from_numpy(clips).permute(0, 1, 4, 2, 3), torch.device("cpu"))
    with torch.no_grad():
        if name == "segmenter":
            out = reference.eval()(frames)
            expected = (out.seg_logits.argmax(-1).view(2, *out.seg_grid) + 1).numpy()
        else:
            expected = reference.eval().encode_video(frames).numpy()
    np.testing.assert_array_equal(loaded.predict(clips), expected)
    with pytest.raises(MlflowException, match="[Ss]hape"):  # the signature guards the clip size
        loaded.predict(clips[:, :, :16])

    registered = mlflow.pyfunc.load_model(f"models:/tiny-{name}/1")
    assert registered.unwrap_python_model().model.registry_name == name
    version = MlflowClient(uri).get_model_version(f"tiny-{name}", "1")
    assert version.run_id == tracker.run_id
