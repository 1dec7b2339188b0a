"""The second synthetic generator, `blobs`: drawn unlike `shapes` in every way a labeller could overfit to.

`shapes` (synth_scene + synth_render) paints hard-edged polygons in 6 fixed hues with banded textures,
moving on straight lines over grey clutter under a camera that pans. Here instead:
- shapes are smooth random outlines (blobs, elongated ellipses, rings with a hole the background shows
  through), 0.08-0.22 of the short side, 1-5 per clip, free to pass in front of each other;
- colours are drawn from 8 hue ranges at varied saturation and brightness, and textures are smooth
  (a gradient into a neighbouring hue, mottling, speckles) rather than two-tone bands;
- the background is coloured: a two-colour gradient with soft patches and grain, never one flat tone;
- motion is curved or uneven (circling, zigzagging, bouncing, easing in and out, spinning), the camera
  pans and zooms, the light drifts over the clip, and edges are soft (anti-aliased alpha).
The label map stays exact: a pixel belongs to the front-most object whose alpha there is at least 0.5.
Scenes have the same interface as `shapes` (objects with colour, shape, motion, texture; a pan), so
synth.py samples, checks visibility, captions and writes them the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

HUES: dict[str, tuple[float, float]] = {  # OpenCV hue ranges (0-180) that read as one colour word
    "red": (-4, 4),
    "orange": (9, 15),
    "yellow": (24, 32),
    "green": (45, 75),
    "teal": (85, 95),
    "blue": (105, 120),
    "purple": (130, 145),
    "pink": (158, 170),
}
SHAPES = ("blob", "ellipse", "ring")
TEXTURES = ("gradient", "mottled", "speckled")
MOTIONS = (
    "circling",
    "zigzagging",
    "bouncing",
    "sliding left",
    "sliding right",
    "rising",
    "falling",
    "spinning",
    "resting",
)
MAX_OBJECTS = 5
_COUNT_WORDS = ("one", "two", "three", "four", "five")
_OUTLINE_POINTS = 96


@dataclass(frozen=True)
class BlobSpec:
    """One object; its centre on screen at clip progress u is `position(u)` (see `_position`)."""

    colour: str
    shape: str
    motion: str
    texture: str
    hsv: tuple[float, float, float]  # OpenCV HSV of its base colour
    radius: float  # pixels: the outline fits in this circle
    centre: tuple[float, float]  # where its path is anchored (screen pixels)
    reach: tuple[float, float]  # path extent (x, y) in pixels, meaning depends on the motion
    phase: float  # radians: where on a circling / zigzag / bouncing path it starts
    angle: tuple[float, float]  # degrees at the start and end of the clip
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of the outline's 2nd..5th harmonics
    texture_seed: int


@dataclass(frozen=True)
class BlobScene:
    """Objects back to front (object i gets label id i + 1); camera pan (pixels) and zoom over the clip."""

    objects: tuple[BlobSpec, ...]
    pan: tuple[float, float]
    zoom: float  # scale of the world at the end of the clip relative to its start
    light: float  # brightness at the end relative to the start
    background_seed: int


def sample_scene(rng: np.random.Generator, height: int, width: int) -> BlobScene:
    """A random scene of 1-5 objects with distinct colour words over a coloured, moving background."""
    short = min(height, width)
    direction = rng.uniform(0, 2 * np.pi)
    magnitude = rng.uniform(0.0, 0.1) * short
    pan = (float(magnitude * np.cos(direction)), float(magnitude * np.sin(direction)))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = [list(HUES)[i] for i in rng.choice(len(HUES), size=count, replace=False)]
    objects = tuple(_sample_object(rng, colour, height, width) for colour in colours)
    return BlobScene(
        objects=objects,
        pan=pan,
        zoom=float(rng.uniform(0.9, 1.15)),
        light=float(rng.uniform(0.85, 1.15)),
        background_seed=int(rng.integers(2**31)),
    )


def _sample_object(rng: np.random.Generator, colour: str, height: int, width: int) -> BlobSpec:
    short = min(height, width)
    radius = float(rng.uniform(0.08, 0.22) * short)
    motion = str(rng.choice(MOTIONS))
    low, high = HUES[colour]
    hsv = (float(rng.uniform(low, high)) % 180, float(rng.uniform(140, 245)), float(rng.uniform(130, 245)))
    reach = {
        "circling": (rng.uniform(0.12, 0.22) * short,) * 2,
        "zigzagging": (rng.uniform(0.3, 0.5) * width, rng.uniform(0.06, 0.12) * short),
        "bouncing": (rng.uniform(0.1, 0.3) * width, rng.uniform(0.15, 0.3) * height),
        "sliding left": (rng.uniform(0.3, 0.5) * width, 0.0),
        "sliding right": (rng.uniform(0.3, 0.5) * width, 0.0),
        "rising": (0.0, rng.uniform(0.3, 0.5) * height),
        "falling": (0.0, rng.uniform(0.3, 0.5) * height),
    }.get(motion, (0.0, 0.0))
    reach = (float(reach[0]), float(reach[1]))
    low = [radius + 1 + r / 2 for r in reach]  # the whole path stays in view where the frame allows
    high = [max(extent - lo, lo + 1) for extent, lo in zip((width, height), low)]
    centre = (float(rng.uniform(low[0], high[0])), float(rng.uniform(low[1], high[1])))
    tilt = float(rng.uniform(0, 360))
    turn = float(rng.choice([-1, 1]) * rng.uniform(90, 180)) if motion == "spinning" else 0.0
    if motion == "spinning" and rng.uniform() < 0.5:
        turn *= 1.5
    harmonics = tuple((float(rng.uniform(0.05, 0.22)), float(rng.uniform(0, 2 * np.pi))) for _ in range(4))
    return BlobSpec(
        colour=colour,
        shape=str(rng.choice(SHAPES)),
        motion=motion,
        texture=str(rng.choice(TEXTURES)),
        hsv=hsv,
        radius=radius,
        centre=centre,
        reach=reach,
        phase=float(rng.uniform(0, 2 * np.pi)),
        angle=(tilt, tilt + turn),
        harmonics=harmonics,
        texture_seed=int(rng.integers(2**31)),
    )


def _position(obj: BlobSpec, u: float) -> tuple[float, float]:
    """Centre on screen at clip progress u in [0, 1]; uneven in time (eased, accelerating, periodic)."""
    (cx, cy), (rx, ry) = obj.centre, obj.reach
    ease = u * u * (3 - 2 * u)  # starts and stops gently
    if obj.motion == "circling":
        a = obj.phase + 1.6 * np.pi * u
        return cx + rx * math.cos(a), cy + ry * math.sin(a)
    if obj.motion == "zigzagging":
        return cx + rx * (u - 0.5), cy + ry * math.sin(obj.phase + 4 * np.pi * u)
    if obj.motion == "bouncing":
        return cx + rx * (u - 0.5), cy + ry * (0.5 - abs(math.sin(2 * np.pi * u + obj.phase)))
    if obj.motion in ("sliding left", "sliding right"):
        sign = 1 if obj.motion == "sliding right" else -1
        return cx + sign * rx * (ease - 0.5), cy
    if obj.motion in ("rising", "falling"):
        sign = 1 if obj.motion == "falling" else -1
        return cx, cy + sign * ry * (u * u - 0.5)  # accelerating
    return cx, cy


def render_scene(
    scene: BlobScene, frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8, labels (T, H, W) uint16 and each object's drawn area (T, N) in pixels,
    as `synth_render.render_scene`. `resting` objects stay put in the world: the camera moves them."""
    margin = math.ceil(max(abs(p) for p in scene.pan) + 0.2 * max(height, width)) + 2
    background = _background(scene.background_seed, height + 2 * margin, width + 2 * margin)
    sprites = [_sprite(obj) for obj in scene.objects]
    video = np.empty((frames, height, width, 3), np.uint8)
    labels = np.zeros((frames, height, width), np.uint16)
    drawn = np.zeros((frames, len(scene.objects)), np.int64)
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    for t in range(frames):
        u = t / (frames - 1) if frames > 1 else 0.0
        zoom = 1 + (scene.zoom - 1) * u
        shift = -np.array(scene.pan) * u
        world = _camera(zoom, centre, centre + margin, shift)  # background pixels -> screen
        canvas = cv2.warpAffine(background, world, (width, height), flags=cv2.INTER_LINEAR).astype(np.float32)
        for k, (obj, (texture, alpha)) in enumerate(zip(scene.objects, sprites)):
            if obj.motion == "resting":
                x, y = zoom * (np.array(obj.centre) - centre) + centre + shift
                scale = zoom
            else:
                (x, y), scale = _position(obj, u), 1.0
            placement = _placement(obj, texture.shape[0], u, (x, y), scale)
            a = cv2.warpAffine(alpha, placement, (width, height), flags=cv2.INTER_LINEAR)
            colour = cv2.warpAffine(texture, placement, (width, height), flags=cv2.INTER_LINEAR)
            canvas = canvas * (1 - a[..., None]) + colour * a[..., None]
            covered = a >= 0.5
            labels[t][covered] = k + 1
            drawn[t, k] = np.count_nonzero(covered)
        light = 1 + (scene.light - 1) * u
        video[t] = np.clip(canvas * light, 0, 255).astype(np.uint8)
    return video, labels, drawn


