"""Long synthetic videos with questions whose answers need the whole video (TrajVLM's data at demo size).

Objects enter and leave at their own times and change direction along the way, so no window of the video
holds every answer: which colour enters last, how many shapes appear in all, whether one appears before
another, which shape is moving in a given direction at the end. Answers are one word. Drawn with the
`shapes` generator's sprites and backgrounds (`synth_render`); the label maps are exact, as there.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from trajtok.data.synth_render import make_background, make_sprite, sprite_placement
from trajtok.data.synth_scene import COLOURS, COUNT_WORDS, SHAPES, TEXTURES, ObjectSpec

DIRECTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
QUESTION_TYPES = ("last_entry", "count", "order", "final_motion")
MIN_OBJECTS, MAX_OBJECTS = 2, 4
_MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class TimedObject:
    """An object shown from frame `appear` to `vanish` (inclusive) along straight legs between waypoints."""

    look: ObjectSpec  # colour, shape, texture, radius and tilt (its path fields are unused)
    appear: int
    vanish: int
    waypoints: tuple[tuple[int, float, float], ...]  # (frame, x, y), from `appear` to `vanish`
    directions: tuple[str, ...]  # the direction of each leg

    def centre(self, frame: int) -> tuple[float, float]:
        times = [w[0] for w in self.waypoints]
        return (
            float(np.interp(frame, times, [w[1] for w in self.waypoints])),
            float(np.interp(frame, times, [w[2] for w in self.waypoints])),
        )


@dataclass(frozen=True)
class TimedScene:
    objects: tuple[TimedObject, ...]  # back to front: object i gets label id i + 1
    frames: int
    background_seed: int


def sample_timed_scene(rng: np.random.Generator, frames: int, height: int, width: int) -> TimedScene:
    """2-4 objects of distinct colours entering at well-separated times, each on 1-3 straight legs."""
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    gap = max(2, frames // 10)
    for _ in range(_MAX_ATTEMPTS):
        appear = np.sort(rng.integers(0, int(0.55 * frames) + 1, size=count))
        if np.all(np.diff(appear) >= gap) and appear[-1] >= frames // 8:  # the last after the first 1/8
            break
    else:
        raise RuntimeError(f"no {count} entry times {gap} frames apart in {frames} frames")
    colours = [list(COLOURS)[i] for i in rng.choice(len(COLOURS), size=count, replace=False)]
    order = rng.permutation(count)  # painting order independent of entry order
    objects = tuple(_timed_object(rng, colours[i], int(appear[i]), frames, height, width) for i in order)
    return TimedScene(objects, frames, int(rng.integers(2**31)))


def _timed_object(
    rng: np.random.Generator, colour: str, appear: int, frames: int, height: int, width: int
) -> TimedObject:
    last = frames - 1
    stays = rng.random() < 0.5 or appear + int(0.3 * frames) >= last
    vanish = last if stays else int(rng.integers(appear + int(0.3 * frames), last + 1))
    radius = float(rng.uniform(0.12, 0.16) * min(height, width))
    look = ObjectSpec(
        colour=colour,
        shape=str(rng.choice(SHAPES)),
        motion="",
        texture=str(rng.choice(TEXTURES)),
        radius=radius,
        start=(0.0, 0.0),
        end=(0.0, 0.0),
        angle=(float(rng.uniform(-20, 20)),) * 2,
        texture_seed=int(rng.integers(2**31)),
    )
    legs = int(rng.integers(1, 4))  # of about equal length, so every leg lasts long enough to be seen
    bounds = np.linspace(appear, vanish, legs + 1)
    jitter = rng.uniform(-0.2, 0.2, legs - 1) * (vanish - appear) / legs
    times = [appear, *np.round(bounds[1:-1] + jitter).astype(int).tolist(), vanish]
    low, high = np.array([radius, radius]), np.array([width - radius, height - radius])
    point = rng.uniform(low, high)
    waypoints, directions = [(appear, *point.tolist())], []
    for end in times[1:]:
        travel = rng.uniform(0.25, 0.4) * min(height, width)
        room = {name: _room(point, np.array(step), low, high) for name, step in DIRECTIONS.items()}
        fitting = [name for name, space in room.items() if space >= travel]
        name = str(rng.choice(fitting)) if fitting else max(room, key=room.get)
        point = point + np.array(DIRECTIONS[name]) * min(travel, room[name])
        waypoints.append((end, *point.tolist()))
        directions.append(name)
    return TimedObject(look, appear, vanish, tuple(waypoints), tuple(directions))


def _room(point: np.ndarray, step: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """How far the centre can go from `point` along the unit axis `step` inside [low, high]."""
    axis = int(np.flatnonzero(step)[0])
    return float(high[axis] - point[axis] if step[axis] > 0 else point[axis] - low[axis])


def render_timed_scene(scene: TimedScene, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and exact labels (T, H, W) uint16 (object i = i + 1, 0 = background)."""
    background = make_background(scene.background_seed, height, width)
    sprites = [make_sprite(obj.look) for obj in scene.objects]
    video = np.repeat(background[None], scene.frames, axis=0)
    labels = np.zeros((scene.frames, height, width), np.uint16)
    for t in range(scene.frames):
        for k, (obj, (texture, mask)) in enumerate(zip(scene.objects, sprites)):
            if not obj.appear <= t <= obj.vanish:
                continue
            placement = sprite_placement(texture.shape[0], obj.look.radius, obj.look.angle[0], obj.centre(t))
            covered = cv2.warpAffine(mask, placement, (width, height), flags=cv2.INTER_LINEAR) >= 128
            colour = cv2.warpAffine(texture, placement, (width, height), flags=cv2.INTER_LINEAR)
            video[t][covered] = colour[covered]
            labels[t][covered] = k + 1
    return video, labels


def questions(scene: TimedScene, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(type, question, one-word answer) for each type the scene can answer unambiguously."""
    objects = sorted(scene.objects, key=lambda o: o.appear)
    name = {id(o): f"the {o.look.colour} {o.look.shape}" for o in objects}
    asked = [
        ("last_entry", "what colour is the shape that enters last?", objects[-1].look.colour),
        ("count", "how many shapes appear in all?", COUNT_WORDS[len(objects) - 1]),
    ]
    first, second = (objects[i] for i in rng.choice(len(objects), size=2, replace=False))
    answer = "yes" if first.appear < second.appear else "no"
    asked.append(("order", f"does {name[id(first)]} appear before {name[id(second)]}?", answer))
    at_end = [o for o in objects if o.vanish == scene.frames - 1]
    final = [o.directions[-1] for o in at_end]
    unique = sorted(d for d in set(final) if final.count(d) == 1)
    if unique:
        direction = str(rng.choice(unique))
        shape = at_end[final.index(direction)].look.shape
        asked.append(("final_motion", f"which shape is moving {direction} at the end?", shape))
    return asked


def describe(scene: TimedScene) -> list[dict]:
    """Each object's look, its visible frames and its legs (scenes.jsonl)."""
    return [
        {
            "id": k + 1,
            "colour": o.look.colour,
            "shape": o.look.shape,
            "appear": o.appear,
            "vanish": o.vanish,
            "directions": list(o.directions),
        }
        for k, o in enumerate(scene.objects)
    ]
