"""The training loader: WebDataset shards -> augmented batches of clips, label maps and captions.

How the data moves (each step is one function or class below):
- `expand_shards` (`trajtok.data.shard_urls`): brace patterns and globs -> shard URLs; any fsspec URL
  works (local, memory://, s3:// when the user installs the driver).
- `shard_sequence`: each reader reads its own endless, deterministic sequence of shards. Round r shuffles
  the whole list with (seed, epoch, r) and deals it out, so within a round no shard is read twice; with
  fewer shards than readers, each reader draws with its own seed instead. Shards are resampled, so a
  virtual epoch is `data.samples_per_epoch` samples, whatever the number of shards.
- `read_shard`: tar members grouped into raw samples; a truncated or unreadable shard is logged, counted
  and left.
- a seeded shuffle buffer per reader and kind; videos and images (T = 1) come from separate streams and a
  batch is all one kind (a batch must share T), chosen with probability `data.image_ratio`, the same
  draw on every rank.
- decode from bytes (`trajtok.data.sample.decode_sample`) and augment (`trajtok.data.augment`: the
  geometry here, the colour changes drawn here and applied on the training device by
  `trajtok.data.colour.apply_colour`, batch["colour"]) with an RNG seeded per sample, so skipping ahead
  (resume) needs no decoding. A sample that fails is logged,
  counted (`batch["skipped"]`, by reason) and replaced by the next one.

The order (`ReadOrder`) is the run's, not the ranks': global step n is made by the readers of group
n % phases, each giving global_batch / readers_per_step samples of its stream, and each rank takes its
block of them. Batches are built inside the workers (the DataLoader collates nothing), a worker per group
(or per several), and the DataLoader returns them in a fixed round-robin order. So the data position is
one number, the global steps done, and a resume is exact, on the same ranks or on any number of them that
divides readers_per_step (an elastic resume keeps the global batch). Skipping ahead reads only the JSON of
the samples it passes; a sample that would have failed to decode there shifts its stream by one sample,
which only a corrupt shard can cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from trajtok.config import JobConfig
from trajtok.data.augment import (
    AugmentParams,
    augment_clip,
    center_clip,
    colour_draws,
    draw_geometry,
    label_grid,
    place_labels,
)
from trajtok.data.colour import NO_COLOUR
from trajtok.data.device_decode import EncodedClip
from trajtok.data.label_batch import pack_labels
from trajtok.data.shard_urls import expand_shards
from trajtok.errors import ConfigError, TrajTokError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 1000  # a stream that yields nothing usable for this long is a configuration error


def stable_seed(*parts: int | str) -> int:
    """One integer seed from a tuple, stable across processes and Python runs (unlike `hash`)."""
    return int(np.random.SeedSequence([_as_int(p) for p in parts]).generate_state(1)[0])


def _as_int(part: int | str) -> int:
    return part if isinstance(part, int) else int.from_bytes(part.encode()[:8].ljust(8, b"\0"), "little")


def shard_sequence(urls: list[str], seed: int, epoch: int, reader: int, readers: int) -> Iterator[str]:
    """The endless shard order of reader `reader` of `readers`, the same every time for the same arguments."""
    for round_index in count():
        if len(urls) >= readers:
            order = list(urls)
            random.Random(stable_seed(seed, epoch, round_index)).shuffle(order)
            yield from order[reader::readers]
        else:
            yield random.Random(stable_seed(seed, epoch, round_index, reader)).choice(urls)


def read_shard(url: str, on_error) -> Iterator[dict]:
    """Raw samples (dicts of bytes keyed by extension, plus `__key__`, `__url__`) of one tar shard."""

    def opened():
        try:
            with fsspec.open(url, "rb") as stream:
                yield {"url": url, "stream": stream}
        except Exception as err:  # missing or unreadable shard: counted, the reader moves on
            on_error(url, f"cannot open shard: {err}")

    def handler(err: Exception) -> bool:
        detail = str(err.args[0] if err.args else err).split(" @ ")[0]  # webdataset appends the stream
        on_error(url, f"corrupt shard: {detail}")
        return False  # a broken tar stream cannot be resynchronised: leave the shard

    files = tar_file_expander(opened(), handler=handler)
    yield from group_by_keys(files, handler=handler)


def shuffled(samples: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    """A seeded shuffle buffer: fill, then yield a random element and put the next sample in its place."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


@dataclass
class StreamSpec:
    """One kind of sample (videos or images) with its shards and the frame count it yields."""

    kind: str  # "video" | "image"
    urls: list[str]
    frames: int


