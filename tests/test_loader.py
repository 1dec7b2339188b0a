"""The training loader on real WebDataset shards: order, determinism, resume, kinds, corrupt data, fsspec."""

from __future__ import annotations

import logging
import tarfile
from itertools import islice
from pathlib import Path

import fsspec
import pytest
import torch
import webdataset as wds

from trajtok.config import JobConfig, load_config
from trajtok.data.loader import ClipBatches, ReadOrder, build_loader, expand_shards, shard_sequence
from trajtok.errors import ConfigError


def _cfg(shards: str, *overrides: str) -> JobConfig:
    return load_config(
        None,
        [
            f"data.shards={shards}",
            "clip.frames=8",
            "clip.size=64",
            "train.batch_size=4",
            "data.num_workers=2",
            "data.samples_per_epoch=32",
            *overrides,
        ],
    )


def _batches(
    cfg: JobConfig,
    rank: int = 0,
    world_size: int = 1,
    n: int = 4,
    start: int = 0,
    order: ReadOrder | None = None,
) -> list[dict]:
    loader, _ = build_loader(cfg, rank, world_size, start_batch=start, order=order)
    return list(islice(loader, n))


def test_expand_shards_braces_lists_and_globs(tmp_path: Path):
    for name in ("a-000.tar", "a-001.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(f"{tmp_path}/a-{{000..001}}.tar {tmp_path}/b.tar") == [
        f"{tmp_path}/a-000.tar",
        f"{tmp_path}/a-001.tar",
        f"{tmp_path}/b.tar",
    ]
    assert expand_shards(f"{tmp_path}/*.tar") == sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert expand_shards("") == []


def test_no_two_readers_share_a_shard_sequence():
    urls = [f"shard-{i:02d}.tar" for i in range(8)]
    readers = range(4)

    def sequence(reader: int, epoch: int = 0, shards=urls) -> list[str]:
        return list(islice(shard_sequence(shards, 7, epoch, reader, len(readers)), 6))

    sequences = {reader: sequence(reader) for reader in readers}
    assert len({tuple(s) for s in sequences.values()}) == len(readers)
    first_round = [url for s in sequences.values() for url in s[:2]]
    assert sorted(first_round) == urls  # a round deals every shard to exactly one reader
    assert sequences == {reader: sequence(reader) for reader in readers}  # deterministic
    assert sequences[0] != sequence(0, epoch=1)
    few = urls[:3]  # fewer shards than readers: each reader draws on its own seed
    assert len({tuple(sequence(reader, shards=few)) for reader in readers}) == len(readers)


def test_batches_have_the_contract_shapes(synthetic_shards):
    batch = _batches(_cfg(synthetic_shards.pattern), n=1)[0]
    assert batch["frames"].shape == (4, 8, 3, 64, 64) and batch["frames"].dtype == torch.uint8
    assert batch["labels"].shape == (4, 8, 16, 16) and batch["labels"].dtype == torch.int16
    assert batch["labels"].max() > 0  # trajectories survive the crop
    assert len(batch["captions"]) == 4 and all(isinstance(c, str) and c for c in batch["captions"])
    assert batch["kind"] == "video" and batch["skipped"] == {}


def test_an_epoch_reads_every_sample_once_across_ranks_and_workers(synthetic_shards):
    cfg = _cfg(synthetic_shards.pattern, "data.shuffle_buffer=1")
    per_rank = [_batches(cfg, rank, 2, n=4) for rank in range(2)]  # 32 samples / (2 ranks x 4) = 4 batches
    keys = [key for batches in per_rank for batch in batches for key in batch["keys"]]
    assert len(keys) == 32 and len(set(keys)) == 32
    groups = {(rank, b["phase"]) for rank, batches in enumerate(per_rank) for b in batches}
    assert len(groups) == 4 and all(b["epoch"] == 0 for batches in per_rank for b in batches)


def test_same_seed_same_batches_other_seed_other_order(synthetic_shards):
    cfg = _cfg(synthetic_shards.pattern)
    first, again = _batches(cfg), _batches(cfg)
    for a, b in zip(first, again):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["labels"], b["labels"])
    other = _batches(_cfg(synthetic_shards.pattern, "seed=1"))
    assert [b["keys"] for b in other] != [b["keys"] for b in first]


def test_resume_position_continues_the_same_stream(synthetic_shards):
    cfg = _cfg(synthetic_shards.pattern, "data.samples_per_epoch=16")  # 2 batches per worker per epoch
    whole = _batches(cfg, n=7)
    resumed = _batches(cfg, n=2, start=5)  # crosses into epoch 1 and across both workers
    assert [b["epoch"] for b in whole] == [0, 0, 0, 0, 1, 1, 1]
    for a, b in zip(whole[5:], resumed):
        assert a["keys"] == b["keys"] and torch.equal(a["frames"], b["frames"])


