"""Self-labelling rounds of the demo (`demo.rounds`): a trained TrajViT2 labels the next round's data.

Round 1 is the demo's own trajvit2 recipe on the configured labeller's shards. Round r > 1: the `trajtok`
labeller, loaded with round r-1's trajvit2, relabels the training set into shards of its own (the Ray
pipeline, as `trajtok shard pseudolabel.name=trajtok` does), and trajvit2 trains on them for `train.steps`,
warm-started from round r-1 (`model.init`). With `demo.control`, the same warm start also trains for as
many steps on round 1's shards, so the table separates what the new labels did from what more steps did.
Each round's labels are scored on the held-out clips against their ground truth at the clip's resolution
(the labeller's own output, not the model's 1/4 grid), beside each model's own segmentation scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from launch.demo import ModelResult, make_shards, mean_recall, stage, train_model, with_changes
from trajtok.config import JobConfig

LABEL_SCORES = ("purity", "mean_best_overlap", "veq", "num_trajectories")


@dataclass
class LabelRound:
    """One round's labels: who made them and how good they are on the held-out clips."""

    round: int
    labeller: str  # "classical", "trajtok (round 1 trajvit2)"
    quality: dict[str, float] = field(default_factory=dict)  # LABEL_SCORES; empty without ground truth


def label_quality(cfg: JobConfig, labeller_params: dict[str, Any], heldout: Path) -> dict[str, float]:
    """Mean scores of a labeller's maps on the held-out clips (cut as evaluation cuts them) against their
    ground truth at the clip's size."""
    from tqdm import tqdm

    from pseudolabel.base import build_labeler
    from trajtok.eval.evalset import EvalClips, read_items
    from trajtok.eval.segmentation import evaluate_segmentation, mean_scores

    labeller = build_labeler(**labeller_params)
    clip = with_changes(cfg.clip, sampling="middle")
    clips = EvalClips(read_items(str(heldout)), clip, with_labels=True, full_labels=True)
    scores = []
    for i in tqdm(range(len(clips)), desc=f"{labeller.name} labels, held-out", unit="clip", leave=False):
        frames = clips[i]["frames"].permute(0, 2, 3, 1).numpy()
        labels = labeller.label(frames, np.arange(len(frames), dtype=float)).labels  # times: unused here
        scores.append(evaluate_segmentation(labels, clips[i]["labels"].numpy()))
    means = mean_scores(scores)
    return {key: means[key] for key in LABEL_SCORES}


def labeller_params(cfg: JobConfig, weights: Path | None) -> dict[str, Any]:
    """`build_labeler` arguments of round 1's labeller (`weights` None) or of the trajtok labeller."""
    if weights is None:
        p = cfg.pseudolabel
        return {"name": p.name, "params": dict(p.params), "max_trajectories": p.max_trajectories}
    return {
        "name": "trajtok",
        "params": {"weights": str(weights)},
        "max_trajectories": cfg.pseudolabel.max_trajectories,
    }


def later_rounds(
    cfg: JobConfig,
    train_manifest: Path,
    out: Path,
    first: tuple[Path, ModelResult, str],
    stages: Iterator[int],
    total: int,
    evaluated: Callable[[str, Path, bool, int, float], ModelResult],
) -> tuple[list[ModelResult], list[Path]]:
    """Rounds 2..`demo.rounds` after round 1's trajvit2 (`first`: its run directory, result and shards):
    the models trained, and the run that labelled each round from round 2 on."""
    previous_run, previous, round1_shards = first
    control = (previous_run, previous)

    def continued(name: str, shards: str, start: tuple[Path, ModelResult]) -> tuple[Path, ModelResult]:
        """`name` trained on `shards` for train.steps from `start`'s run, its steps and seconds added on."""
        run_dir, seconds = train_model(
            cfg, "trajvit2", shards, out, run_name=name, **{"model.init": str(start[0])}
        )
        steps, seconds = start[1].steps + cfg.train.steps, start[1].train_seconds + seconds
        return run_dir, evaluated(name, run_dir, True, steps, seconds)

    results, labellers = [], []
    for number in range(2, cfg.demo.rounds + 1):
        stage(next(stages), total, f"round {number}: round {number - 1}'s trajvit2 relabels the training set")
        labellers.append(previous_run)
        params = labeller_params(cfg, previous_run)
        job = with_changes(
            cfg, **{"pseudolabel.name": params["name"], "pseudolabel.params": params["params"]}
        )
        shards = make_shards(job, train_manifest, out, folder=f"round{number}")
        name = f"trajvit2-r{number}"
        stage(next(stages), total, f"round {number}: {name} on them, warm-started from round {number - 1}")
        previous_run, previous = continued(name, shards, (previous_run, previous))
        results.append(previous)
        if cfg.demo.control:
            name = f"trajvit2-r{number}-control"
            stage(next(stages), total, f"round {number} control: {name} on round 1's labels, as many steps")
            control = continued(name, round1_shards, control)
            results.append(control[1])
    return results, labellers


def score_rounds(cfg: JobConfig, labellers: list[Path], heldout: Path, scored: bool) -> list[LabelRound]:
    """Round 1's labeller and the runs that labelled the later rounds, scored on the held-out clips when
    they have ground truth."""
    rounds = []
    for number, weights in enumerate([None, *labellers], start=1):
        params = labeller_params(cfg, weights)
        name = params["name"] if weights is None else f"trajtok (round {number - 1} trajvit2)"
        quality = label_quality(cfg, params, heldout) if scored else {}
        rounds.append(LabelRound(number, name, quality))
    return rounds


def format_rounds(rounds: list[LabelRound], models: list[ModelResult]) -> str:
    """Each round's labels against the ground truth, beside the retrieval of the model trained on them."""
    by_name = {m.name: m for m in models}
    header = (
        f"{'round':<6} {'labels':<28} {'purity':>7} {'mBO':>6} {'VEQ':>6} {'traj/clip':>9} "
        f"{'R@1':>6} {'R@5':>6} {'control R@5':>11}"
    )
    lines = [
        "self-labelling: each round's labels on the held-out clips, and the model trained on them",
        header,
    ]
    lines.append("-" * len(header))
    for r in rounds:
        q = r.quality
        model = by_name.get("trajvit2" if r.round == 1 else f"trajvit2-r{r.round}")
        control = by_name.get(f"trajvit2-r{r.round}-control")
        cells = [_score(q, k, 7 if k == "purity" else 6, 3) for k in LABEL_SCORES[:3]]
        lines.append(
            f"{r.round:<6} {r.labeller:<28} {' '.join(cells)} {_score(q, 'num_trajectories', 9, 1)} "
            f"{_recall(model, 1):>6} {_recall(model, 5):>6} {_recall(control, 5):>11}"
        )
    lines.append("labels scored at the clip's size (n/a: no ground truth); R@K: mean of t2v and v2t, in %")
    return "\n".join(lines)


def _score(values: dict[str, float], key: str, width: int, digits: int) -> str:
    return f"{values[key]:>{width}.{digits}f}" if key in values else f"{'n/a':>{width}}"


def _recall(model: ModelResult | None, k: int) -> str:
    recall = None if model is None else mean_recall(model.retrieval, k)
    return "-" if recall is None else f"{recall:.1f}"
