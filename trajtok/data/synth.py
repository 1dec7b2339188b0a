"""The built-in synthetic dataset: videos of textured shapes with exact trajectory labels and captions.

It is the embedded default data for the demo and the tests: no download, deterministic by seed, with
ground truth a pseudo-labeler can be scored against and captions a video-text model can learn. Scenes
come from one of two generators drawn in unlike ways (`synth.generator`): `shapes` (`synth_scene` draws,
`synth_render` renders) and `blobs` (`synth_blobs`), so a labeller or model tuned on one can be checked on
the other. This module turns scenes into clips and writes a dataset (videos, label maps, manifest) that the
pipeline reads like any other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from trajtok.config import SynthConfig, config_digest
from trajtok.data import synth_blobs, synth_qa, synth_render, synth_scene
from trajtok.data.encode import write_video
from trajtok.data.labels import save_labels
from trajtok.errors import ConfigError
from trajtok.rundir import write_json, write_text

GENERATOR_VERSION = 1  # bump when a change to the generator alters its output, so old sets are rewritten
_MIN_VISIBLE = 0.6  # each object shows at least this share of its drawn pixels over the clip
_MIN_VISIBLE_PER_FRAME = 0.3  # ... and at least this share in every frame, so no motion is hidden
_MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class Generator:
    """How one generator draws a random scene, renders it (frames, labels, drawn areas) and captions it.
    Its scenes have `objects` (each with colour, shape, motion, texture) and a camera `pan`."""

    sample: Callable[[np.random.Generator, int, int], Any]
    render: Callable[[Any, int, int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
    caption: Callable[[Any], str]


GENERATORS = {
    "shapes": Generator(synth_scene.sample_scene, synth_render.render_scene, synth_scene.caption),
    "blobs": Generator(synth_blobs.sample_scene, synth_blobs.render_scene, synth_blobs.caption),
}


@dataclass
class SynthClip:
    """One generated clip; `metadata` is JSON-serialisable (seed, camera pan, objects with label ids)."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    labels: np.ndarray  # (T, H, W) uint16, 0 = background, object i (back to front) = i + 1
    caption: str
    metadata: dict[str, Any]


def generate_clip(
    seed: int, frames: int = 16, height: int = 112, width: int = 112, generator: str = "shapes"
) -> SynthClip:
    """The clip of `seed` from `generator`: the first random scene in which every object is mostly visible."""
    if frames < 2:
        raise ValueError(f"a synthetic clip needs at least 2 frames to show motion, got {frames}")
    draw = GENERATORS[generator]
    for attempt in range(_MAX_ATTEMPTS):
        scene = draw.sample(np.random.default_rng([seed, attempt]), height, width)
        video, labels, drawn = draw.render(scene, frames, height, width)
        visible = np.stack([(labels == k + 1).sum(axis=(1, 2)) for k in range(len(scene.objects))], 1)
        mostly_shown = visible.sum(0) >= np.maximum(_MIN_VISIBLE * drawn.sum(0), 1)
        never_hidden = visible >= _MIN_VISIBLE_PER_FRAME * drawn
        if mostly_shown.all() and never_hidden.all():
            return SynthClip(video, labels, draw.caption(scene), _metadata(seed, scene, visible))
    raise RuntimeError(f"seed {seed}: no scene with every object visible in {_MAX_ATTEMPTS} attempts")


def _metadata(seed: int, scene: Any, visible: np.ndarray) -> dict[str, Any]:
    objects = []
    for k, obj in enumerate(scene.objects):
        shown = np.flatnonzero(visible[:, k])
        objects.append(
            {
                "id": k + 1,
                **{key: getattr(obj, key) for key in ("colour", "shape", "motion", "texture")},
                "first_frame": int(shown[0]),
                "last_frame": int(shown[-1]),
            }
        )
    return {"seed": seed, "camera_pan": list(scene.pan), "objects": objects}


def clip_id(cfg: SynthConfig, index: int) -> str:
    """Stable id from the seed and the index, so sets made with different seeds never share keys."""
    return f"synth{cfg.seed}-{index:05d}"


