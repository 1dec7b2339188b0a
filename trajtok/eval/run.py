"""`trajtok eval`: score exported weights (or any feature module) on one task, write JSON, log to MLflow.

`main(cfg)` is one rank of the job (`launch.nproc` local processes, or one in-process). Features are computed
across ranks (`trajtok.eval.features`), every rank holds the gathered arrays, rank 0 scores them, writes
`<eval.out or run_dir>/eval_<task>.json` and logs params, metrics and that file to MLflow: as a run nested
under the training run when the checkpoint's directory holds its `mlflow_run_id`, else as the run of this
job's run directory. Metrics are logged at the checkpoint's training step, so evaluations of successive
checkpoints line up with the training curves.

Tasks:
- `retrieval`: text-to-video and video-to-text R@1/5/10, median and mean rank over the set's captions (several
  per video, or joined into one paragraph); dual-softmax numbers separately, under `dsl_`, when asked.
- `classify`: zero-shot, each class embedded as the mean of its prompt templates.
- `segment`: the model's hard trajectories against the clips' label maps (VEQ, STQ, purity, ...), and the
  number of trajectories per clip.
- `probe`: linear, attentive and TrajAdapter heads on the same frozen feature maps (`trajtok.eval.probe`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pkgutil
import re
import time
from collections.abc import Iterator
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torch.distributed as dist
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from torch import nn

from trajtok.config import JobConfig, ModelConfig, flatten, to_dict
from trajtok.data.normalise import normalise_frames
from trajtok.data.qa import QAItem, read_qa
from trajtok.data.shard_urls import expand_shards
from trajtok.distributed import get_rank, get_world_size, init_process_group
from trajtok.errors import ConfigError
from trajtok.eval.classify import class_embeddings, classification_metrics
from trajtok.eval.evalset import EvalClips, EvalItem, QAClips, read_items
from trajtok.eval.features import Compute, compute_in_batches
from trajtok.eval.pictures import prediction_picture
from trajtok.eval.probe import compare_heads
from trajtok.eval.retrieval import chance_recall_at_1, dual_softmax, retrieval_metrics
from trajtok.eval.segmentation import SegmentationScores, evaluate_segmentation
from trajtok.models.feature_maps import feature_map_fn
from trajtok.models.hf_features import PREFIX as HF_PREFIX
from trajtok.models.hf_features import load_hf_feature_map
from trajtok.models.registry import VLM_NAMES
from trajtok.models.text import build_tokenizer
from trajtok.models.trajectory_encoder import MAX_TOKENS_PER_TRAJECTORY
from trajtok.models.trajectory_reader import (
    SEGMENTING_MODELS,
    ForeignTrajectories,
    load_segmenting_model,
    trajectories_on_grid,
)
from trajtok.models.vlm import QATokenizer
from trajtok.models.weights import config_from_metadata, load_weights, weights_file
from trajtok.rundir import read_run_id, write_json
from trajtok.tracking import NullTracker, Tracker, start_tracker, tracking_uri

log = logging.getLogger("trajtok.eval")

TASKS = ("retrieval", "classify", "segment", "probe", "qa")
PROBE_MASKS = ("hard", "coverage")
PICTURE_CLIPS = 4  # clips the segment task draws: frame | label map | prediction
PICTURE_KEY = "picture"  # a task's picture in its record: logged as an image, not written to the JSON
_METRIC_KEY = re.compile(r"[^\w./ :-]")  # characters MLflow refuses in a metric name


class Evaluation:
    """One evaluation job's shared state: config, device, and the model (loaded once, when first needed)."""

    def __init__(
        self,
        cfg: JobConfig,
        device: torch.device,
        loaded: tuple[nn.Module, dict[str, str]] | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        """`loaded`: a model already in memory and its weights-file metadata (validation during training,
        in the engine's `dtype`); by default `eval.ckpt` is loaded when first needed."""
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self._loaded = loaded

    def _load(self) -> tuple[nn.Module, dict[str, str]]:
        if self._loaded is None:
            model, metadata = load_eval_model(self.cfg.eval.ckpt, self.cfg.eval.tokens_per_trajectory)
            self._loaded = model.to(self.device), metadata
        return self._loaded

    @property
    def model(self) -> nn.Module:
        return self._load()[0]

    @property
    def model_cfg(self) -> ModelConfig:
        return config_from_metadata(ModelConfig, self._load()[1], "model", self.cfg.eval.ckpt)

    @property
    def metadata(self) -> dict[str, str]:
        """The weights file's metadata; empty when no model was loaded (a probe of a feature module)."""
        return self._loaded[1] if self._loaded else {}

    def clips(self, items: list[EvalItem], with_labels: bool = False) -> EvalClips:
        return EvalClips(items, self.cfg.clip, with_labels=with_labels)

    def compute(self, data: Any, compute: Compute, desc: str) -> np.ndarray | tuple[np.ndarray, ...]:
        batch, workers = self.cfg.eval.batch_size, self.cfg.data.num_workers
        texts = not isinstance(data, EvalClips)  # captions: nothing to decode, no worker processes
        return compute_in_batches(data, compute, batch, 0 if texts else workers, desc)

    def video_embeddings(self, items: list[EvalItem]) -> np.ndarray:
        model = self.model
        return self.compute(
            self.clips(items),
            lambda b: model.encode_video(normalise_frames(b["frames"], self.device, self.dtype)).float(),
            "videos",
        )

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        model, model_cfg = self.model, self.model_cfg
        tokenizer = build_tokenizer(model_cfg.text_tokenizer)

        def encode(batch: list[str]) -> torch.Tensor:
            ids, mask = tokenizer.encode_batch(batch, model_cfg.text_max_len)
            return model.encode_text(ids.to(self.device), mask.to(self.device)).float()

        return self.compute(texts, encode, "texts")


def resolve_checkpoint(ckpt: str) -> tuple[Path, str]:
    """The weights file `eval.ckpt` names (a file, or a run directory holding `weights.safetensors`), and the
    MLflow run id kept beside it ("" when there is none)."""
    if not ckpt:
        raise ConfigError("eval.ckpt: name exported weights (.safetensors) or a training run directory")
    weights = weights_file(ckpt, "eval.ckpt")
    return weights, read_run_id(weights.parent)


def load_eval_model(ckpt: str, tokens_per_trajectory: int = 0) -> tuple[nn.Module, dict[str, str]]:
    """The exported model in eval mode, and its file's metadata (registry config, step)."""
    weights, _ = resolve_checkpoint(ckpt)
    model, metadata = load_weights(weights)
    if tokens_per_trajectory:
        if not 1 <= tokens_per_trajectory <= MAX_TOKENS_PER_TRAJECTORY:
            raise ConfigError(
                f"eval.tokens_per_trajectory {tokens_per_trajectory}: expected 1..{MAX_TOKENS_PER_TRAJECTORY}"
            )
        if getattr(model, "registry_name", "") != "trajvit2":
            raise ConfigError(
                f"eval.tokens_per_trajectory: only trajvit2 has it, {weights} holds {model.registry_name}"
            )
        model.tokenizer.encoder.eval_tokens_per_trajectory = tokens_per_trajectory
    return model.eval(), metadata


def eval_location(cfg: JobConfig) -> str:
    """The evaluation set: `data.manifest` or `data.eval_shards` (exactly one)."""
    if cfg.data.manifest and cfg.data.eval_shards:
        raise ConfigError("data.manifest and data.eval_shards are both set; evaluation reads one of them")
    return cfg.data.manifest or cfg.data.eval_shards


def caption_list(items: list[EvalItem], join: bool) -> tuple[list[str], np.ndarray]:
    """Every caption with the index of its video; `join`: one paragraph per video."""
    if join:
        return [" ".join(item.captions) for item in items], np.arange(len(items))
    texts = [caption for item in items for caption in item.captions]
    owners = np.repeat(np.arange(len(items)), [len(item.captions) for item in items])
    return texts, owners


def class_targets(items: list[EvalItem], classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """Class index of each clip from its `label` (a class name or an index into `classes`), and the classes:
    `classes` as given, or the sorted distinct labels."""
    missing = [item.key for item in items if item.label is None]
    if missing:
        raise ConfigError(
            f"clip {missing[0]} (and {len(missing) - 1} more) has no 'label' to classify against"
        )
    classes = list(classes) or sorted({str(item.label) for item in items})
    index = {name: i for i, name in enumerate(classes)}
    targets = []
    for item in items:
        label = item.label
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            targets.append(label)
        elif str(label) in index:
            targets.append(index[str(label)])
        else:
            raise ConfigError(f"clip {item.key}: label {label!r} is not one of the {len(classes)} classes")
    return np.asarray(targets, dtype=np.int64), classes


def run_retrieval(job: Evaluation, items: list[EvalItem]) -> dict[str, Any]:
    texts, owners = caption_list(items, job.cfg.eval.join_captions)
    similarity = job.text_embeddings(texts) @ job.video_embeddings(items).T
    metrics = retrieval_metrics(similarity, owners)
    if job.cfg.eval.dual_softmax:
        metrics.update(
            {f"dsl_{k}": v for k, v in retrieval_metrics(dual_softmax(similarity), owners).items()}
        )
    details = {"videos": len(items), "captions": len(texts), "chance_R@1": chance_recall_at_1(len(items))}
    return {"metrics": metrics, "details": details}


def run_classify(job: Evaluation, items: list[EvalItem]) -> dict[str, Any]:
    targets, classes = class_targets(items, job.cfg.eval.classes)
    class_embeds = class_embeddings(classes, job.cfg.eval.templates, job.text_embeddings)
    metrics = classification_metrics(job.video_embeddings(items), class_embeds, targets)
    details = {"videos": len(items), "classes": classes, "chance_top1": 100.0 / len(classes)}
    return {"metrics": metrics, "details": details}


def run_segment(job: Evaluation, items: list[EvalItem]) -> dict[str, Any]:
    model = job.model
    if job.model_cfg.name not in ("trajvit2", "segmenter"):
        raise ConfigError(f"task segment: model '{job.model_cfg.name}' makes no trajectories")

    def scores(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(normalise_frames(batch["frames"], job.device))
        ids = out.trajectory_ids(len(batch["frames"]))
        pairs = zip(ids.cpu().numpy(), batch["labels"].numpy())
        return torch.tensor([astuple(evaluate_segmentation(p, g)) for p, g in pairs], dtype=torch.float64)

    table = job.compute(job.clips(items, with_labels=True), scores, "segmentation")
    names = [f.name for f in fields(SegmentationScores)]
    per_clip = dict(zip(names, table.T))
    counts = per_clip["num_trajectories"].astype(int)
    metrics = {name: float(values.mean()) for name, values in per_clip.items()}
    metrics["median_trajectories"] = float(np.median(counts))
    details = {
        "clips": len(items),
        "trajectories_per_clip": dict(zip([i.key for i in items], counts.tolist())),
    }
    if get_rank() != 0:  # rank 0 logs the picture
        return {"metrics": metrics, "details": details}
    shown = job.clips(items[:PICTURE_CLIPS], with_labels=True)
    samples = [shown[i] for i in range(len(shown))]
    picture = prediction_picture(
        model,
        torch.stack([s["frames"] for s in samples]),
        torch.stack([s["labels"] for s in samples]),
        job.device,
    )
    return {"metrics": metrics, "details": details, PICTURE_KEY: picture}


def run_probe(job: Evaluation, items: list[EvalItem]) -> dict[str, Any]:
    probe = job.cfg.eval.probe
    if not probe.train:
        raise ConfigError("eval.probe.train: name the manifest or shards the probing heads learn from")
    train_items = read_items(probe.train)
    train_targets, classes = class_targets(train_items, job.cfg.eval.classes)
    test_targets, _ = class_targets(items, classes)
    if probe.feature_module:
        source, extractor = probe.feature_module, _feature_module(probe.feature_module).to(job.device).eval()
        feature_map = feature_map_fn(extractor)
    else:
        source, feature_map = job.cfg.eval.ckpt, feature_map_fn(job.model)
    if probe.masks not in PROBE_MASKS:
        raise ConfigError(f"eval.probe.masks '{probe.masks}': choose one of {', '.join(PROBE_MASKS)}")
    segmenter = _probe_segmenter(job) if "trajadapter" in probe.heads else None
    coverage = probe.masks == "coverage"

    def inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        frames = normalise_frames(batch["frames"], job.device)
        features = feature_map(frames).float()
        if segmenter is None:
            return features
        grid = tuple(features.shape[1:4])
        found = trajectories_on_grid(segmenter, frames, grid, probe.chunk_frames, probe.link_iou, coverage)
        return features, found.ids, found.queries.float(), *([found.coverage] if coverage else [])

    train = job.compute(job.clips(train_items), inputs, "probe train features")
    test = job.compute(job.clips(items), inputs, "probe test features")
    trajectories = None
    if segmenter is not None:
        (train, *train_found), (test, *test_found) = train, test
        grid = tuple(train.shape[1:4])
        trajectories = tuple(
            ForeignTrajectories.from_ids(
                *map(torch.from_numpy, found[:2]), grid, *map(torch.from_numpy, found[2:])
            )
            for found in (train_found, test_found)
        )
    details = {
        "features": source,
        "feature_shape": list(train.shape[1:]),
        "segmenter": probe.segmenter or (job.cfg.eval.ckpt if segmenter is not None else ""),
        "train_clips": len(train_items),
        "test_clips": len(items),
        "classes": classes,
        "chance_top1": 100.0 / len(classes),
    }
    if trajectories is not None:
        details["trajectories_per_clip"] = float(trajectories[1].present.sum(dim=1).double().mean())
    if get_rank() != 0:  # the heads are small: rank 0 trains them on the gathered features
        return {"metrics": {}, "details": details}
    results = compare_heads(
        train, train_targets, test, test_targets, len(classes), probe, job.cfg.seed, trajectories
    )
    metrics = {f"{r.head}_{k}": getattr(r, k) for r in results for k in ("top1", "top5")}
    details["heads"] = [r.as_dict() for r in results]
    return {"metrics": metrics, "details": details}


def _probe_segmenter(job: Evaluation) -> nn.Module:
    """The segmenter TrajAdapter's trajectories come from: eval.probe.segmenter, else the probed model
    when it segments."""
    location = job.cfg.eval.probe.segmenter
    if location:
        return load_segmenting_model(location, "eval.probe.segmenter").to(job.device)
    if job.cfg.eval.ckpt and job.model_cfg.name in SEGMENTING_MODELS:
        return job.model
    raise ConfigError(
        "eval.probe.segmenter: TrajAdapter needs a trained segmenter or trajvit2 run to segment the frames "
        "(or drop trajadapter from eval.probe.heads)"
    )


def _feature_module(spec: str) -> nn.Module:
    if spec.startswith(HF_PREFIX):
        return load_hf_feature_map(spec, "eval.probe.feature_module")
    try:
        factory = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"eval.probe.feature_module '{spec}': cannot be imported ({err})") from None
    module = factory()
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"eval.probe.feature_module '{spec}': returned {type(module).__name__}, not a torch module"
        )
    return module


def run_qa(job: Evaluation, items: list[QAItem]) -> dict[str, Any]:
    """Exact-match accuracy of a VLM's greedy answers (case and surrounding space ignored), per question
    type, and the LLM tokens each video took."""
    model_cfg = job.model_cfg
    if model_cfg.name not in VLM_NAMES:
        raise ConfigError(
            f"task qa: model '{model_cfg.name}' answers no questions (a trajvlm or patchvlm run)"
        )
    model, vlm = job.model, model_cfg.vlm
    tokenizer = QATokenizer(vlm.tokenizer)

    def answers(batch: dict[str, Any]) -> torch.Tensor:
        frames = normalise_frames(batch["frames"], job.device, job.dtype)
        ids, mask = tokenizer.prompts(batch["question"], vlm.max_text_tokens)
        out, video_tokens = model.answer(frames, ids.to(job.device), mask.to(job.device), vlm.answer_tokens)
        return torch.cat([out, video_tokens[:, None]], dim=1)

    table = job.compute(QAClips(items, job.cfg.clip), answers, "answers")
    predicted = [tokenizer.answer(row[:-1].tolist()) for row in table]
    right = np.array([p.lower() == item.answer.strip().lower() for p, item in zip(predicted, items)])
    kinds = np.array([item.question_type for item in items])
    metrics = {"accuracy": 100.0 * float(right.mean())}
    metrics.update({f"accuracy/{k}": 100.0 * float(right[kinds == k].mean()) for k in sorted(set(kinds))})
    metrics["llm_video_tokens"] = float(table[:, -1].mean())
    details = {
        "questions": len(items),
        "per_type": {k: int((kinds == k).sum()) for k in sorted(set(kinds))},
        "answers": [
            {"key": item.key, "question": item.question, "answer": item.answer, "predicted": p}
            for item, p in zip(items, predicted)
        ],
    }
    return {"metrics": metrics, "details": details}


RUNNERS = {
    "retrieval": run_retrieval,
    "classify": run_classify,
    "segment": run_segment,
    "probe": run_probe,
    "qa": run_qa,
}


def check_evaluation(cfg: JobConfig) -> None:
    """Refuse a task or an eval set this module cannot run, before anything is read or logged."""
    if cfg.eval.task not in RUNNERS:
        raise ConfigError(f"eval.task '{cfg.eval.task}': choose one of {', '.join(TASKS)}")
    if not eval_location(cfg):
        raise ConfigError("data.manifest or data.eval_shards: name the evaluation set")


def check_submission(cfg: JobConfig) -> None:
    """`submit eval` on the submit host: the task, the weights and the evaluation set (read), so a job
    bound to fail is refused before its queue wait."""
    check_evaluation(cfg)
    if cfg.eval.ckpt or not cfg.eval.probe.feature_module:
        resolve_checkpoint(cfg.eval.ckpt)
    _read_set(cfg)


def _read_set(cfg: JobConfig) -> list[EvalItem] | list[QAItem]:
    """The evaluation set: questions for `qa`, clips for the other tasks."""
    return read_qa(eval_location(cfg)) if cfg.eval.task == "qa" else read_items(eval_location(cfg))


def evaluate(cfg: JobConfig, device: torch.device | None = None) -> dict[str, Any]:
    """Run `cfg.eval.task` and return its record (metrics, details, protocol, model); see the module doc."""
    check_evaluation(cfg)
    task = cfg.eval.task
    job = Evaluation(cfg, device or torch.device("cpu"))
    items = _read_set(cfg)
    start = time.perf_counter()
    result = RUNNERS[task](job, items)
    model_cfg = json.loads(job.metadata["model"]) if job.metadata else None
    return {
        "task": task,
        **result,
        "protocol": {"clip": to_dict(cfg.clip), **_protocol(cfg)},
        "data": eval_location(cfg),
        "model": {"ckpt": cfg.eval.ckpt, "step": int(job.metadata.get("step", 0)), "config": model_cfg},
        "world_size": get_world_size(),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _protocol(cfg: JobConfig) -> dict[str, Any]:
    task, ev = cfg.eval.task, cfg.eval
    if task == "retrieval":
        return {
            "dual_softmax": ev.dual_softmax,
            "join_captions": ev.join_captions,
            "tokens_per_trajectory": ev.tokens_per_trajectory,
        }
    if task == "classify":
        return {"templates": ev.templates, "tokens_per_trajectory": ev.tokens_per_trajectory}
    if task == "probe":
        return {"probe": to_dict(ev.probe)}
    return {"tokens_per_trajectory": ev.tokens_per_trajectory}


def write_results(cfg: JobConfig, record: dict[str, Any]) -> Path:
    """`<eval.out or run_dir>/eval_<task>.json`, replaced atomically."""
    return write_json(Path(cfg.eval.out or cfg.run_dir) / f"eval_{record['task']}.json", record)


def mlflow_metrics(record: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """`<prefix>/<task>/<name>` for every metric, in the characters MLflow keys allow (`R@1` -> `R1`)."""
    return {f"{prefix}/{record['task']}/{_METRIC_KEY.sub('', k)}": v for k, v in record["metrics"].items()}


def training_run(cfg: JobConfig) -> Tracker | None:
    """The MLflow run of the training that exported `eval.ckpt`, if its directory names one in the store."""
    run_id = resolve_checkpoint(cfg.eval.ckpt)[1] if cfg.eval.ckpt else ""
    if not run_id:
        return None
    uri = tracking_uri(cfg.tracking)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        experiment_id = client.get_run(run_id).info.experiment_id
    except MlflowException:
        log.warning("training run %s is not in %s: the evaluation gets a run of its own", run_id, uri)
        return None
    return Tracker(client, run_id, experiment_id, top_level=False)  # never closed here: training owns it


@contextlib.contextmanager
def eval_run(cfg: JobConfig) -> Iterator[tuple[Tracker | NullTracker, Tracker | None]]:
    """The MLflow run this evaluation logs into, opened before it starts so its duration is the real one:
    nested under the training run when the checkpoint's directory names one, else this run directory's run.
    Yields it and the training run (None when there is none); closed as FAILED if the block raises."""
    if not cfg.tracking.enabled:
        yield NullTracker(), None
        return
    parent = training_run(cfg)
    with parent.child(f"eval-{cfg.eval.task}") if parent else start_tracker(cfg, rank=0) as tracker:
        yield tracker, parent


def log_results(
    cfg: JobConfig, tracker: Tracker | NullTracker, parent: Tracker | None, record: dict[str, Any], path: Path
) -> None:
    """Params, metrics (at the checkpoint's training step), the eval set as a dataset input and the results
    file into the evaluation's run; the metrics also onto the training run, so that runs compare in the
    experiment's chart view by their `eval/` metrics."""
    if parent is not None:  # a top-level run already holds the whole config as params
        params = flatten({"eval": to_dict(cfg.eval), "clip": to_dict(cfg.clip), "data": record["data"]})
        values = [
            Param(k, json.dumps(v) if isinstance(v, list | dict) else str(v)) for k, v in params.items()
        ]
        for first in range(0, len(values), 100):  # MLflow takes at most 100 params per call
            tracker.client.log_batch(tracker.run_id, params=values[first : first + 100])
    metrics, step = mlflow_metrics(record), record["model"]["step"]
    tracker.log_metrics(metrics, step=step)
    if parent is not None:
        parent.log_metrics(metrics, step=step)
    location = record["data"]
    tracker.log_dataset(
        expand_shards(location) if cfg.data.eval_shards else [location], "eval-set", "evaluation"
    )
    tracker.log_artifact(path)


def evaluate_and_record(
    cfg: JobConfig, device: torch.device | None = None
) -> tuple[dict[str, Any], Path | None]:
    """`evaluate` on every rank; rank 0 also writes the results file and logs the run (see the module doc).
    Returns the record and, on rank 0, the results file."""
    check_evaluation(cfg)  # before a run is opened: a mistyped task makes no FAILED run
    if get_rank() != 0:
        return evaluate(cfg, device), None
    with eval_run(cfg) as (tracker, parent):
        record = evaluate(cfg, device)
        picture = record.pop(PICTURE_KEY, None)
        path = write_results(cfg, record)
        log_results(cfg, tracker, parent, record, path)
        if picture is not None:
            tracker.log_image(picture, f"eval/{record['task']}", step=record["model"]["step"])
        record["mlflow_run_id"] = tracker.run_id
    return record, path


def main(cfg: JobConfig) -> int:
    """One rank of `trajtok eval`: joins the process group when launched as several, evaluates, records."""
    if get_world_size() > 1:
        init_process_group()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    record, path = evaluate_and_record(cfg, device)
    if path is not None:
        print(summary(record, path, record["mlflow_run_id"]), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def summary(record: dict[str, Any], path: Path, run_id: str | None) -> str:
    """A few lines for the terminal: the metrics, where the JSON is, and the MLflow run."""
    lines = [f"eval {record['task']} on {record['data']} ({record['seconds']:.1f} s)"]
    lines += [f"  {name:<28} {value:.4g}" for name, value in record["metrics"].items()]
    lines.append(f"results: {path}" + (f"\nmlflow run: {run_id}" if run_id else ""))
    return "\n".join(lines)