@dataclass(frozen=True)
class ReadOrder:
    """How a run's global sample order is laid out; fixed for the run (its checkpoints keep it).

    Readers are seeded streams (`_Reader`); `readers_per_step` of them make each global batch, each giving
    `global_batch / readers_per_step` samples, and the steps cycle over `phases` such groups (one loader
    worker each). Nothing here depends on the number of ranks: rank r of M takes a contiguous block of
    readers_per_step / M readers of every group, so a run resumed on any M that divides readers_per_step
    (with the same global batch) reads the same samples in the same steps.
    """

    phases: int
    readers_per_step: int
    global_batch: int

    @classmethod
    def for_job(cls, cfg: JobConfig, world_size: int) -> ReadOrder:
        """A new run's order: a group per loader worker, `data.readers_per_step` readers (default: one per
        rank, which is the most ranks a resume can use; more readers allow more)."""
        readers = cfg.data.readers_per_step or world_size
        return cls(max(cfg.data.num_workers, 1), readers, world_size * cfg.train.batch_size)

    @property
    def readers(self) -> int:
        return self.phases * self.readers_per_step

    def check(self, world_size: int, batch_size: int) -> None:
        """Refuse a rank count or batch size this order cannot serve (one line, what to set instead)."""
        if world_size * batch_size != self.global_batch:
            raise ConfigError(
                f"train.batch_size {batch_size} on {world_size} rank(s) is a global batch of "
                f"{world_size * batch_size}; this run's data order has {self.global_batch}: "
                f"set train.batch_size={self.global_batch // world_size}"
            )
        if self.readers_per_step % world_size or self.global_batch % self.readers_per_step:
            raise ConfigError(
                f"data.readers_per_step {self.readers_per_step}: needs to be a multiple of the {world_size} "
                f"rank(s) and to divide the global batch {self.global_batch}"
            )


class ClipBatches(IterableDataset):
    """Endless batches for one rank; see the module docstring for the order and the seeds."""

    def __init__(
        self,
        cfg: JobConfig,
        rank: int,
        world_size: int,
        start_batch: int = 0,
        train: bool = True,
        order: ReadOrder | None = None,
        device_formats: frozenset[str] = frozenset(),
    ):
        super().__init__()
        self.cfg = cfg
        self.start_batch = start_batch
        self.train = train
        self.device_formats = device_formats if train else frozenset()  # left encoded for the trainer
        self.order = order or ReadOrder.for_job(cfg, world_size)
        self.order.check(world_size, cfg.train.batch_size)
        phases = self.order.phases
        # workers that split the groups evenly; 0 reads in this process, as data.num_workers=0 asks
        self.num_workers = (
            max(w for w in range(1, min(cfg.data.num_workers, phases) + 1) if phases % w == 0)
            if cfg.data.num_workers > 0
            else 0
        )
        per_rank = self.order.readers_per_step // world_size
        self.owned = range(rank * per_rank, (rank + 1) * per_rank)  # of each group's readers
        self.per_reader = self.order.global_batch // self.order.readers_per_step
        self.augment = AugmentParams.from_config(cfg.data)
        video_urls = expand_shards(cfg.data.shards)
        if not video_urls:
            raise ConfigError(f"data.shards: '{cfg.data.shards}' names no shard")
        self.streams = {"video": StreamSpec("video", video_urls, cfg.clip.frames)}
        if cfg.data.image_ratio > 0:
            image_urls = expand_shards(cfg.data.image_shards) if cfg.data.image_shards else video_urls
            if not image_urls:
                raise ConfigError(f"data.image_shards: '{cfg.data.image_shards}' names no shard")
            self.streams["image"] = StreamSpec("image", image_urls, 1)
        per_group = cfg.data.samples_per_epoch // (phases * self.order.global_batch)
        self.steps_per_group = max(per_group, 1)

    @property
    def batches_per_epoch(self) -> int:
        """Batches (global steps) in a virtual epoch."""
        return self.steps_per_group * self.order.phases

    def readers_of(self, phase: int) -> list[int]:
        """The global ids of this rank's readers in group `phase`."""
        return [phase * self.order.readers_per_step + q for q in self.owned]

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        workers = max(self.num_workers, 1)
        # The DataLoader asks its workers in turn from worker 0, so global step start + j comes from worker
        # j % workers: this worker makes steps start + worker, + workers, ... (their groups cycle with them).
        groups: dict[int, _GroupEpoch] = {}
        for j in count():
            step = self.start_batch + worker + j * workers
            phase, group_step = step % self.order.phases, step // self.order.phases
            epoch, index = divmod(group_step, self.steps_per_group)
            group = groups.get(phase)
            if group is None or group.epoch != epoch:
                group = groups[phase] = _GroupEpoch(self, phase, epoch)
            while group.index < index:  # a resume: pass the steps done, reading only the samples' JSON
                group.next_batch(decode=False)
            started = time.perf_counter()
            batch = group.next_batch(decode=True)
            batch["loader_s"]["worker"] = time.perf_counter() - started  # all this worker spent on it
            yield batch


