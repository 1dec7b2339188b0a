"""Evaluation sets: the clips a benchmark is scored on, from a manifest or from shards, in one fixed order.

Every rank builds the same list (manifest order; or shard order, then tar order), so an index names the same
clip everywhere and features computed across ranks can be put back in order. What scoring needs besides the
pixels (captions, the class `label`, where ground-truth label maps are) is read up front without decoding;
frames are decoded on demand with the protocol of `ClipConfig`: `clip.frames` frames from the clip window
("middle" = bin centres), the centred square of the short side resized to `clip.size`.

A manifest row's class is its `label` column and its ground truth the label map named by `gt_labels` (what
`trajtok synth` writes). A shard sample's class is `extra.label` in its JSON, and its labels are its own
`labels.npz` (pseudo-labels, unless the shards were made from ground truth).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import torch
from torch.utils.data import Dataset

from trajtok.config import ClipConfig
from trajtok.data.augment import center_clip
from trajtok.data.clips import cut_clip
from trajtok.data.labels import load_labels
from trajtok.data.loader import expand_shards
from trajtok.data.manifest import ManifestRow, read_manifest
from trajtok.data.qa import QAItem
from trajtok.data.sample import decode_sample
from trajtok.data.video import open_video
from trajtok.errors import ConfigError

GT_COLUMN = "gt_labels"
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class ShardSample:
    """Where one sample's entries lie in a tar: name -> (offset, size), so it is read without a scan."""

    url: str
    key: str
    entries: dict[str, tuple[int, int]]


@dataclass(frozen=True)
class EvalItem:
    """One clip of the set and what it is scored against."""

    key: str
    captions: list[str]
    label: Any  # class name or index; None when the source gives none
    source: ManifestRow | ShardSample


def is_shard_spec(location: str) -> bool:
    """Shard patterns name `.tar` files; anything else is a manifest."""
    return ".tar" in location


def read_items(location: str) -> list[EvalItem]:
    """The clips of a manifest file or a shard pattern (`data/val-{000..003}.tar`), in order."""
    if not location:
        raise ConfigError("evaluation data: set data.manifest or data.eval_shards")
    if is_shard_spec(location):
        urls = expand_shards(location)
        if not urls:
            raise ConfigError(f"evaluation shards '{location}': no shard matches")
        return [item for url in urls for item in _shard_items(url)]
    rows = read_manifest(location, strict=True).rows
    if not rows:
        raise ConfigError(f"{location}: the manifest lists no clips")
    return [
        EvalItem(row.id or f"line{row.line}", row.captions, row.extra.get(LABEL_COLUMN), row) for row in rows
    ]


def _shard_items(url: str) -> list[EvalItem]:
    samples: dict[str, dict[str, tuple[int, int]]] = {}
    metas: dict[str, dict[str, Any]] = {}
    try:
        with fsspec.open(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, _, entry = name.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                samples.setdefault(key, {})[entry] = (member.offset_data, member.size)
                if entry == "json":
                    metas[key] = json.loads(tar.extractfile(member).read())
    except (OSError, tarfile.TarError, json.JSONDecodeError) as err:
        raise ConfigError(f"evaluation shard {url}: cannot be read ({err})") from None
    items = []
    for key, entries in samples.items():
        if key not in metas:
            raise ConfigError(f"evaluation shard {url}: sample {key} has no json entry")
        meta = metas[key]
        label = meta.get("extra", {}).get(LABEL_COLUMN)
        items.append(EvalItem(key, list(meta.get("captions", [])), label, ShardSample(url, key, entries)))
    return items


class EvalClips(Dataset):
    """Decoded clips of an evaluation set: `{"frames": (T, 3, S, S) uint8}` plus `"labels"` (T, S/4, S/4)
    int64 when `with_labels` (segmentation quality; (T, S, S) with `full_labels`, for label maps made at
    the clip's size)."""

    def __init__(
        self, items: list[EvalItem], clip: ClipConfig, with_labels: bool = False, full_labels: bool = False
    ):
        self.items, self.clip, self.with_labels, self.full_labels = items, clip, with_labels, full_labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        if isinstance(item.source, ShardSample):
            frames, labels = self._from_shard(item.source)
        else:
            frames, labels = self._from_video(item.source)
        frames, labels = center_clip(frames, labels, self.clip.size, labels_on_grid=not self.full_labels)
        out = {"frames": torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)}
        if self.with_labels:
            out["labels"] = torch.from_numpy(labels.astype(np.int64))
        return out

    def _from_video(self, row: ManifestRow) -> tuple[np.ndarray, np.ndarray | None]:
        with open_video(row.path, name=row.video) as video:
            info = video.info
            start, end = row.start or 0.0, info.duration if row.end is None else row.end
            # cut as a shard's clip is (same frames, seeded by the clip), at the video's size: the label
            # maps are; `center_clip` brings both to clip.size
            clip = cut_clip(video, row.path, 0, start, end, self.clip, size=(info.height, info.width))
            frames, indices = clip.frames, video.index_at(clip.timestamps)
        if not self.with_labels:
            return frames, None
        if GT_COLUMN not in row.extra:
            raise ConfigError(f"line {row.line}: no '{GT_COLUMN}' column naming the clip's label map")
        labels = load_labels(row.resolve(row.extra[GT_COLUMN]))
        if labels.shape[1:] != frames.shape[1:3] or len(labels) <= indices.max():
            raise ConfigError(
                f"line {row.line}: label map {labels.shape} does not cover the video's frames {frames.shape}"
            )
        return frames, labels[indices]

    def _from_shard(self, sample: ShardSample) -> tuple[np.ndarray, np.ndarray | None]:
        raw: dict[str, Any] = {"__key__": sample.key}
        with fsspec.open(sample.url, "rb") as stream:
            for entry, (offset, size) in sample.entries.items():
                stream.seek(offset)
                raw[entry] = stream.read(size)
        clip = decode_sample(raw)
        frames, labels = clip.frames, clip.labels
        if self.with_labels and labels is None:
            raise ConfigError(f"sample {sample.key} of {sample.url}: unlabelled, nothing to score against")
        count = len(frames)
        if count < self.clip.frames:
            raise ConfigError(
                f"sample {sample.key} of {sample.url}: {count} frames; clip.frames is {self.clip.frames}"
            )
        keep = np.linspace(0, count - 1, self.clip.frames).round().astype(np.int64)  # the clip's whole span
        return frames[keep], labels[keep] if self.with_labels else None


class QAClips(EvalClips):
    """A QA set's clips (`trajtok.data.qa`), each with its `question`, `answer` and key."""

    def __init__(self, items: list[QAItem], clip: ClipConfig):
        super().__init__([EvalItem(item.key, [], None, item.row) for item in items], clip)
        self.qa = items

    def __getitem__(self, index: int) -> dict:
        item = self.qa[index]
        return {
            **super().__getitem__(index),
            "question": item.question,
            "answer": item.answer,
            "keys": item.key,
        }
