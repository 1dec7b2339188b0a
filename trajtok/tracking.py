"""MLflow tracking for rank 0: one MLflow run per run directory, continued across requeues.

The run id is kept in `<run_dir>/mlflow_run_id`, so a job that SLURM requeues (same run directory) keeps
logging into the same run instead of starting a new one. A new run gets the flattened resolved config as
params, the git revision as a tag, and `config.yaml` plus `provenance.json` (git revision, Python and package
versions) as artifacts, also written to the run directory. Other ranks, and jobs with
`tracking.enabled=false`, get a `NullTracker` with the same methods, so callers never branch on rank.

Store: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else a SQLite file `mlflow.db` in the working directory.
Every call names its run id explicitly (MlflowClient), so a parent and its evaluation child runs can be logged
in any order; the fluent API is used only to start the top-level run, which is what runs the system-metrics
monitor (CPU, memory, GPU; needs psutil).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID
from mlflow.utils.time import get_current_time_millis

from trajtok.config import JobConfig, TrackingConfig, flatten, save_config, to_dict
from trajtok.errors import ConfigError
from trajtok.rundir import PROVENANCE_FILE, RUN_ID_FILE, read_run_id, write_json, write_run_id
from trajtok.tracking_outage import Outage

log = logging.getLogger(__name__)

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
# Distributions whose versions decide whether a run can be reproduced.
TRACKED_PACKAGES = (
    "trajtok", "torch", "deepspeed", "ray", "webdataset", "decord", "av", "numpy", "omegaconf", "mlflow",
    "submitit",
)


def tracking_uri(tracking: TrackingConfig) -> str:
    """`tracking.uri`, else MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db` (an absolute path)."""
    default = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    return tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def git_revision() -> dict[str, str]:
    """The commit of the source tree this package runs from, and whether it had uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # an installed wheel, or no git on the node
        return {}
    return {"commit": commit, "dirty": str(bool(status.strip())).lower()}


def provenance() -> dict[str, Any]:
    """What a rerun needs to match: git revision, Python and the versions of the packages that matter."""
    versions = {}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return {"git": git_revision(), "python": platform.python_version(), "packages": versions}


class NullTracker:
    """Stands in for `Tracker` on ranks other than 0 and when tracking is off: every call does nothing."""

    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, image: np.ndarray, name: str, step: int = 0) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def log_dataset(
        self, urls: Sequence[str], name: str, context: str = "training", content: str | None = None
    ) -> None:
        pass

    def log_model(self, weights: Path, config_file: Path, step: int, register: str = "") -> None:
        pass

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator[NullTracker]:
        yield self

    def close(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close("FAILED" if exc_type else "FINISHED")


class Tracker(NullTracker):
    """Logs into one MLflow run; made by `start_tracker` (top-level run) or `Tracker.child` (evaluations)."""

    def __init__(
        self,
        client: mlflow.MlflowClient,
        run_id: str,
        experiment_id: str,
        top_level: bool,
        outage: Outage | None = None,
    ) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self._top_level = top_level
        self._outage = outage  # a training run's calls outlive a server outage; others fail with it

    def _call(self, send: Callable[[], Any]) -> None:
        if self._outage is None:
            send()
        else:
            self._outage.call(send)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at a training step (names like `train/loss`, values anything `float()` takes)."""
        now = get_current_time_millis()
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if self._outage is None:
            self.client.log_batch(self.run_id, metrics=batch)
        else:
            self._outage.metrics(batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_image(self, image: np.ndarray, name: str, step: int = 0) -> None:
        """An (H, W, 3) uint8 image, kept per step so overlays can be compared over training."""
        self._call(lambda: self.client.log_image(self.run_id, image, key=name, step=step))

    def log_text(self, text: str, name: str) -> None:
        """A text artifact, e.g. a results table; `name` is its path in the run (`eval/report.md`)."""
        self._call(lambda: self.client.log_text(self.run_id, text, name))

    def log_dataset(
        self, urls: Sequence[str], name: str, context: str = "training", content: str | None = None
    ) -> None:
        """Record which files fed the run (shards, a manifest) as an MLflow dataset input: their location
        and a digest of `content` (what identifies the data; default: the list of URLs)."""
        if not urls:
            raise ValueError(f"dataset '{name}': no URLs to log")
        digest = hashlib.sha256(("\n".join(urls) if content is None else content).encode()).hexdigest()[:16]
        where = urls[0] if len(urls) == 1 else os.path.dirname(urls[0]) or "."  # one file, or their folder
        with warnings.catch_warnings():  # a local path matches two equivalent resolvers and MLflow warns
            warnings.simplefilter("ignore", UserWarning)
            try:
                source = resolve_dataset_source(where)
            except MlflowException:  # e.g. a `pipe:` URL: keep the text, typed as a plain location
                source = LocalArtifactDatasetSource(where)
        dataset = MetaDataset(source=source, name=name, digest=digest)
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context), InputTag("files", str(len(urls)))]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])

    def log_model(self, weights: Path, config_file: Path, step: int, register: str = "") -> None:
        """The trained model as this run's MLflow model (`trajtok.logged_model`), registered under
        `register` if given. Top-level runs only: MLflow logs models into the active run."""
        from trajtok.logged_model import log_trained_model  # torch and the model registry: only when asked

        active = mlflow.active_run()
        if not self._top_level or active is None or active.info.run_id != self.run_id:
            raise RuntimeError(f"run {self.run_id} is not the active MLflow run: cannot log a model into it")
        self._call(lambda: log_trained_model(weights, config_file, step, register))

    @contextlib.contextmanager
    def child(self, name: str) -> Iterator[Tracker]:
        """A nested run under this one (an evaluation), closed as FAILED if the block raises; it gets the
        source, user and git tags MLflow gives the runs it starts itself."""
        tags = resolve_tags({MLFLOW_PARENT_RUN_ID: self.run_id})
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        with Tracker(self.client, run.info.run_id, self.experiment_id, top_level=False) as child:
            yield child

    def close(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED); a requeued job reopens it from the run directory.
        While MLflow is unreachable the run stays open, and what was kept waits for the next job here."""
        if self._outage is not None and not self._outage.catch_up():
            log.warning(
                "MLflow at %s is still unreachable: the run stays open; the next job in this run directory "
                "sends the metrics kept in %s", self._outage.uri, self._outage.pending_file,
            )
            return
        if self._top_level:
            mlflow.end_run(status)
        else:
            self.client.set_terminated(self.run_id, status)


def _experiment_id(name: str, uri: str) -> str:
    """The experiment's id, creating it if needed; a SQLite store keeps its artifacts beside the database file
    (MLflow would otherwise put them under whatever directory the first job happened to start in)."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
    try:  # the kind tag opens the UI on its training-runs pages, not the GenAI ones MLflow 3 shows first
        return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:  # another job created it in the meantime
        return mlflow.get_experiment_by_name(name).experiment_id


def _open_run(cfg: JobConfig, run_dir: Path) -> Tracker:
    uri = tracking_uri(cfg.tracking)
    mlflow.set_tracking_uri(uri)
    id_file = run_dir / RUN_ID_FILE
    run_id = read_run_id(run_dir) or None
    system_metrics = cfg.tracking.system_metrics and importlib.util.find_spec("psutil") is not None
    if system_metrics:
        mlflow.set_system_metrics_sampling_interval(cfg.tracking.system_metrics_interval)
    experiment_id = _experiment_id(cfg.tracking.experiment, uri)
    try:
        run = mlflow.start_run(
            run_id=run_id,
            experiment_id=experiment_id,
            run_name=None if run_id else (cfg.tracking.run_name or run_dir.resolve().name),
            log_system_metrics=system_metrics,
        )
    except MlflowException as err:
        if run_id is None:
            raise
        raise ConfigError(f"{id_file}: cannot resume MLflow run {run_id} from {uri}: {err.message}") from None
    client, opened = mlflow.MlflowClient(), run.info.run_id
    outage = Outage(uri, run_dir, lambda metrics: client.log_batch(opened, metrics=metrics))
    tracker = Tracker(client, opened, experiment_id, top_level=True, outage=outage)
    if run_id is None:
        _describe_new_run(tracker, cfg, run_dir)
        write_run_id(run_dir, tracker.run_id)
    outage.catch_up()  # what an earlier job here kept during an outage
    return tracker


def _describe_new_run(tracker: Tracker, cfg: JobConfig, run_dir: Path) -> None:
    """Params, git tags and the provenance files, once per run (a resumed run keeps its first description)."""
    params = [Param(key, json.dumps(value) if isinstance(value, list | dict) else str(value))
              for key, value in flatten(to_dict(cfg)).items()]
    info = provenance()
    tags = [RunTag("run_dir", str(run_dir.resolve()))]
    if info["git"]:
        tags += [RunTag(MLFLOW_GIT_COMMIT, info["git"]["commit"]), RunTag("git_dirty", info["git"]["dirty"])]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        batch_tags = tags if start == 0 else ()
        tracker.client.log_batch(tracker.run_id, params=params[start : start + 100], tags=batch_tags)
    tracker.log_artifact(save_config(cfg, run_dir))
    tracker.log_artifact(write_json(run_dir / PROVENANCE_FILE, info))


def start_tracker(cfg: JobConfig, rank: int, run_dir: str | Path | None = None) -> Tracker | NullTracker:
    """Rank 0's tracker for `run_dir` (default `cfg.run_dir`), new or resumed; a `NullTracker` elsewhere."""
    if rank != 0 or not cfg.tracking.enabled:
        return NullTracker()
    run_dir = Path(run_dir or cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return _open_run(cfg, run_dir)
