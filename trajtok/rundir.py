"""The run directory (DESIGN §3): the files every job leaves in `run_dir`, and the one way they are written.

    config.yaml          the resolved config: the run can be repeated from its directory alone
    provenance.json      git revision, Python and package versions of the first attempt
    mlflow_run_id        the MLflow run this directory logs to; a rerun of the same directory resumes it
    train.log            what rank 0 logged (trajtok.train.loop)
    checkpoints/         DeepSpeed and training state, the last k kept (trajtok.train.checkpoint)
    weights.safetensors  the trained model with its configs (trajtok.models.weights)
    eval_<task>.json     an evaluation's record (trajtok.eval.run); eval/ holds evaluation runs of it

Every file is replaced atomically (written beside its target, then renamed over it), so a job killed while
writing leaves the previous version, never half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
PROVENANCE_FILE = "provenance.json"
RUN_ID_FILE = "mlflow_run_id"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error,
    removed when it raises. The parent folder is created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Replace `path` with `text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int = 1) -> Path:
    """Replace `path` with `value` as JSON (one trailing newline), atomically."""
    return write_text(path, json.dumps(value, indent=indent) + "\n")


def read_run_id(run_dir: str | Path) -> str:
    """The MLflow run id kept in `run_dir`, "" when it has none."""
    path = Path(run_dir) / RUN_ID_FILE
    return path.read_text().strip() if path.is_file() else ""


def write_run_id(run_dir: str | Path, run_id: str) -> Path:
    """Keep the MLflow run id in `run_dir`, so a rerun of the same directory resumes that run."""
    return write_text(Path(run_dir) / RUN_ID_FILE, run_id + "\n")
