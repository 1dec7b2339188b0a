"""The training loader: WebDataset shards -> augmented batches of clips, label maps and captions.

How the data moves (each step is one function below):
- `expand_shards` (`trajtok.data.shard_urls`): brace patterns and globs -> shard URLs; any fsspec URL
  works (local, memory://, s3:// when the user installs the driver).
- `shard_sequence`: each (rank, worker) reads its own endless, deterministic sequence of shards. Round r
  shuffles the whole list with (seed, epoch, r) and deals it out, so within a round no shard is read twice;
  with fewer shards than readers, each reader draws with its own seed instead. Shards are resampled, so a
  virtual epoch is `data.samples_per_epoch` samples, whatever the number of shards.
- `read_shard`: tar members grouped into raw samples; a truncated or unreadable shard is logged, counted
  and left.
- a seeded shuffle buffer per stream; videos and images (T = 1) come from separate streams and a batch is
  all one kind (a batch must share T), chosen with probability `data.image_ratio`.
- decode from bytes (`trajtok.data.sample.decode_sample`) and augment (`trajtok.data.augment`) with an RNG
  seeded per sample, so skipping ahead (resume) needs no decoding. A sample that fails is logged,
  counted (`batch["skipped"]`, by reason) and replaced by the next one.

Batches are built inside the workers (the DataLoader collates nothing), and the DataLoader returns them in
a fixed round-robin order, so global batch n of a rank is batch n // W of reader n % W (a reader is the
seeded stream a worker runs). That makes the data position one number, the batches consumed, and resume
exact: a resumed loader's workers continue the readers' streams from there. (Skipping ahead reads only
the JSON of the samples it passes; a sample that would have failed to decode there shifts the stream by
one sample, which only a corrupt shard can cause.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
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
from trajtok.data.augment import AugmentParams, augment_clip, center_clip, label_grid
from trajtok.data.shard_urls import expand_shards
from trajtok.errors import ConfigError, TrajTokError

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 1000  # a stream that yields nothing usable for this long is a configuration error


def _seed(*parts: int | str) -> int:
    """One integer seed from a tuple, stable across processes and Python runs (unlike `hash`)."""
    return int(np.random.SeedSequence([_as_int(p) for p in parts]).generate_state(1)[0])


def _as_int(part: int | str) -> int:
    return part if isinstance(part, int) else int.from_bytes(part.encode()[:8].ljust(8, b"\0"), "little")


def shard_sequence(
    urls: list[str], seed: int, epoch: int, rank: int, world_size: int, worker: int, num_workers: int
) -> Iterator[str]:
    """The endless shard order of one reader (rank, worker), the same every time for the same arguments."""
    readers = world_size * num_workers
    reader = rank * num_workers + worker
    for round_index in count():
        if len(urls) >= readers:
            order = list(urls)
            random.Random(_seed(seed, epoch, round_index)).shuffle(order)
            yield from order[reader::readers]
        else:
            yield random.Random(_seed(seed, epoch, round_index, reader)).choice(urls)


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


class ClipBatches(IterableDataset):
    """Endless batches for one rank; see the module docstring for the order and the seeds."""

    def __init__(self, cfg: JobConfig, rank: int, world_size: int, start_batch: int = 0, train: bool = True):
        super().__init__()
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.start_batch = start_batch
        self.train = train
        self.num_workers = max(cfg.data.num_workers, 1)
        self.batch_size = cfg.train.batch_size
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
        per_reader = cfg.data.samples_per_epoch // (world_size * self.num_workers * self.batch_size)
        self.batches_per_worker = max(per_reader, 1)

    @property
    def batches_per_epoch(self) -> int:
        """Batches one rank draws in a virtual epoch."""
        return self.batches_per_worker * self.num_workers

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # Global batch n of a rank is batch n // W of reader n % W. The DataLoader asks its workers in
        # turn from worker 0, so after a resume at batch s, worker w continues reader (s + w) % W.
        reader, first = (
            (self.start_batch + worker) % self.num_workers,
            (self.start_batch + worker) // self.num_workers,
        )
        first_epoch, skip = divmod(first, self.batches_per_worker)
        for epoch in count(first_epoch):
            yield from _WorkerEpoch(self, reader, epoch).batches(skip)
            skip = 0


class _WorkerEpoch:
    """The batches of one worker in one epoch: its streams, its RNGs and its skip counters."""

    def __init__(self, dataset: ClipBatches, worker: int, epoch: int):
        self.ds = dataset
        self.worker, self.epoch = worker, epoch
        self.reader = (dataset.cfg.seed, epoch, dataset.rank, worker)
        self.skipped: Counter[str] = Counter()
        self.consecutive_skips = 0
        self.sample_index = 0
        self.samples = {kind: self._stream(spec) for kind, spec in dataset.streams.items()}
        self.kind_rng = random.Random(_seed(*self.reader, "kind"))

    def _stream(self, spec: StreamSpec) -> Iterator[dict]:
        ds = self.ds
        urls = shard_sequence(
            spec.urls, ds.cfg.seed, self.epoch, ds.rank, ds.world_size, self.worker, ds.num_workers
        )
        raw = (sample for url in urls for sample in read_shard(url, self._shard_error))
        return shuffled(raw, ds.cfg.data.shuffle_buffer, random.Random(_seed(*self.reader, spec.kind)))

    def batches(self, skip: int) -> Iterator[dict]:
        for index in range(self.ds.batches_per_worker):
            kind = "image" if self.kind_rng.random() < self.ds.cfg.data.image_ratio else "video"
            items = [self._next_item(kind, decode=index >= skip) for _ in range(self.ds.batch_size)]
            if index >= skip:
                yield self._collate(kind, items)

    def _next_item(self, kind: str, decode: bool) -> dict | None:
        """The next usable sample of `kind`, prepared (or only located, when skipping ahead)."""
        spec = self.ds.streams[kind]
        while True:
            raw = next(self.samples[kind])
            self.sample_index += 1
            rng = np.random.default_rng([*self.reader, self.sample_index])
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

    def _collate(self, kind: str, items: list[dict]) -> dict:
        skipped, self.skipped = self.skipped, Counter()
        return {
            "frames": torch.from_numpy(np.stack([it["frames"] for it in items])).permute(0, 1, 4, 2, 3),
            "labels": torch.from_numpy(np.stack([it["labels"] for it in items]).astype(np.int64)),
            "captions": [it["caption"] for it in items],
            "keys": [it["key"] for it in items],
            "kind": kind,
            "epoch": self.epoch,
            "worker": self.worker,
            "skipped": dict(skipped),
        }


def _prepare(
    raw: dict, meta: dict, spec: StreamSpec, ds: ClipBatches, rng: np.random.Generator, decode: bool
) -> dict | None:
    """Pick a caption, then (unless skipping ahead) decode, pick frames and augment."""
    from trajtok.data.sample import decode_sample

    frame_count = int(meta["frame_count"])
    if frame_count < spec.frames:
        raise ValueError(f"{frame_count} frames, the config asks for {spec.frames}")
    captions = meta["captions"]
    caption = captions[int(rng.integers(len(captions)))]
    if not decode:
        return None
    clip = decode_sample(raw)
    frames, labels = clip.frames, clip.labels
    if frame_count > spec.frames:  # an evenly spaced subset keeps the clip's span and frames/labels aligned
        keep = np.linspace(0, frame_count - 1, spec.frames).round().astype(np.int64)
        frames, labels = frames[keep], None if labels is None else labels[keep]
    size = ds.cfg.clip.size
    if ds.train:
        frames, labels = augment_clip(frames, labels, size, ds.augment, rng)
    else:
        frames, labels = center_clip(frames, labels, size)
    if labels is None:  # a sample without a label map: every pixel unlabeled, which the loss ignores
        grid = label_grid(size)
        labels = np.zeros((spec.frames, grid, grid), dtype=np.uint16)
    return {"frames": frames, "labels": labels, "caption": caption, "key": raw["__key__"]}


def build_loader(
    cfg: JobConfig, rank: int, world_size: int, start_batch: int = 0, train: bool = True
) -> tuple[DataLoader, ClipBatches]:
    """The DataLoader for one rank, starting at its `start_batch`-th batch (the resume position)."""
    dataset = ClipBatches(cfg, rank, world_size, start_batch=start_batch, train=train)
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if cfg.data.num_workers > 0 else None,
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
