"""The main job on built-in data: every stage of the production line, small, on one machine.

synthetic videos (or the user's `demo.train_manifest` / `demo.heldout_manifest`) -> pseudo-labels and shards
(Ray) -> the release's two-stage recipe for `trajvit2` (the segmenter alone on the pseudo-labels, then the
whole model warm-started from it, `model.init`) and `vit3d` for as many steps as both stages together, each
with DeepSpeed in local processes -> all evaluated on the held-out clips -> MLflow runs, and a table that
compares them, with each model's training steps and seconds. With `demo.rounds` > 1
(configs/demo-selflabel.yaml), each round's trained trajvit2 labels the next (`launch.selflabel`).
The shared real videos are labelled too, for pictures a person can look at. Each stage is the same code a
user runs by hand (`trajtok synth`, `shard`, `train`, `eval`), so the demo is also their smoke test. Every
stage is resumable: a rerun reuses the synthetic set, the finished shards and the trained runs.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajtok.config import JobConfig, save_config
from trajtok.errors import ConfigError, TrajTokError
from trajtok.rundir import read_run_id, write_json, write_text

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm"}


@dataclass
class ModelResult:
    """What the table shows for one trained model."""

    name: str
    retrieval: dict[str, float]
    train: dict[str, float]
    segmentation: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # training steps, every stage of this model's recipe together
    train_seconds: float = 0.0  # wall-clock seconds of those steps on this machine


@dataclass
class DemoResult:
    models: list[ModelResult]
    chance_r1: float
    tracking_uri: str
    pictures: list[Path]
    seconds: float
    label_rounds: list[Any] = field(default_factory=list)  # launch.selflabel.LabelRound, with demo.rounds > 1


def stage(number: int, total: int, title: str) -> None:
    print(f"\n== [{number}/{total}] {title}", flush=True)


def with_changes(cfg: JobConfig, **changes: Any) -> JobConfig:
    """A deep copy of `cfg` with dotted fields changed: `with_changes(cfg, **{"train.steps": 5})`."""
    new = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = new
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)
    return new


def make_synthetic_sets(cfg: JobConfig, out: Path) -> tuple[Path, Path]:
    """The training set and a held-out set drawn from seeds the training set never uses."""
    from trajtok.data.synth import write_dataset

    train = write_dataset(with_changes(cfg.synth, out=str(out / "synth-train"), videos=cfg.demo.train_videos))
    heldout = write_dataset(
        with_changes(
            cfg.synth,
            out=str(out / "synth-heldout"),
            videos=cfg.demo.heldout_videos,
            seed=cfg.demo.heldout_seed,
        )
    )
    print(f"training set: {cfg.demo.train_videos} clips in {train.parent}")
    print(f"held-out set: {cfg.demo.heldout_videos} clips in {heldout.parent}")
    return train, heldout


def data_sets(cfg: JobConfig, out: Path) -> tuple[Path, Path]:
    """The user's two manifests when named (checked: both, read strictly, so every row is captioned), else the
    synthetic sets."""
    named = [m for m in (cfg.demo.train_manifest, cfg.demo.heldout_manifest) if m]
    if not named:
        return make_synthetic_sets(cfg, out)
    if len(named) == 1:
        raise ConfigError("demo.train_manifest and demo.heldout_manifest: name both, or neither")
    from trajtok.data.manifest import read_manifest

    for role, location in (("training", cfg.demo.train_manifest), ("held-out", cfg.demo.heldout_manifest)):
        rows = read_manifest(location, strict=True).rows
        if not rows:
            raise ConfigError(f"{location}: lists no clips")
        print(f"{role} set: {len(rows)} clips in {location}")
    return Path(cfg.demo.train_manifest), Path(cfg.demo.heldout_manifest)


def has_ground_truth(manifest: Path) -> bool:
    """Whether every row names a ground-truth label map (`gt_labels`), so the segmenter can be scored."""
    from trajtok.data.manifest import read_manifest
    from trajtok.eval.evalset import GT_COLUMN

    return all(GT_COLUMN in row.extra for row in read_manifest(manifest, strict=True).rows)


def label_real_videos(cfg: JobConfig, out: Path) -> list[Path]:
    """Label a few seconds of each real video with the configured labeler and save its overlay picture."""
    from launch.commands.label import window_seconds
    from pseudolabel.base import labeler_from_config
    from trajtok.data.clips import read_window
    from trajtok.viz import overlay_grid, write_png

    folder = Path(cfg.demo.real_videos) if cfg.demo.real_videos else SHARED_VIDEOS
    videos = (
        sorted(p for p in folder.glob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []
    )
    if not videos:
        print(f"no real videos in {folder}: skipped")
        return []
    labeler = labeler_from_config(cfg.pseudolabel)
    pictures = []
    for video in videos:
        try:
            clip = read_window(str(video), cfg.clip, seconds=window_seconds(cfg.clip))
        except TrajTokError as err:
            print(f"{video.name}: skipped: {err}")
            continue
        frames = clip.frames
        result = labeler.label(frames, clip.timestamps, str(video))
        picture = write_png(out / "pictures" / f"{video.stem}.png", overlay_grid(frames, result.labels))
        print(f"{video.name}: {result.num_trajectories} trajectories over {len(frames)} frames -> {picture}")
        pictures.append(picture)
    return pictures


def make_shards(cfg: JobConfig, manifest: Path, out: Path, folder: str = "") -> str:
    """Pseudo-label the training set and write its WebDataset shards with the Ray pipeline (into
    `shards/` and `runs/shard`, or `shards-<folder>` and `runs/shard-<folder>`)."""
    from pipeline.job import run_shard_job

    suffix = f"-{folder}" if folder else ""
    shard_dir = out / f"shards{suffix}"
    job = with_changes(
        cfg,
        **{
            "data.manifest": str(manifest),
            "pipeline.out": str(shard_dir),
            "run_dir": str(out / f"runs/shard{suffix}"),
        },
    )
    summary = run_shard_job(job)
    print(
        f"{summary['written']} of {summary['rows']} rows written as {summary['clips']} clips in "
        f"{summary['shards']} shards ({summary['skipped']} skipped, {summary['failed']} failed)"
    )
    if summary["written"] == 0:
        raise TrajTokError(f"the shard job wrote no clips; see {shard_dir / 'summary.json'}")
    return str(shard_dir / "shard-*.tar")


TRAIN_SECONDS_FILE = "demo-train-seconds.txt"


def with_held_out(cfg: JobConfig, heldout_manifest: Path) -> JobConfig:
    """Training draws the held-out clips in its pictures and validates on them (`train.eval_every`),
    unless the config names its own `train.eval_set`."""
    return with_changes(cfg, **{"train.eval_set": cfg.train.eval_set or str(heldout_manifest)})


def segmenter_stage(cfg: JobConfig) -> dict[str, Any]:
    """The settings of stage 1, the segmenter alone: its steps and learning rate, and no retrieval
    validation (a segmenter has no text side; its pictures show how it does)."""
    return {"train.steps": cfg.demo.segmenter_steps, "train.lr": cfg.demo.segmenter_lr, "train.eval_every": 0}


def train_model(
    cfg: JobConfig, name: str, shards: str, out: Path, run_name: str = "", **changes: Any
) -> tuple[Path, float]:
    """Train one model with DeepSpeed in `launch.nproc` local processes: its run directory (`runs/<run_name
    or name>`) and the seconds the training took (kept in the run directory, so a rerun that reuses the run
    reports them too)."""
    from launch.local import run_local
    from trajtok.models.weights import WEIGHTS_FILE

    run_dir = out / "runs" / (run_name or name)
    seconds_file = run_dir / TRAIN_SECONDS_FILE
    reused = (run_dir / WEIGHTS_FILE).is_file() and seconds_file.is_file()
    job = with_changes(cfg, **{"model.name": name, "data.shards": shards, "run_dir": str(run_dir), **changes})
    start = time.perf_counter()
    code = run_local("trajtok.train.loop:main", job)
    if code != 0:
        raise TrajTokError(f"training {name} failed with exit code {code}; its log is above")
    if not reused:
        write_text(seconds_file, f"{time.perf_counter() - start:.1f}\n")
    return run_dir, float(seconds_file.read_text())


def evaluate_model(cfg: JobConfig, run_dir: Path, manifest: Path, task: str) -> dict[str, float]:
    """Evaluate a trained run on the held-out manifest; returns the metrics of `task`."""
    from trajtok.eval.run import evaluate_and_record

    job = with_changes(
        cfg,
        **{
            "data.manifest": str(manifest),
            "clip.sampling": "middle",
            "eval.task": task,
            "eval.ckpt": str(run_dir),
            "run_dir": str(run_dir / "eval"),
        },
    )
    return evaluate_and_record(job)[0]["metrics"]


def training_summary(run_dir: Path, tracking_uri: str) -> dict[str, float]:
    """The last logged training metrics of a run, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri).get_run(read_run_id(run_dir)).data.metrics)


