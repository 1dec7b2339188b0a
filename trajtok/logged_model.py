"""The trained model as an MLflow model, so MLflow users load, register and promote it by URI.

A raw weights artifact cannot be loaded with `mlflow.pyfunc.load_model`, shown on a model page or given an
alias. The logged model holds the exported `weights.safetensors` (which carries its registry config) and
the run's `config.yaml`; loading rebuilds our registry model with `load_weights`. Nothing is pickled: the
model is logged from code (`logged_model_code.py` names the wrapper below), so it loads wherever trajtok
is installed. `predict` takes uint8 clips (B, T, H, W, 3) as the loader gives them and returns video
embeddings (trajvit2, vit3d) or each clip's hard trajectory ids (segmenter); `unwrap_python_model().model`
is the torch module itself (`encode_text`, the segmenter, ...).

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")      # or models:/<name>@<alias>
    embeddings = model.predict(clips)                              # (B, D) float32
    module = model.unwrap_python_model().model                     # our registry model, eval mode
"""

from __future__ import annotations

import importlib.metadata
import json
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec
from safetensors import safe_open

from trajtok.data.normalise import normalise_frames
from trajtok.models.weights import load_weights

MODEL_NAME = "model"  # the logged model's name in its run: runs:/<run id>/model
MODEL_CODE = str(Path(__file__).with_name("logged_model_code.py"))
# What rebuilding the model imports, besides trajtok itself (the wrapper and the registry are ours, so the
# model loads where trajtok is installed); listed rather than inferred, because MLflow infers them by
# loading the model in a subprocess (tens of seconds).
REQUIREMENTS = ("torch", "safetensors", "numpy", "omegaconf", "pyyaml", "deepspeed", "mlflow")


class TrajTokModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper over an exported weights file; see the module docstring for what it predicts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model, self.metadata = load_weights(context.artifacts["weights"])
        self.model.eval()

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray, params: object = None
    ) -> np.ndarray:
        device = next(self.model.parameters()).device
        frames = torch.from_numpy(np.ascontiguousarray(model_input)).permute(0, 1, 4, 2, 3)
        with torch.no_grad():
            frames = normalise_frames(frames, device)
            if hasattr(self.model, "encode_video"):
                return self.model.encode_video(frames).float().cpu().numpy()
            out = self.model(frames)
            return out.trajectory_ids(len(frames)).to(torch.int32).cpu().numpy()


def signature(weights: Path) -> ModelSignature:
    """Input: uint8 clips at the training clip's frame count and crop size, channels last."""
    with safe_open(str(weights), framework="pt") as f:
        clip = json.loads(f.metadata()["clip"])
    shape = (-1, clip["frames"], clip["size"], clip["size"], 3)
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]))


def requirements() -> list[str]:
    """`REQUIREMENTS` pinned to the versions this process runs with (those not installed left out)."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned


def log_trained_model(weights: Path, config_file: Path, step: int, register: str = "") -> ModelInfo:
    """Log `weights` (and `config_file`) as the active run's MLflow model; `register`: also register it
    under that name (a new version each time)."""
    with warnings.catch_warnings():  # an example clip would be megabytes of JSON: the signature says it
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=MODEL_CODE,
            artifacts={"weights": str(weights), "config": str(config_file)},
            signature=signature(weights),
            pip_requirements=requirements(),
            registered_model_name=register or None,
            step=step,
        )
