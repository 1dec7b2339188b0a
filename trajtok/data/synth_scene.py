"""What a synthetic scene holds, how one is drawn at random, and the caption read off it.

The vocabulary is small on purpose (6 well-separated hues, 5 shapes, 11 motions, 1-4 objects) so a tiny
video-CLIP can learn it in a few hundred CPU steps, yet rich enough that 32 clips get 32 different
captions. Every word of a caption is visible in the video: the colours are distinct within a clip, a
circle never "rotates", and moving objects travel far enough to leave no doubt about the direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (230, 210, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 210),
    "blue": (50, 80, 230),
    "magenta": (210, 60, 200),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
TEXTURES = ("stripes", "checks", "dots", "noise")
MOTIONS = (
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "growing",
    "shrinking",
    "rotating",
    "entering from the left",
    "entering from the right",
    "leaving to the left",
    "leaving to the right",
)
MAX_OBJECTS = 4
COUNT_WORDS = ("one", "two", "three", "four")
_GROWTH = (0.5, 1.0)  # scale at the start and end of "growing"; reversed for "shrinking"


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its look, and its path on screen from the first frame to the last (linear between)."""

    colour: str
    shape: str
    motion: str
    texture: str
    radius: float  # pixels at scale 1; every shape fits in this circle
    start: tuple[float, float]  # centre (x, y) on screen in the first frame
    end: tuple[float, float]  # centre (x, y) on screen in the last frame
    scale: tuple[float, float] = (1.0, 1.0)
    angle: tuple[float, float] = (0.0, 0.0)  # degrees, counter-clockwise
    texture_seed: int = 0


@dataclass(frozen=True)
class Scene:
    """Objects back to front (object i is painted over objects before it and gets label id i + 1)."""

    objects: tuple[ObjectSpec, ...]
    pan: tuple[float, float] = (0.0, 0.0)  # camera displacement (x, y) in pixels over the whole clip
    background_seed: int = 0


def sample_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random scene of 1-4 objects with distinct colours over a slowly panning textured background."""
    short = min(height, width)
    direction = rng.uniform(0, 2 * np.pi)
    magnitude = rng.uniform(0.03, 0.08) * short
    pan = (float(magnitude * np.cos(direction)), float(magnitude * np.sin(direction)))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = [list(COLOURS)[i] for i in rng.choice(len(COLOURS), size=count, replace=False)]
    objects = tuple(_sample_object(rng, colour, height, width, pan) for colour in colours)
    return Scene(objects=objects, pan=pan, background_seed=int(rng.integers(2**31)))


def _sample_object(
    rng: np.random.Generator, colour: str, height: int, width: int, pan: tuple[float, float]
) -> ObjectSpec:
    shape = str(rng.choice(SHAPES))
    motions = [m for m in MOTIONS if not (shape == "circle" and m == "rotating")]
    motion = str(rng.choice(motions))
    radius = float(rng.uniform(0.12, 0.18) * min(height, width))
    scale = {"growing": _GROWTH, "shrinking": _GROWTH[::-1]}.get(motion, (1.0, 1.0))
    tilt = float(rng.uniform(-20, 20))
    turn = float(rng.choice([-1, 1]) * rng.uniform(120, 200)) if motion == "rotating" else 0.0
    start, end = _path(rng, motion, radius * max(scale), height, width, pan)
    return ObjectSpec(
        colour=colour,
        shape=shape,
        motion=motion,
        texture=str(rng.choice(TEXTURES)),
        radius=radius,
        start=start,
        end=end,
        scale=scale,
        angle=(tilt, tilt + turn),
        texture_seed=int(rng.integers(2**31)),
    )


def _path(
    rng: np.random.Generator, motion: str, extent: float, height: int, width: int, pan: tuple[float, float]
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and end centres: translations cross 35-55% of the frame inside it; objects that enter or
    leave are wholly outside in the first or last frame; the others stand still in the world, so the
    camera's pan carries them (end = start - pan) and they stay wholly in view."""
    size = {"x": width, "y": height}

    def inside(axis: str, margin: float = 0.0) -> float:
        return float(rng.uniform(extent + margin, size[axis] - extent - margin))

    if motion.startswith("moving"):
        axis = "x" if motion in ("moving left", "moving right") else "y"
        travel = rng.uniform(0.35, 0.55) * size[axis]
        low = float(rng.uniform(extent, size[axis] - extent - travel))
        a, b = (low, low + travel) if motion in ("moving right", "moving down") else (low + travel, low)
        other = inside("y" if axis == "x" else "x")
        return ((a, other), (b, other)) if axis == "x" else ((other, a), (other, b))
    outside = {"left": -extent - 1.0, "right": width + extent + 1.0}
    if motion.startswith("entering"):
        side = motion.rsplit(" ", 1)[1]
        y = inside("y")
        stop = rng.uniform(extent, 0.7 * width)
        return (outside[side], y), (float(stop if side == "right" else width - stop), y)
    if motion.startswith("leaving"):
        side = motion.rsplit(" ", 1)[1]
        y = inside("y")
        go = rng.uniform(extent, 0.7 * width)
        return (float(go if side == "right" else width - go), y), (outside[side], y)
    lo = [extent + max(0.0, p) for p in pan]
    hi = [s - extent + min(0.0, p) for s, p in zip((width, height), pan)]
    start = (float(rng.uniform(lo[0], hi[0])), float(rng.uniform(lo[1], hi[1])))
    return start, (start[0] - pan[0], start[1] - pan[1])


def caption(scene: Scene) -> str:
    """'two objects: a red circle moving left and a blue square growing' (objects in colour order)."""
    order = list(COLOURS)
    objects = sorted(scene.objects, key=lambda o: order.index(o.colour))
    phrases = [f"a {o.colour} {o.shape} {o.motion}" for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    noun = "object" if len(objects) == 1 else "objects"
    return f"{COUNT_WORDS[len(objects) - 1]} {noun}: {listed}"