def own_tracking(cfg: JobConfig, out: Path) -> JobConfig:
    """The demo keeps its MLflow store beside its outputs unless the user names one."""
    own_store = f"sqlite:///{out / 'mlflow.db'}"
    uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or own_store
    return with_changes(cfg, **{"tracking.uri": uri})


def run_demo(cfg: JobConfig) -> DemoResult | None:
    """Run every stage; see the module docstring. With `demo.vlm.models` the VLM line instead
    (`launch.vlm_demo`; its results are printed and written, None returned)."""
    from trajtok.eval.evalset import read_items
    from trajtok.eval.retrieval import chance_recall_at_1

    if cfg.demo.vlm.models:
        from launch.vlm_demo import run_vlm_demo

        run_vlm_demo(cfg)
        return None
    start = time.perf_counter()
    out = Path(cfg.demo.out).resolve()
    cfg = own_tracking(cfg, out)
    if cfg.demo.segmenter_steps < 0:
        raise ConfigError(f"demo.segmenter_steps {cfg.demo.segmenter_steps}: must be >= 0 (0 = no stage 1)")
    if cfg.demo.rounds < 1 or (cfg.demo.rounds > 1 and "trajvit2" not in cfg.demo.models):
        raise ConfigError(
            f"demo.rounds {cfg.demo.rounds}: must be >= 1, and > 1 only with trajvit2 in demo.models"
        )
    save_config(cfg, out)
    two_stage = "trajvit2" in cfg.demo.models and cfg.demo.segmenter_steps > 0
    trajvit2_steps = cfg.train.steps + (cfg.demo.segmenter_steps if two_stage else 0)
    total = 4 + len(cfg.demo.models) + two_stage + (cfg.demo.rounds - 1) * (2 + cfg.demo.control)
    stages = iter(range(1, total + 1))

    stage(next(stages), total, "training and held-out sets")
    train_manifest, heldout_manifest = data_sets(cfg, out)
    cfg = with_held_out(cfg, heldout_manifest)
    scored = has_ground_truth(heldout_manifest)
    stage(next(stages), total, f"pseudo-labels ({cfg.pseudolabel.name}) of the real sample videos")
    pictures = label_real_videos(cfg, out)
    stage(next(stages), total, "pseudo-labels and WebDataset shards of the training set (Ray)")
    shards = make_shards(cfg, train_manifest, out)

    def evaluated(name: str, run_dir: Path, segments: bool, steps: int, seconds: float) -> ModelResult:
        retrieval = evaluate_model(cfg, run_dir, heldout_manifest, "retrieval") if name != "segmenter" else {}
        segmentation = (
            evaluate_model(cfg, run_dir, heldout_manifest, "segment") if segments and scored else {}
        )
        summary = training_summary(run_dir, cfg.tracking.uri)
        return ModelResult(name, retrieval, summary, segmentation, steps, seconds)

    results = []
    init, init_seconds = "", 0.0
    if two_stage:
        steps = cfg.demo.segmenter_steps
        stage(
            next(stages), total, f"trajvit2 stage 1: the segmenter alone on the pseudo-labels, {steps} steps"
        )
        run_dir, init_seconds = train_model(cfg, "segmenter", shards, out, **segmenter_stage(cfg))
        results.append(evaluated("segmenter", run_dir, True, steps, init_seconds))
        init = str(run_dir)
    for name in cfg.demo.models:
        if name == "trajvit2":
            title = "trajvit2" + (" stage 2: the whole model, warm-started from stage 1" if init else "")
            stage(next(stages), total, f"train {title} (DeepSpeed, {cfg.launch.nproc} processes)")
            run_dir, seconds = train_model(cfg, name, shards, out, **{"model.init": init})
            results.append(evaluated(name, run_dir, True, trajvit2_steps, seconds + init_seconds))
            round1 = (run_dir, results[-1], shards)
        else:
            steps = trajvit2_steps if "trajvit2" in cfg.demo.models else cfg.train.steps
            stage(
                next(stages), total, f"train {name}, {steps} steps (DeepSpeed, {cfg.launch.nproc} processes)"
            )
            run_dir, seconds = train_model(cfg, name, shards, out, **{"train.steps": steps})
            results.append(evaluated(name, run_dir, False, steps, seconds))

    label_rounds = []
    if cfg.demo.rounds > 1:
        from launch.selflabel import later_rounds, score_rounds

        rounds, labellers = later_rounds(cfg, train_manifest, out, round1, stages, total, evaluated)
        results += rounds
    stage(next(stages), total, "results on the held-out clips")
    if cfg.demo.rounds > 1:
        label_rounds = score_rounds(cfg, labellers, heldout_manifest, scored)
    result = DemoResult(
        models=results,
        chance_r1=chance_recall_at_1(len(read_items(str(heldout_manifest)))),
        tracking_uri=cfg.tracking.uri,
        pictures=pictures,
        seconds=time.perf_counter() - start,
        label_rounds=label_rounds,
    )
    write_json(out / "results.json", _as_json(result), indent=2)
    print(format_table(result))
    return result