def _camera(
    zoom: float, screen_centre: np.ndarray, world_centre: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """Affine map from background pixels to screen pixels: zoom about the centre, then shift."""
    matrix = np.zeros((2, 3))
    matrix[0, 0] = matrix[1, 1] = zoom
    matrix[:, 2] = screen_centre + shift - zoom * world_centre
    return matrix


def _placement(obj: BlobSpec, size: int, u: float, at: tuple[float, float], scale: float) -> np.ndarray:
    """Affine map from sprite pixels to screen pixels: rotate and scale about the sprite centre, move."""
    middle = (size - 1) / 2
    angle = obj.angle[0] + (obj.angle[1] - obj.angle[0]) * u
    matrix = cv2.getRotationMatrix2D((middle, middle), angle, scale * obj.radius / (size / 2 - 3))
    matrix[:, 2] += (at[0] - middle, at[1] - middle)
    return matrix


def _sprite(obj: BlobSpec) -> tuple[np.ndarray, np.ndarray]:
    """Texture (S, S, 3) float32 RGB and soft alpha (S, S) float32 in [0, 1] at twice the object's size
    (warps shrink, which keeps edges smooth)."""
    size = 2 * math.ceil(2 * obj.radius) + 6
    middle, radius = (size - 1) / 2, size / 2 - 3
    outline = _outline(obj) * radius + middle
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    if obj.shape == "ring":
        hole = (outline - middle) * 0.45 + middle
        cv2.fillPoly(mask, [np.round(hole * 16).astype(np.int32)], 0, lineType=cv2.LINE_AA, shift=4)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 1.0)
    return _texture(obj, size), alpha