def dataset_is_current(cfg: SynthConfig) -> bool:
    """True when `cfg.out` holds a complete set written from this config by this generator version."""
    out = Path(cfg.out)
    try:
        stamp = json.loads((out / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("digest") != _digest(cfg):
        return False
    names = [clip_id(cfg, i) for i in range(cfg.videos)]
    return all((out / path).is_file() for name in names for path in _clip_files(name).values())


def write_dataset(cfg: SynthConfig) -> Path:
    """Write videos/, labels/, manifest.jsonl and scenes.jsonl under `cfg.out`; return the manifest path.

    A rerun with the same config reuses the files; a changed config rewrites them. Captions are unique
    within the set (a clip whose caption repeats an earlier one is drawn again), so retrieval over the
    set has exactly one right answer per clip. `synth.json`, written last, marks the set complete.
    """
    _validate(cfg)
    out = Path(cfg.out)
    manifest = out / "manifest.jsonl"
    if dataset_is_current(cfg):
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    (out / "synth.json").unlink(missing_ok=True)
    rows, scenes, seen = [], [], set()
    for index in tqdm(range(cfg.videos), desc="synth", unit="clip"):
        name = clip_id(cfg, index)
        files = _clip_files(name)
        if cfg.questions:
            clip, asked = _qa_clip(cfg, index)
        else:
            clip, asked = _unique_clip(cfg, index, seen), []
            seen.add(clip.caption)
        write_video(out / files["video"], clip.frames, cfg.fps)
        save_labels(out / files["gt_labels"], clip.labels)
        row = {"id": name, "video": files["video"], "caption": clip.caption, "gt_labels": files["gt_labels"]}
        if asked:  # one row per question
            rows += [
                {**row, "id": f"{name}-{kind}", "question": q, "answer": a, "question_type": kind}
                for kind, q, a in asked
            ]
        else:
            rows.append(row)
        scenes.append({"id": name, **clip.metadata})
    _write_jsonl(manifest, rows)
    _write_jsonl(out / "scenes.jsonl", scenes)
    _remove_stale(out, {scene["id"] for scene in scenes})
    stamp = {"digest": _digest(cfg), "generator_version": GENERATOR_VERSION, **dataclasses.asdict(cfg)}
    write_json(out / "synth.json", stamp, indent=2)
    return manifest


def _unique_clip(cfg: SynthConfig, index: int, seen: set[str]) -> SynthClip:
    for attempt in range(_MAX_ATTEMPTS):
        seed = int(np.random.SeedSequence([cfg.seed, index, attempt]).generate_state(1)[0])
        clip = generate_clip(seed, cfg.frames, cfg.height, cfg.width, cfg.generator)
        if clip.caption not in seen:
            return clip
    raise ConfigError(f"synth.videos={cfg.videos}: too many clips to give each a different caption")


def _qa_clip(cfg: SynthConfig, index: int) -> tuple[SynthClip, list[tuple[str, str, str]]]:
    """A long-video QA clip (`synth_qa`) in which every object stays visible while it is on screen, and its
    questions."""
    for attempt in range(_MAX_ATTEMPTS):
        seed = int(np.random.SeedSequence([cfg.seed, index, attempt]).generate_state(1)[0])
        rng = np.random.default_rng(seed)
        scene = synth_qa.sample_timed_scene(rng, cfg.frames, cfg.height, cfg.width)
        video, labels = synth_qa.render_timed_scene(scene, cfg.height, cfg.width)
        if all(_shown_throughout(labels, k + 1, o.appear, o.vanish) for k, o in enumerate(scene.objects)):
            objects = synth_qa.describe(scene)
            text = "; ".join(f"a {o['colour']} {o['shape']}" for o in objects)
            metadata = {"seed": seed, "objects": objects}
            return SynthClip(video, labels, text, metadata), synth_qa.questions(scene, rng)
    raise RuntimeError(f"synth clip {index}: no scene with every object visible in {_MAX_ATTEMPTS} attempts")


def _shown_throughout(labels: np.ndarray, label: int, first: int, last: int) -> bool:
    """Visible in every frame it is on screen, with at least 30 % of its typical area (not hidden)."""
    area = (labels[first : last + 1] == label).sum(axis=(1, 2))
    return bool(area.min() >= max(_MIN_VISIBLE_PER_FRAME * np.median(area), 1))


def _clip_files(name: str) -> dict[str, str]:
    """A clip's files, relative to the manifest, under the manifest's keys."""
    return {"video": f"videos/{name}.mp4", "gt_labels": f"labels/{name}.npz"}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _remove_stale(out: Path, ids: set[str]) -> None:
    """Drop clips of an earlier, larger set so the folders hold exactly what the manifest lists (only
    files named like synth clips: anything else a user keeps there is left alone)."""
    for folder, suffix in (("videos", ".mp4"), ("labels", ".npz")):
        for path in (out / folder).glob(f"synth*-*{suffix}"):
            if path.stem not in ids:
                path.unlink()


def _digest(cfg: SynthConfig) -> str:
    """Digest of what decides the content (the output folder does not)."""
    return f"v{GENERATOR_VERSION}-{config_digest(dataclasses.replace(cfg, out=''))}"


def _validate(cfg: SynthConfig) -> None:
    checks = {
        "synth.out": (bool(cfg.out), "must name an output folder"),
        "synth.videos": (cfg.videos >= 1, "must be at least 1"),
        "synth.frames": (cfg.frames >= 2, "must be at least 2 (motion needs two frames)"),
        "synth.height": (cfg.height >= 16 and cfg.height % 2 == 0, "must be even and at least 16 (H.264)"),
        "synth.width": (cfg.width >= 16 and cfg.width % 2 == 0, "must be even and at least 16 (H.264)"),
        "synth.fps": (cfg.fps > 0, "must be positive"),
        "synth.seed": (cfg.seed >= 0, "must be non-negative"),
        "synth.generator": (cfg.generator in GENERATORS, f"must be one of {', '.join(GENERATORS)}"),
    }
    for key, (ok, problem) in checks.items():
        if not ok:
            value = getattr(cfg, key.split(".")[1])
            raise ConfigError(f"{key}={value}: {problem}")
