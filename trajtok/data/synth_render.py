"""Drawing a synthetic scene: textured sprites over a panning textured background, with exact labels.

Each object is drawn once as a sprite (a texture and a hard shape mask on a small canvas) and placed in
every frame by one affine warp (scale, rotation, translation), so its texture moves and turns with it.
Compositing is hard-edged in painter's order, which makes the label map exact: a pixel's label is the
object whose colour it shows.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from trajtok.data.synth_scene import COLOURS, ObjectSpec, Scene

_POLYGON_POINTS = 48  # vertices of a circle


def render_scene(
    scene: Scene, frames: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8, labels (T, H, W) uint16 and each object's drawn area (T, N) in pixels.

    The drawn area counts an object's pixels inside the frame as if nothing covered it; comparing it with
    the labels tells how much of the object is hidden.
    """
    margin = math.ceil(max(abs(p) for p in scene.pan)) + 2
    background = make_background(scene.background_seed, height + 2 * margin, width + 2 * margin)
    sprites = [make_sprite(obj) for obj in scene.objects]
    video = np.empty((frames, height, width, 3), np.uint8)
    labels = np.zeros((frames, height, width), np.uint16)
    drawn = np.zeros((frames, len(scene.objects)), np.int64)
    for t in range(frames):
        u = t / (frames - 1) if frames > 1 else 0.0
        shift = np.array([[1, 0, -margin - scene.pan[0] * u], [0, 1, -margin - scene.pan[1] * u]])
        video[t] = cv2.warpAffine(background, shift, (width, height), flags=cv2.INTER_LINEAR)
        for k, (obj, (texture, mask)) in enumerate(zip(scene.objects, sprites)):
            placement = _placement(obj, texture.shape[0], u)
            covered = cv2.warpAffine(mask, placement, (width, height), flags=cv2.INTER_LINEAR) >= 128
            colour = cv2.warpAffine(texture, placement, (width, height), flags=cv2.INTER_LINEAR)
            video[t][covered] = colour[covered]
            labels[t][covered] = k + 1
            drawn[t, k] = np.count_nonzero(covered)
    return video, labels, drawn


def _placement(obj: ObjectSpec, size: int, u: float) -> np.ndarray:
    """Affine map from sprite pixels to screen pixels at clip progress u in [0, 1]."""
    scale = obj.scale[0] + (obj.scale[1] - obj.scale[0]) * u
    angle = obj.angle[0] + (obj.angle[1] - obj.angle[0]) * u
    x = obj.start[0] + (obj.end[0] - obj.start[0]) * u
    y = obj.start[1] + (obj.end[1] - obj.start[1]) * u
    return sprite_placement(size, obj.radius * scale, angle, (x, y))


def sprite_placement(size: int, radius: float, angle: float, centre: tuple[float, float]) -> np.ndarray:
    """Affine map from a sprite of `size` pixels to screen pixels: drawn at `radius`, turned by `angle`
    degrees, centred on `centre` (x, y)."""
    middle = (size - 1) / 2
    matrix = cv2.getRotationMatrix2D((middle, middle), angle, radius / _sprite_radius(size))
    matrix[:, 2] += (centre[0] - middle, centre[1] - middle)
    return matrix


def _sprite_radius(size: int) -> float:
    return size / 2 - 2


def make_sprite(obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray]:
    """Texture (S, S, 3) uint8 and mask (S, S) uint8 at the object's largest size, so warps only shrink."""
    size = 2 * math.ceil(obj.radius * max(obj.scale)) + 4
    centre, radius = (size - 1) / 2, _sprite_radius(size)
    points = np.round((_outline(obj.shape) * radius + centre) * 16).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [points], 255, lineType=cv2.LINE_8, shift=4)
    rng = np.random.default_rng(obj.texture_seed)
    yy, xx = (np.mgrid[0:size, 0:size] - centre) / radius  # [-1, 1] over the shape
    tone = _pattern(obj.texture, rng, xx, yy, size)
    base = np.array(COLOURS[obj.colour], np.float32)
    dark, light = 0.5 * base, 0.8 * base + 0.2 * 255
    texture = dark + (light - dark) * tone[..., None] + rng.normal(0, 6, (size, size, 3))
    return np.clip(texture, 0, 255).astype(np.uint8), mask


def _outline(shape: str) -> np.ndarray:
    """Polygon (N, 2) of a shape inscribed in the unit circle, y pointing down."""
    if shape == "circle":
        a = np.linspace(0, 2 * np.pi, _POLYGON_POINTS, endpoint=False)
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "square":
        return np.array([[-0.7, -0.7], [0.7, -0.7], [0.7, 0.7], [-0.7, 0.7]])
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if shape == "cross":
        arm, half = 0.95, 0.3
        quarter = [[half, -arm], [half, -half], [arm, -half]]
        turns = [np.array([[c, -s], [s, c]]) for c, s in ((1, 0), (0, 1), (-1, 0), (0, -1))]
        return np.concatenate([np.array(quarter) @ turn.T for turn in turns])
    raise ValueError(f"unknown shape '{shape}'")


def _pattern(texture: str, rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, size: int) -> np.ndarray:
    """Light/dark tone in [0, 1] over the sprite; 3-5 bands across the shape so it shows at 64 px."""
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    freq = rng.uniform(1.5, 2.5)  # cycles per radius
    if texture == "stripes":
        return (np.sin(2 * np.pi * freq * along) > 0).astype(np.float32)
    if texture == "checks":
        return ((np.floor(freq * along) + np.floor(freq * across)) % 2).astype(np.float32)
    if texture == "dots":
        return (np.cos(2 * np.pi * freq * along) + np.cos(2 * np.pi * freq * across) > 0.8).astype(np.float32)
    if texture == "noise":
        coarse = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)
    raise ValueError(f"unknown texture '{texture}'")


def make_background(seed: int, height: int, width: int) -> np.ndarray:
    """Low-saturation clutter (gratings, blotches, grey bars, grain) that objects' hues stand out from."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grey = np.zeros((height, width), np.float32)
    for _ in range(3):
        theta, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
        phase = 2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + rng.uniform(0, 2 * np.pi)
        grey += rng.uniform(0.3, 1.0) * np.sin(phase)
    blotches = rng.normal(0, 1, (max(height // 16, 2), max(width // 16, 2))).astype(np.float32)
    grey += 1.5 * cv2.resize(blotches, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 7))):
        (x0, y0), (x1, y1) = rng.uniform(0, [width, height], (2, 2)).astype(int).tolist()
        cv2.line(grey, (x0, y0), (x1, y1), float(rng.uniform(-3, 3)), int(rng.integers(2, 6)))
    grey = 70 + 110 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    grey += rng.normal(0, 6, grey.shape)
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)
