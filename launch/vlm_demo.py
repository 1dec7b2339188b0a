"""The VLM line at demo size (`trajtok demo configs/demo-vlm.yaml`): TrajVLM and PatchVLM on long-video QA.

synthetic caption set -> pseudo-labels and shards -> the TrajTok segmenter and a `vit3d` (the vision model
whose feature map both VLMs read), as in the main demo -> synthetic long-video QA sets (`synth.questions`,
`demo.vlm.frames` frames, held-out from other seeds) -> TrajVLM and PatchVLM (a tiny random language model
each, the same steps, `trajtok train`) -> `trajtok eval task=qa` on the held-out questions -> a table:
accuracy per question type and the LLM tokens each video takes, also at 32, 64 and 128 frames. Every stage
is resumable, as in the main demo (`launch.demo`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from launch.demo import (
    make_shards,
    make_synthetic_sets,
    own_tracking,
    segmenter_stage,
    stage,
    train_model,
    with_changes,
)
from trajtok.config import JobConfig, save_config
from trajtok.rundir import write_json

TOKEN_FRAMES = (32, 64, 128)  # clip lengths the token table shows
TOKEN_CLIPS = 4  # synthetic clips per length


@dataclass
class VLMResult:
    name: str
    metrics: dict[str, float]  # eval qa: accuracy, accuracy/<type>, llm_video_tokens
    tokens: dict[int, tuple[float, int]]  # frames -> (valid LLM video tokens, slots) per video
    steps: int
    train_seconds: float


def run_vlm_demo(cfg: JobConfig) -> list[VLMResult]:
    """Every stage; see the module docstring."""
    start = time.perf_counter()
    out = Path(cfg.demo.out).resolve()
    cfg = own_tracking(cfg, out)
    save_config(cfg, out)
    vlm = cfg.demo.vlm
    total = 6 + len(vlm.models)
    stages = iter(range(1, total + 1))

    stage(next(stages), total, "synthetic caption sets (vision model, segmenter) and long-video QA sets")
    train_manifest, _ = make_synthetic_sets(cfg, out)
    qa_train, qa_heldout = qa_sets(cfg, out)
    stage(next(stages), total, "pseudo-labels and WebDataset shards of the caption set (Ray)")
    shards = make_shards(cfg, train_manifest, out)
    stage(next(stages), total, f"the TrajTok segmenter, {cfg.demo.segmenter_steps} steps")
    segmenter, _ = train_model(cfg, "segmenter", shards, out, **segmenter_stage(cfg))
    stage(next(stages), total, f"the vision model (vit3d), {cfg.train.steps} steps")
    vision, _ = train_model(cfg, "vit3d", shards, out, **{"train.eval_every": 0})
    language_cfg = with_changes(
        cfg,
        **{
            "data.manifest": str(qa_train),
            "clip.frames": vlm.frames,
            "clip.sampling": "middle",
            "model.vlm.vision": str(vision),
            "model.vlm.segmenter": str(segmenter),
            "train.steps": vlm.steps,
            "train.batch_size": vlm.batch_size,
            "train.lr": vlm.lr,
            "train.eval_every": 0,
            "train.eval_set": "",
        },
    )
    trained = {}
    for name in vlm.models:
        stage(
            next(stages), total, f"train {name}, {vlm.steps} steps (DeepSpeed, {cfg.launch.nproc} processes)"
        )
        trained[name] = train_model(language_cfg, name, shards, out)
    stage(next(stages), total, "question answering on the held-out long videos")
    results = [
        VLMResult(
            name,
            evaluate_qa(language_cfg, run_dir, qa_heldout),
            video_tokens(run_dir, cfg.synth.seed, cfg.clip.size),
            vlm.steps,
            seconds,
        )
        for name, (run_dir, seconds) in trained.items()
    ]
    stage(next(stages), total, "results")
    minutes = (time.perf_counter() - start) / 60
    write_json(out / "results.json", {"models": [vars(r) for r in results], "minutes": minutes}, indent=2)
    print(format_vlm_table(results, minutes, cfg.tracking.uri))
    return results


def qa_sets(cfg: JobConfig, out: Path) -> tuple[Path, Path]:
    """The long-video QA training set and its held-out set (other seeds), at the caption sets' frame size."""
    from trajtok.data.synth import write_dataset

    vlm = cfg.demo.vlm
    common = {"questions": True, "frames": vlm.frames}
    train = write_dataset(
        with_changes(cfg.synth, out=str(out / "qa-train"), videos=vlm.train_videos, **common)
    )
    heldout = write_dataset(
        with_changes(
            cfg.synth,
            out=str(out / "qa-heldout"),
            videos=vlm.heldout_videos,
            seed=cfg.demo.heldout_seed,
            **common,
        )
    )
    return train, heldout