class _GroupEpoch:
    """This rank's readers of one group in one epoch, and the kind (video or image) of each of its steps."""

    def __init__(self, dataset: ClipBatches, phase: int, epoch: int):
        self.ds, self.phase, self.epoch = dataset, phase, epoch
        self.index = 0
        self.readers = [_Reader(dataset, reader, epoch) for reader in dataset.readers_of(phase)]
        self.kind_rng = random.Random(stable_seed(dataset.cfg.seed, epoch, phase, "kind"))  # all ranks alike

    def next_batch(self, decode: bool) -> dict | None:
        kind = "image" if self.kind_rng.random() < self.ds.cfg.data.image_ratio else "video"
        items = [r.next_item(kind, decode) for r in self.readers for _ in range(self.ds.per_reader)]
        self.index += 1
        if not decode:
            return None
        skipped: Counter[str] = Counter()
        for reader in self.readers:
            skipped += reader.skipped
            reader.skipped = Counter()
        return {
            "frames": _stack_frames([it["frames"] for it in items]),
            "encoded": [(row, it["encoded"]) for row, it in enumerate(items) if it["encoded"] is not None],
            "size": self.ds.cfg.clip.size,
            "labels": pack_labels([it["labels"] for it in items]),  # uint16 ids as int16 bits
            "colour": torch.from_numpy(np.stack([it["colour"] for it in items])),  # applied on the device
            "captions": [it["caption"] for it in items],
            "keys": [it["key"] for it in items],
            "kind": kind,
            "epoch": self.epoch,
            "phase": self.phase,
            "skipped": dict(skipped),
            "loader_s": {part: sum(it[f"{part}_s"] for it in items) for part in ("decode", "augment")},
        }


class _Reader:
    """One seeded stream of samples in one epoch: its shards, its shuffle buffer, its skip counters."""

    def __init__(self, dataset: ClipBatches, reader: int, epoch: int):
        self.ds = dataset
        self.key = (dataset.cfg.seed, epoch, reader)
        self.skipped: Counter[str] = Counter()
        self.consecutive_skips = 0
        self.sample_index = 0
        readers = dataset.order.readers
        self.samples = {}
        for kind, spec in dataset.streams.items():
            urls = shard_sequence(spec.urls, dataset.cfg.seed, epoch, reader, readers)
            raw = (sample for url in urls for sample in read_shard(url, self._shard_error))
            buffer = random.Random(stable_seed(*self.key, kind))
            self.samples[kind] = shuffled(raw, dataset.cfg.data.shuffle_buffer, buffer)

    def next_item(self, kind: str, decode: bool) -> dict | None:
        """The next usable sample of `kind`, prepared (or only located, when skipping ahead)."""
        spec = self.ds.streams[kind]
        while True:
            raw = next(self.samples[kind])
            self.sample_index += 1
            rng = np.random.default_rng([*self.key, self.sample_index])
            try:
                meta = json.loads(raw["json"])
                if (int(meta["frame_count"]) == 1) != (kind == "image"):
                    self._count_skip("other-kind")  # mixed shards: the other stream takes it, no warning
                    continue
                item = _prepare(raw, meta, spec, self.ds, rng, decode)
            except (TrajTokError, ValueError, KeyError, TypeError, OSError, RuntimeError) as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                log.warning("skipping sample %s of %s: %s", raw.get("__key__"), raw.get("__url__"), reason)
                self._count_skip(type(err).__name__, reason)
                continue
            self.consecutive_skips = 0
            return item

    def _shard_error(self, url: str, reason: str) -> None:
        log.warning("leaving shard %s: %s", url, reason)
        self._count_skip("shard", f"{url}: {reason}")

    def _count_skip(self, category: str, reason: str = "") -> None:
        self.skipped[category] += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise ConfigError(
                f"data.shards: {self.consecutive_skips} samples in a row were unusable for the "
                f"{self.ds.cfg.clip.frames}-frame config (counts: {dict(self.skipped)}) {reason}".rstrip()
            )


