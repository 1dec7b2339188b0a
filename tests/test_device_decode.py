"""Frames the trainer decodes on its device (`data.device_decode`): the workers leave jpg / mp4 frames
encoded with the geometry they drew, and the batch that reaches the model is the one the workers would
have made, within a grey level (the resize runs in torch instead of OpenCV). On a CPU the decoders are
the workers' own; on a GPU (run where one is lent) they are nvjpeg and NVDEC."""

from __future__ import annotations

import logging
import math
from itertools import islice
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import write_synthetic_shards

from launch.cli import main as cli
from trajtok.config import JobConfig, load_config
from trajtok.data.device_decode import frames_on_device, start_decoders
from trajtok.data.loader import build_loader
from trajtok.errors import ConfigError
from trajtok.train.checks import check_job

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """2 shards of 4 labelled 8-frame 72x96 synthetic clips per format."""
    directory = tmp_path_factory.mktemp("device-decode")
    return {
        kind: write_synthetic_shards(
            directory, kind, 2, 4, frames=8, height=72, width=96, seed=50, frame_format=kind
        )
        for kind in ("jpg", "mp4")
    }


def _cfg(shards: str, *overrides: str) -> JobConfig:
    return load_config(
        None,
        [
            f"data.shards={shards}",
            "clip.frames=6",  # fewer than stored: the kept frames travel with the bytes
            "clip.size=48",
            "train.batch_size=4",
            "data.num_workers=0",
            "data.samples_per_epoch=32",
            "data.crop_scale=[0.2, 1.0]",  # crops that grow and that shrink
            *overrides,
        ],
    )


def _batches(cfg: JobConfig, formats: frozenset[str], n: int, start: int = 0) -> list[dict]:
    loader, _ = build_loader(cfg, 0, 1, start, device_formats=formats)
    return list(islice(loader, n))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [48, 24])  # crops that grow (bilinear) and shrink (area-averaged)
@pytest.mark.parametrize("kind", ["jpg", "mp4"])
def test_device_decoded_batches_match_the_workers(shards, kind: str, size: int, device: str):
    decoders = start_decoders([kind], torch.device(device))
    if kind not in decoders:
        pytest.skip(f"no {kind} decoder on {device}")
    cfg = _cfg(shards[kind], f"clip.size={size}")
    for worker, left in zip(_batches(cfg, frozenset(), 4), _batches(cfg, frozenset({kind}), 4), strict=True):
        assert left["frames"] is None and len(left["encoded"]) == 4  # nothing decoded in the worker
        assert left["keys"] == worker["keys"] and torch.equal(left["colour"], worker["colour"])
        assert torch.equal(left["labels"], worker["labels"])  # the same crops and flips
        frames = frames_on_device(left, torch.device(device), decoders).cpu()
        assert frames.shape == worker["frames"].shape == (4, 6, 3, size, size) and frames.dtype == torch.uint8
        difference = (frames.int() - worker["frames"].int()).abs()  # torch's resize vs OpenCV's: rounding
        assert difference.float().mean() <= 0.5 and difference.max() <= 2


def test_a_batch_of_mixed_formats_decodes_each_where_asked(shards):
    cfg, cpu = _cfg(f"{shards['jpg']} {shards['mp4']}"), torch.device("cpu")
    decoders = start_decoders(["jpg"], cpu)
    mixed = 0
    for worker, left in zip(_batches(cfg, frozenset(), 4), _batches(cfg, frozenset({"jpg"}), 4), strict=True):
        encoded = {row for row, _ in left["encoded"]}
        mixed += 0 < len(encoded) < 4
        if left["frames"] is not None:  # the workers' mp4 clips, zeros where the jpg ones go
            assert all(left["frames"][row].sum() == 0 for row in encoded)
        difference = (frames_on_device(left, cpu, decoders).int() - worker["frames"].int()).abs()
        assert difference.float().mean() <= 0.5 and difference.max() <= 2
    assert mixed >= 1  # the case this test is for occurred


def test_a_resume_reads_the_same_device_decoded_batches(shards):
    cfg, formats = _cfg(shards["jpg"]), frozenset({"jpg"})
    decoders = start_decoders(["jpg"], torch.device("cpu"))
    through = _batches(cfg, formats, 5)[3:]
    resumed = _batches(cfg, formats, 2, start=3)
    for a, b in zip(through, resumed, strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["labels"], b["labels"])
        cpu = torch.device("cpu")
        assert torch.equal(frames_on_device(a, cpu, decoders), frames_on_device(b, cpu, decoders))


def test_a_clip_that_does_not_decode_is_counted_not_fatal(shards, caplog):
    batch = _batches(_cfg(shards["jpg"]), frozenset({"jpg"}), 1)[0]
    row, clip = batch["encoded"][1]
    clip.entries[clip.keep[2]] = b"\xff\xd8 not a jpeg"
    with caplog.at_level(logging.WARNING):
        frames = frames_on_device(batch, torch.device("cpu"), start_decoders(["jpg"], torch.device("cpu")))
    assert batch["skipped"] == {"device-decode": 1}
    assert f"skipping sample {batch['keys'][row]}" in caplog.text
    assert frames[row].sum() == 0 and batch["labels"][row].abs().sum() == 0  # blank and unlabelled
    assert frames[0].float().mean() > 10 and batch["labels"][0].abs().sum() > 0  # the others as decoded


def test_a_missing_gpu_decoder_is_one_line_and_leaves_the_workers_decoding(caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the decoders may well exist")
    with caplog.at_level(logging.WARNING):
        assert start_decoders(["jpg", "mp4"], torch.device("cuda")) == {}
    lines = [r.getMessage() for r in caplog.records if r.name == "trajtok.data.device_decode"]
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "jpg frames are decoded by the loader workers: no nvjpeg decoder" in lines[0]
    assert "mp4 frames are decoded by the loader workers: no NVDEC decoder" in lines[1]


def test_an_unknown_format_is_refused_in_one_line(shards):
    with pytest.raises(ConfigError, match=r"^data.device_decode: 'png' cannot be decoded on a device"):
        check_job(_cfg(shards["jpg"], "data.device_decode=[png]"))


def test_training_with_device_decoding_runs_and_logs(shards, tmp_path: Path):
    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    config = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-cpu.yaml"
    overrides = [
        f"data.shards={shards['mp4']}",
        "data.device_decode=[mp4]",
        f"run_dir={run_dir}",
        f"tracking.uri=sqlite:///{db}",
        "train.steps=2",
        "train.batch_size=4",
        "train.log_every=1",
        "train.checkpoint_every=100",
        "clip.frames=8",
        "launch.nproc=1",
        "tracking.system_metrics=false",
    ]
    assert cli(["train", str(config), *overrides]) == 0
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    losses = [m.value for m in client.get_metric_history(run_id, "train/loss")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    metrics = client.get_run(run_id).data.metrics  # the log line's loader health, the device's part too
    assert (
        metrics["train/data/device_decode_ms_per_clip"] > 0 and metrics["train/data/decode_ms_per_clip"] > 0
    )
    assert client.get_run(run_id).info.status == "FINISHED"