def _as_json(result: DemoResult) -> dict[str, Any]:
    return {
        "models": [vars(m) for m in result.models],
        "chance_R@1": result.chance_r1,
        "tracking_uri": result.tracking_uri,
        "pictures": [str(p) for p in result.pictures],
        "seconds": result.seconds,
        "label_rounds": [vars(r) for r in result.label_rounds],
    }


def _cell(values: dict[str, float], key: str, width: int, digits: int, missing: str = "-") -> str:
    return f"{values[key]:>{width}.{digits}f}" if key in values else f"{missing:>{width}}"


def mean_recall(retrieval: dict[str, float], k: int) -> float | None:
    """R@k as the table shows it: the mean of text-to-video and video-to-text (None when not evaluated)."""
    if f"t2v_R@{k}" not in retrieval:
        return None
    return (retrieval[f"t2v_R@{k}"] + retrieval[f"v2t_R@{k}"]) / 2


def format_table(result: DemoResult) -> str:
    """The comparison a person reads first: compute spent, retrieval, tokens per clip, segmenter quality;
    with self-labelling rounds, each round's labels too.

    Retrieval R@K is the mean of text-to-video and video-to-text; seg n/a = the held-out set has no ground
    truth to score against."""
    width = max(10, *(len(m.name) for m in result.models))
    header = (
        f"{'model':<{width}} {'steps':>6} {'train s':>8} {'R@1':>6} {'R@5':>6} {'t2v R@1':>8} {'v2t R@1':>8} "
        f"{'tokens/clip':>11} {'seg VEQ':>8} {'seg mBO':>8}"
    )
    lines = [header, "-" * len(header)]
    for m in result.models:
        r, s = dict(m.retrieval), m.segmentation
        for k in (1, 5):
            if (recall := mean_recall(m.retrieval, k)) is not None:
                r[f"R@{k}"] = recall
        unscored = "n/a" if m.name != "vit3d" else "-"
        lines.append(
            f"{m.name:<{width}} {m.steps:>6} {m.train_seconds:>8.0f} {_cell(r, 'R@1', 6, 1)} "
            f"{_cell(r, 'R@5', 6, 1)} {_cell(r, 't2v_R@1', 8, 1)} {_cell(r, 'v2t_R@1', 8, 1)} "
            f"{_cell(m.train, 'train/tokens_per_clip/mean', 11, 1)} "
            f"{_cell(s, 'veq', 8, 3, unscored)} {_cell(s, 'mean_best_overlap', 8, 3, unscored)}"
        )
    lines.append(f"R@K in %, chance R@1 = {result.chance_r1:.1f}%; {result.seconds / 60:.1f} min in all")
    if result.label_rounds:
        from launch.selflabel import format_rounds

        lines += ["", format_rounds(result.label_rounds, result.models)]
    if result.pictures:
        lines.append("pseudo-label pictures: " + ", ".join(str(p) for p in result.pictures))
    lines.append(f"open the MLflow runs: mlflow ui --backend-store-uri {result.tracking_uri}")
    return "\n".join(lines)