@pytest.mark.parametrize("start", [0, 3])
def test_the_global_batches_do_not_depend_on_the_number_of_ranks(synthetic_shards, start: int):
    """What an elastic resume relies on: 2 ranks of 4 and 1 rank of 8 read the same samples in each step,
    decoded and augmented alike, from the start and from a resume position."""
    order = ReadOrder(phases=2, readers_per_step=2, global_batch=8)
    cfg = _cfg(synthetic_shards.pattern, "data.samples_per_epoch=64")
    ranks = [_batches(cfg, rank, 2, n=5, start=start) for rank in range(2)]
    one = _batches(_cfg(synthetic_shards.pattern, "data.samples_per_epoch=64", "train.batch_size=8"),
                   n=5, start=start, order=order)  # fmt: skip
    for step, batch in enumerate(one):
        assert batch["keys"] == ranks[0][step]["keys"] + ranks[1][step]["keys"], step
        assert torch.equal(batch["frames"], torch.cat([ranks[0][step]["frames"], ranks[1][step]["frames"]]))
    with pytest.raises(ConfigError, match="train.batch_size=8"):
        ClipBatches(cfg, 0, 1, order=order)  # a resume must keep the global batch
    with pytest.raises(ConfigError, match="readers_per_step 2: needs to be a multiple of the 4"):
        ClipBatches(_cfg(synthetic_shards.pattern, "train.batch_size=2"), 0, 4, order=order)


def test_images_and_videos_mix_by_ratio(synthetic_shards):
    cfg = _cfg(
        synthetic_shards.pattern,
        f"data.image_shards={synthetic_shards.image_pattern}",
        "data.image_ratio=0.5",
        "data.samples_per_epoch=256",
        "data.num_workers=0",
    )
    batches = _batches(cfg, n=24)
    kinds = [b["kind"] for b in batches]
    assert 4 <= kinds.count("image") <= 20
    for batch in batches:
        frames = 1 if batch["kind"] == "image" else 8
        assert batch["frames"].shape == (4, frames, 3, 64, 64)
        assert batch["labels"].shape == (4, frames, 16, 16)


def test_mixed_shards_route_images_and_videos_apart(synthetic_shards):
    both = f"{synthetic_shards.pattern} {synthetic_shards.image_pattern}"
    cfg = _cfg(both, "data.image_ratio=0.3", "data.num_workers=0", "data.samples_per_epoch=128")
    batches = _batches(cfg, n=8)
    assert all(b["frames"].shape[1] == (1 if b["kind"] == "image" else 8) for b in batches)
    video_only = _batches(_cfg(both, "data.num_workers=0"), n=8)
    assert all(b["kind"] == "video" for b in video_only)
    assert sum(b["skipped"].get("other-kind", 0) for b in video_only) > 0  # counted, silently


def _corrupt_shards(directory: Path, source: str) -> str:
    """One shard with a sample whose mp4 is garbage, and a copy of a good shard cut in the middle."""
    samples = list(wds.WebDataset(source.replace("{000000..000007}", "000000"), shardshuffle=False))
    broken = {**samples[1], "mp4": b"\x00not a video" * 10}
    with wds.TarWriter(str(directory / "bad-000000.tar")) as sink:
        for sample in [samples[0], broken, *samples[2:]]:
            sink.write({k: v for k, v in sample.items() if k != "__url__" and k != "__local_path__"})
    good = Path(source.replace("{000000..000007}", "000001"))
    with tarfile.open(good) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".mp4")][1]
    (directory / "bad-000001.tar").write_bytes(good.read_bytes()[: member.offset_data + member.size // 2])
    return str(directory / "bad-{000000..000001}.tar")


def test_corrupt_samples_are_logged_counted_and_skipped(synthetic_shards, tmp_path: Path, caplog):
    pattern = _corrupt_shards(tmp_path, synthetic_shards.pattern)
    cfg = _cfg(pattern, "data.num_workers=0", "data.shuffle_buffer=1", "data.flip=0")
    with caplog.at_level(logging.WARNING, logger="trajtok.data.loader"):
        batches = _batches(cfg, n=6)
    skipped: dict[str, int] = {}
    for batch in batches:
        assert batch["frames"].shape[0] == 4  # a bad sample is replaced, the batch stays full
        for reason, n in batch["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped.get("SchemaError", 0) >= 1 and skipped.get("shard", 0) >= 1, skipped
    assert any("not a video" in r.message or "mp4" in r.message for r in caplog.records)
    assert all(b["frames"].float().std() > 0 for b in batches)


def test_nothing_usable_is_a_config_error(synthetic_shards):
    cfg = _cfg(synthetic_shards.pattern, "clip.frames=16", "data.num_workers=0", "data.shuffle_buffer=1")
    with pytest.raises(ConfigError, match="16-frame"):
        _batches(cfg, n=1)
    with pytest.raises(ConfigError, match="data.shards"):
        ClipBatches(_cfg(""), 0, 1)


def test_shards_through_fsspec_memory(synthetic_shards):
    fs = fsspec.filesystem("memory")
    for i in range(2):
        data = Path(synthetic_shards.pattern.replace("{000000..000007}", f"{i:06d}")).read_bytes()
        fs.pipe(f"/loader-test/video-{i:06d}.tar", data)
    cfg = _cfg("memory:///loader-test/video-{000000..000001}.tar", "data.num_workers=0")
    batch = _batches(cfg, n=1)[0]
    assert batch["frames"].shape == (4, 8, 3, 64, 64) and batch["skipped"] == {}
    assert expand_shards("memory:///loader-test/*.tar") == [
        "memory:///loader-test/video-000000.tar",
        "memory:///loader-test/video-000001.tar",
    ]