def evaluate_qa(cfg: JobConfig, run_dir: Path, manifest: Path) -> dict[str, float]:
    from trajtok.eval.run import evaluate_and_record

    changes = {"data.manifest": str(manifest), "eval.task": "qa", "eval.ckpt": str(run_dir)}
    return evaluate_and_record(with_changes(cfg, **changes, run_dir=str(run_dir / "eval")))[0]["metrics"]


def video_tokens(run_dir: Path, seed: int, size: int) -> dict[int, tuple[float, int]]:
    """Valid LLM video tokens and slots per video of a trained VLM at each of `TOKEN_FRAMES`, on synthetic
    long clips of `size` pixels (the longest cut shorter)."""
    import torch

    from trajtok.data.normalise import normalise_frames
    from trajtok.data.synth_qa import render_timed_scene, sample_timed_scene
    from trajtok.eval.run import load_eval_model

    model, _ = load_eval_model(str(run_dir))
    longest = max(TOKEN_FRAMES)
    clips = []
    for index in range(TOKEN_CLIPS):
        scene = sample_timed_scene(np.random.default_rng([seed, 77, index]), longest, size, size)
        clips.append(render_timed_scene(scene, size, size)[0])
    frames = torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3)
    counts = {}
    with torch.no_grad():
        for length in TOKEN_FRAMES:
            tokens, mask = model.video_tokens(normalise_frames(frames[:, :length], torch.device("cpu")))
            counts[length] = (float(mask.sum(dim=1).float().mean()), int(tokens.shape[1]))
    return counts


def format_vlm_table(results: list[VLMResult], minutes: float, tracking_uri: str) -> str:
    kinds = sorted(
        {key.split("/", 1)[1] for r in results for key in r.metrics if key.startswith("accuracy/")}
    )
    width = max(9, *(len(r.name) for r in results))
    header = f"{'model':<{width}} {'steps':>6} {'train s':>8} {'accuracy':>9} " + " ".join(
        f"{k:>12}" for k in kinds
    )
    header += " " + " ".join(f"{f'tokens@{f}':>12}" for f in TOKEN_FRAMES)
    lines = [header, "-" * len(header)]
    for r in results:
        cells = " ".join(f"{r.metrics.get(f'accuracy/{k}', float('nan')):>12.1f}" for k in kinds)
        tokens = " ".join(f"{f'{r.tokens[f][0]:.0f}/{r.tokens[f][1]}':>12}" for f in TOKEN_FRAMES)
        accuracy = r.metrics["accuracy"]
        lines.append(
            f"{r.name:<{width}} {r.steps:>6} {r.train_seconds:>8.0f} {accuracy:>9.1f} {cells} {tokens}"
        )
    lines.append(
        "accuracy in % (exact match, held-out videos); tokens@F = LLM video tokens per video at F frames, "
        f"valid/slots; {minutes:.1f} min in all"
    )
    lines.append(f"open the MLflow runs: mlflow ui --backend-store-uri {tracking_uri}")
    return "\n".join(lines)
