"""The main job on built-in data: every stage of the production line, small, on one machine.

synthetic videos -> pseudo-labels and shards (Ray) -> `trajvit2` and `vit3d` trained with DeepSpeed in local
processes -> both evaluated on held-out synthetic clips -> MLflow runs, and a table that compares them.
The shared real videos are labelled too, for pictures a person can look at. Each stage is the same code a
user runs by hand (`trajtok synth`, `shard`, `train`, `eval`), so the demo is also their smoke test. Every
stage is resumable: a rerun reuses the synthetic set, the finished shards and the trained runs.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajtok.config import JobConfig, save_config
from trajtok.errors import TrajTokError

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "videos"
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm"}


@dataclass
class ModelResult:
    """What the table shows for one trained model."""

    name: str
    retrieval: dict[str, float]
    train: dict[str, float]
    segmentation: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoResult:
    models: list[ModelResult]
    chance_r1: float
    tracking_uri: str
    pictures: list[Path]
    seconds: float


def _stage(number: int, total: int, title: str) -> None:
    print(f"\n== [{number}/{total}] {title}", flush=True)


def _with(cfg: JobConfig, **changes: Any) -> JobConfig:
    """A deep copy of `cfg` with dotted fields changed: `_with(cfg, **{"train.steps": 5})`."""
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

    train = write_dataset(_with(cfg.synth, out=str(out / "synth-train"), videos=cfg.demo.train_videos))
    heldout = write_dataset(
        _with(
            cfg.synth,
            out=str(out / "synth-heldout"),
            videos=cfg.demo.heldout_videos,
            seed=cfg.demo.heldout_seed,
        )
    )
    print(f"training set: {cfg.demo.train_videos} clips in {train.parent}")
    print(f"held-out set: {cfg.demo.heldout_videos} clips in {heldout.parent}")
    return train, heldout


def label_real_videos(cfg: JobConfig, out: Path) -> list[Path]:
    """Label each real video once with the configured labeler and save its overlay picture."""
    from pseudolabel.base import labeler_from_config
    from trajtok.data.video import load_clip
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
            frames, timestamps, _ = load_clip(str(video), cfg.clip.frames, mode="middle")
        except TrajTokError as err:
            print(f"{video.name}: skipped: {err}")
            continue
        result = labeler.label(frames, timestamps, str(video))
        picture = write_png(out / "pictures" / f"{video.stem}.png", overlay_grid(frames, result.labels))
        print(f"{video.name}: {result.num_trajectories} trajectories over {len(frames)} frames -> {picture}")
        pictures.append(picture)
    return pictures


def make_shards(cfg: JobConfig, manifest: Path, out: Path) -> str:
    """Pseudo-label the training set and write its WebDataset shards with the Ray pipeline."""
    from pipeline.job import run_shard_job

    shard_dir = out / "shards"
    job = _with(
        cfg,
        **{
            "data.manifest": str(manifest),
            "pipeline.out": str(shard_dir),
            "run_dir": str(out / "runs/shard"),
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


def train_model(cfg: JobConfig, name: str, shards: str, out: Path) -> Path:
    """Train one model with DeepSpeed in `launch.nproc` local processes; returns its run directory."""
    from launch.local import run_local

    run_dir = out / "runs" / name
    job = _with(cfg, **{"model.name": name, "data.shards": shards, "run_dir": str(run_dir)})
    code = run_local("trajtok.train.loop:main", job)
    if code != 0:
        raise TrajTokError(f"training {name} failed with exit code {code}; its log is above")
    return run_dir


def evaluate_model(cfg: JobConfig, run_dir: Path, manifest: Path, task: str) -> dict[str, float]:
    """Evaluate a trained run on the held-out manifest; returns the metrics of `task`."""
    from trajtok.eval.run import evaluate, log_results, write_results

    job = _with(
        cfg,
        **{
            "data.manifest": str(manifest),
            "clip.sampling": "middle",
            "eval.task": task,
            "eval.ckpt": str(run_dir),
            "run_dir": str(run_dir / "eval"),
        },
    )
    record = evaluate(job)
    log_results(job, record, write_results(job, record))
    return record["metrics"]


def training_summary(run_dir: Path, tracking_uri: str) -> dict[str, float]:
    """The last logged training metrics of a run, read back from MLflow."""
    from mlflow.tracking import MlflowClient

    from trajtok.tracking import RUN_ID_FILE

    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    return dict(MlflowClient(tracking_uri).get_run(run_id).data.metrics)


def run_demo(cfg: JobConfig) -> DemoResult:
    """Run every stage; see the module docstring."""
    from trajtok.eval.retrieval import chance_recall_at_1

    start = time.perf_counter()
    out = Path(cfg.demo.out).resolve()
    # the demo keeps its MLflow store beside its outputs unless the user names one
    own_store = f"sqlite:///{out / 'mlflow.db'}"
    cfg = _with(
        cfg, **{"tracking.uri": cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or own_store}
    )
    save_config(cfg, out)
    total = 4 + len(cfg.demo.models)

    _stage(1, total, "synthetic videos with exact trajectory ground truth")
    train_manifest, heldout_manifest = make_synthetic_sets(cfg, out)
    _stage(2, total, f"pseudo-labels ({cfg.pseudolabel.name}) of the real sample videos")
    pictures = label_real_videos(cfg, out)
    _stage(3, total, "pseudo-labels and WebDataset shards of the training set (Ray)")
    shards = make_shards(cfg, train_manifest, out)

    results = []
    for index, name in enumerate(cfg.demo.models):
        _stage(4 + index, total, f"train {name} (DeepSpeed, {cfg.launch.nproc} processes)")
        run_dir = train_model(cfg, name, shards, out)
        retrieval = evaluate_model(cfg, run_dir, heldout_manifest, "retrieval")
        segmentation = evaluate_model(cfg, run_dir, heldout_manifest, "segment") if name == "trajvit2" else {}
        results.append(
            ModelResult(name, retrieval, training_summary(run_dir, cfg.tracking.uri), segmentation)
        )

    _stage(total, total, "results on held-out synthetic clips")
    result = DemoResult(
        models=results,
        chance_r1=chance_recall_at_1(cfg.demo.heldout_videos),
        tracking_uri=cfg.tracking.uri,
        pictures=pictures,
        seconds=time.perf_counter() - start,
    )
    (out / "results.json").write_text(json.dumps(_as_json(result), indent=2))
    print(format_table(result))
    return result


def _as_json(result: DemoResult) -> dict[str, Any]:
    return {
        "models": [vars(m) for m in result.models],
        "chance_R@1": result.chance_r1,
        "tracking_uri": result.tracking_uri,
        "pictures": [str(p) for p in result.pictures],
        "seconds": result.seconds,
    }


def format_table(result: DemoResult) -> str:
    """The comparison a person reads first: retrieval, tokens per clip, speed, segmenter quality."""
    header = (
        f"{'model':<10} {'t2v R@1':>8} {'R@5':>6} {'R@10':>6} {'v2t R@1':>8} "
        f"{'tokens/clip':>11} {'clips/s':>8} {'seg VEQ':>8} {'seg mBO':>8}"
    )
    lines = [header, "-" * len(header)]
    for m in result.models:
        r, t, s = m.retrieval, m.train, m.segmentation
        seg_veq = f"{s['veq']:.3f}" if "veq" in s else "-"
        seg_mbo = f"{s['mean_best_overlap']:.3f}" if "mean_best_overlap" in s else "-"
        lines.append(
            f"{m.name:<10} {r['t2v_R@1']:>8.1f} {r['t2v_R@5']:>6.1f} {r['t2v_R@10']:>6.1f} "
            f"{r['v2t_R@1']:>8.1f} "
            f"{t.get('train/tokens_per_clip/mean', float('nan')):>11.1f} "
            f"{t.get('train/samples_per_s', float('nan')):>8.1f} {seg_veq:>8} {seg_mbo:>8}"
        )
    lines.append(f"R@K in %, chance R@1 = {result.chance_r1:.1f}%; {result.seconds / 60:.1f} min in all")
    if result.pictures:
        lines.append("pseudo-label pictures: " + ", ".join(str(p) for p in result.pictures))
    lines.append(f"open the MLflow runs: mlflow ui --backend-store-uri {result.tracking_uri}")
    return "\n".join(lines)