def _outline(obj: BlobSpec) -> np.ndarray:
    """Polygon (N, 2) inside the unit circle: a smooth random blob, or an ellipse of aspect 0.4-0.6."""
    a = np.linspace(0, 2 * np.pi, _OUTLINE_POINTS, endpoint=False)
    if obj.shape == "ellipse":
        aspect = 0.4 + 0.2 * (obj.harmonics[0][0] - 0.05) / 0.17
        return np.stack([np.cos(a), aspect * np.sin(a)], 1)
    r = 1 + sum(amp * np.cos((k + 2) * a + phase) for k, (amp, phase) in enumerate(obj.harmonics))
    r = r / r.max()
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _texture(obj: BlobSpec, size: int) -> np.ndarray:
    rng = np.random.default_rng(obj.texture_seed)
    h, s, v = obj.hsv
    yy, xx = (np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2)
    hsv = np.empty((size, size, 3), np.float32)
    hsv[..., 0], hsv[..., 1], hsv[..., 2] = h, s, v
    if obj.texture == "gradient":  # hue turns and light falls across the object; the mean stays in range
        theta = rng.uniform(0, 2 * np.pi)
        along = np.clip((xx * np.cos(theta) + yy * np.sin(theta) + 1) / 2, 0, 1)
        low, high = HUES[obj.colour]
        inward = -1.0 if (h - (low + high) / 2 + 90) % 180 - 90 > 0 else 1.0
        hsv[..., 0] = (h + inward * rng.uniform(6, 10) * along) % 180
        hsv[..., 2] = v * (1 - 0.45 * along)
    elif obj.texture == "mottled":  # soft light and dark patches
        coarse = rng.uniform(-1, 1, (5, 5)).astype(np.float32)
        hsv[..., 2] = v * (1 + 0.35 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC))
    else:  # speckled: round flecks, darker and paler than the body
        flecks = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(6, 14))):
            x, y = rng.uniform(0, size, 2)
            cv2.circle(flecks, (int(x), int(y)), max(1, int(rng.uniform(0.04, 0.1) * size)), 1.0, -1)
        hsv[..., 1] = s * (1 - 0.5 * flecks)
        hsv[..., 2] = v * (1 - 0.4 * flecks)
    hsv[..., 1:] = np.clip(hsv[..., 1:], 0, 255)
    rgb = cv2.cvtColor(np.round(hsv).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    return rgb + rng.normal(0, 4, rgb.shape).astype(np.float32)


def _background(seed: int, height: int, width: int) -> np.ndarray:
    """A coloured two-tone gradient with soft patches and grain, dimmer and less saturated than objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    tones = [np.array([rng.uniform(0, 180), rng.uniform(20, 90), rng.uniform(70, 190)]) for _ in range(2)]
    hsv = tones[0] + (tones[1] - tones[0]) * along[..., None]
    for channel, amplitude in ((0, 6.0), (2, 28.0)):  # soft patches of other hue and brightness
        patches = rng.normal(0, 1, (max(height // 24, 2), max(width // 24, 2))).astype(np.float32)
        hsv[..., channel] += amplitude * cv2.resize(patches, (width, height), interpolation=cv2.INTER_CUBIC)
    hsv[..., 0] %= 180
    hsv[..., 1:] = np.clip(hsv[..., 1:], 0, 255)
    rgb = cv2.cvtColor(np.round(hsv).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    return np.clip(rgb + rng.normal(0, 5, rgb.shape), 0, 255).astype(np.uint8)


def caption(scene: BlobScene) -> str:
    """'two objects: an orange ring circling and a teal blob resting' (objects in hue order)."""
    order = list(HUES)
    objects = sorted(scene.objects, key=lambda o: order.index(o.colour))
    phrases = [f"{'an' if o.colour == 'orange' else 'a'} {o.colour} {o.shape} {o.motion}" for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    noun = "object" if len(objects) == 1 else "objects"
    return f"{_COUNT_WORDS[len(objects) - 1]} {noun}: {listed}"