def _prepare(
    raw: dict, meta: dict, spec: StreamSpec, ds: ClipBatches, rng: np.random.Generator, decode: bool
) -> dict | None:
    """Pick a caption, then (unless skipping ahead) decode, pick frames and augment; frames of a format
    the trainer decodes (`ds.device_formats`) stay encoded, with their geometry drawn here."""
    from trajtok.data.sample import decode_sample_frames, frame_entries, parse_sample

    frame_count = int(meta["frame_count"])
    if frame_count < spec.frames:
        raise ValueError(f"{frame_count} frames, the config asks for {spec.frames}")
    captions = meta["captions"]
    caption = captions[int(rng.integers(len(captions)))]
    if not decode:
        return None
    started = time.perf_counter()
    key, checked, labels = parse_sample(raw)  # the label map and every rule but the frames' pixels
    kind, names = frame_entries(raw)
    frames = None if kind in ds.device_formats else decode_sample_frames(raw, checked, key)
    decoded = time.perf_counter()
    keep = np.arange(frame_count)
    if frame_count > spec.frames:  # an evenly spaced subset keeps the clip's span and frames/labels aligned
        keep = np.linspace(0, frame_count - 1, spec.frames).round().astype(np.int64)
        frames = None if frames is None else frames[keep]
        labels = None if labels is None else labels[keep]
    size = ds.cfg.clip.size
    encoded = None
    if frames is None:  # left for the trainer: the same draws as augment_clip, in its order
        geometry = draw_geometry(checked.height, checked.width, ds.augment, rng)
        labels, colour = place_labels(labels, geometry, size), colour_draws(ds.augment, rng)
        encoded = EncodedClip(kind, [bytes(raw[n]) for n in names], keep.tolist(), geometry)
    elif ds.train:
        frames, labels, colour = augment_clip(frames, labels, size, ds.augment, rng)
    else:
        (frames, labels), colour = center_clip(frames, labels, size), NO_COLOUR
    if labels is None:  # a sample without a label map: every pixel unlabeled, which the loss ignores
        grid = label_grid(size)
        labels = np.zeros((spec.frames, grid, grid), dtype=np.uint16)
    timing = {"decode_s": decoded - started, "augment_s": time.perf_counter() - decoded}
    return {
        "frames": frames,
        "encoded": encoded,
        "labels": labels,
        "colour": colour,
        "caption": caption,
        "key": raw["__key__"],
        **timing,
    }


def _stack_frames(frames: list[np.ndarray | None]) -> torch.Tensor | None:
    """(B, T, 3, S, S) uint8 of the clips the workers decoded; None when every clip was left encoded,
    zeros in the rows of those left encoded in a batch of mixed formats (the trainer fills them)."""
    decoded = [f for f in frames if f is not None]
    if not decoded:
        return None
    blank = np.zeros_like(decoded[0])
    stacked = np.stack([blank if f is None else f for f in frames])
    return torch.from_numpy(stacked).permute(0, 1, 4, 2, 3)


def build_loader(
    cfg: JobConfig,
    rank: int,
    world_size: int,
    start_batch: int = 0,
    train: bool = True,
    order: ReadOrder | None = None,
    device_formats: frozenset[str] = frozenset(),
) -> tuple[DataLoader, ClipBatches]:
    """The DataLoader for one rank, starting at global step `start_batch` (the resume position) of the run's
    read `order` (a new run's by default); frames in `device_formats` stay encoded for the trainer
    (`trajtok.data.device_decode`)."""
    dataset = ClipBatches(cfg, rank, world_size, start_batch, train, order, device_formats)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=dataset.num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if dataset.num_workers > 0 else None,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # leaves the global RNG to the model: exact resume
        worker_init_fn=_leave_job_signals_to_the_trainer,
    )
    return loader, dataset


@contextlib.contextmanager
def open_batches(loader: DataLoader) -> Iterator[Iterator[dict]]:
    """Iterate `loader`; its workers are stopped when the block ends, however it ends. They ignore SLURM's
    TERM (`_leave_job_signals_to_the_trainer`), so the interpreter's exit, which stops daemonic children
    with TERM, could not stop them; an endless loader is never exhausted, so torch would not either."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # what torch's own __del__ runs
        if shutdown is not None:
            shutdown()


def _leave_job_signals_to_the_trainer(worker_id: int) -> None:
    """SLURM sends its preemption and time-limit signals (USR2, TERM) to every process of the step: the
    trainer checkpoints and requeues once (`trajtok.train.preemption`); a worker goes on serving batches
    until the trainer is done with them, and ends with it."""
    for signum in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
