"""Each benchmark runs from its one command at a tiny size and reports what BENCHMARKS.md quotes."""

from __future__ import annotations

import json

import pytest
import torch

from launch.cli import main

torch.set_num_threads(1)


def test_bench_model_through_the_cli(tmp_path, capsys) -> None:
    out, picture = tmp_path / "model.json", tmp_path / "model.png"
    args = "--size tiny --px 32 --frames 2 4 --steps 1 --rounds 1 --warmup 1 --threads 1 --device cpu"
    models = ["vit3d", "vit3d+tome", "vit3d+tome-tokens", "vit3d+rlt", "trajvit2", "trajvit2-n4"]
    command = [
        "bench",
        "model",
        *args.split(),
        "--models",
        *models,
        "--json",
        str(out),
        "--plot",
        str(picture),
    ]
    assert main(command) == 0
    result = json.loads(out.read_text())
    assert result["record"]["command"].startswith("trajtok bench model --size tiny")
    assert {"device", "date", "commit"} <= result["record"].keys()
    rows = {(row["model"], row["frames"]): row for row in result["rows"]}
    assert list(rows) == [(m, t) for t in (2, 4) for m in models]  # in the order asked for
    for (_, frames), row in rows.items():
        assert row["batch"] == 2 and row["train_clips_per_s"] > 0 and row["forward_clips_per_s"] > 0
        assert (
            row["step_memory_gib"] > 0 and row["train_gflops_per_clip"] > row["forward_gflops_per_clip"] > 0
        )
        assert row["mfu"] is None and row["achieved_tflops"] > 0  # a CPU has no MFU
        assert row["vs_vit3d"]["train"] == pytest.approx(
            row["train_clips_per_s"] / rows["vit3d", frames]["train_clips_per_s"]
        )
    assert rows["vit3d", 4]["tokens_per_clip"] == 2 * 2 * 2  # 2x16x16 tubelets of 4 frames at 32 px
    assert rows["vit3d", 4]["vs_vit3d"] == {"train": 1.0, "forward": 1.0, "memory": 1.0}
    assert rows["trajvit2", 4]["tokenizer_share"] > 0 and 1 <= rows["trajvit2", 4]["tokens_per_clip"] <= 16
    assert rows["trajvit2-n4", 4]["tokens_per_clip"] * 2 % 4 == 0  # 4 tokens per trajectory, mean of 2 clips
    assert 1 <= rows["vit3d+rlt", 4]["tokens_per_clip"] <= 8
    # ToMe at equal FLOPs merges until its forward costs no more than trajvit2's (or merges all it can)
    tome = rows["vit3d+tome", 4]
    assert (
        tome["forward_gflops_per_clip"] <= rows["trajvit2", 4]["forward_gflops_per_clip"]
        or tome["tome_r"] == 8 // 2
    )
    assert "| T | model | batch |" in capsys.readouterr().out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_data_through_the_cli(tmp_path, capsys) -> None:
    out = tmp_path / "data.json"
    args = "--clips 2 --frames 4 --short-side 64 --size 32 --batch 2 --batches 1 --workers 1 --repeats 1"
    assert main(["bench", "data", *args.split(), "--step-rate", "10", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["formats"]
    assert set(result) == {"mp4", "jpg", "png"}  # every shard frame format, side by side
    assert set(result["mp4"]["decode_clips_per_s_per_core"]) == {"decord", "pyav"}
    assert all(rate > 0 for rate in result["mp4"]["decode_clips_per_s_per_core"].values())
    for row in result.values():
        assert row["kib_per_clip"] > 0 and row["decode_ms_per_clip"] > 0
        per_worker = row["loader_clips_per_s_per_worker"]
        assert per_worker > 0 and row["loader_clips_per_s"]["1"] > 0
        (sizing,) = row["workers_per_gpu"]
        assert sizing["workers_for_5pct_wait"] == max(1, -(-9.5 // per_worker))
    assert result["png"]["kib_per_clip"] > result["mp4"]["kib_per_clip"]  # lossless frames are the largest
    for kind in ("jpg", "mp4"):  # frames left encoded for the device: the worker's rate, the device's
        on_device = result[kind]["device_decode"]
        assert on_device["device"] == "cpu" and on_device["device_clips_per_s"] > 0
    worker = result["mp4"]["device_decode"]["worker_clips_per_s"]  # no mp4 decoding: 6-7x, measured
    assert worker > 2 * result["mp4"]["loader_clips_per_s_per_worker"]
    assert result["png"]["device_decode"] == {}
    printed = capsys.readouterr().out
    assert "decode, decord, per core" in printed and "| png |" in printed
    assert "Frames left encoded for the training device" in printed


def test_bench_help_lists_the_benchmarks(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "model" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "model", "--help"])
    assert "--frames" in capsys.readouterr().out


def test_bench_model_flops_only_counts_parts_on_the_meta_device(tmp_path) -> None:
    out = tmp_path / "flops.json"
    models = (
        "vit3d trajvit2 trajvit2-n4 trajvit2-chunk8 trajvit2-dense vit3d+tome vit3d+tome-tokens vit3d+rlt"
    )
    args = f"--flops-only --size tiny --px 64 --frames 8 16 --valid-trajectories 5 --models {models}"
    assert main(["bench", "model", *args.split(), "--json", str(out)]) == 0
    rows = {(row["model"], row["frames"]): row for row in json.loads(out.read_text())["flops_rows"]}
    assert ("trajvit2-chunk8", 8) not in rows and ("trajvit2-chunk8", 16) in rows  # only past one chunk
    vit3d, traj, dense = rows["vit3d", 16], rows["trajvit2", 16], rows["trajvit2-dense", 16]
    assert vit3d["tokens_per_clip"] == 8 * 4 * 4
    # the packed transformer runs the valid trajectories only (x n, x chunks); the dense one every slot
    assert traj["tokens_per_clip"] == 5 and rows["trajvit2-n4", 16]["tokens_per_clip"] == 20
    assert rows["trajvit2-chunk8", 16]["tokens_per_clip"] == 10 and dense["tokens_per_clip"] == 16
    parts = traj["forward_gflops"]
    assert {"backbone", "segmenter", "trajectory encoder", "transformer", "tokenizer"} <= parts.keys()
    assert parts["backbone"] + parts["segmenter"] + parts["trajectory encoder"] == pytest.approx(
        parts["tokenizer"]
    )
    assert parts["tokenizer"] + parts["transformer"] <= parts["total"]
    assert dense["forward_gflops"]["transformer"] > parts["transformer"]
    tome, budget = rows["vit3d+tome", 16], rows["vit3d+tome-tokens", 16]
    assert tome["forward_gflops"]["total"] <= parts["total"]  # equal FLOPs: the least merging within them
    assert budget["tome_r"] > 0 and budget["forward_gflops"]["total"] < vit3d["forward_gflops"]["total"]
    assert traj["vs_vit3d"] == pytest.approx(parts["total"] / vit3d["forward_gflops"]["total"])
    assert 0 < rows["vit3d+rlt", 16]["tokens_per_clip"] <= vit3d["tokens_per_clip"]


def test_bench_label_through_the_cli(tmp_path) -> None:
    out = tmp_path / "label.json"
    args = "--clips 1 --frames 4 --size 32 48 --speed-clips 1"
    assert main(["bench", "label", *args.split(), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["record"]["command"].startswith("trajtok bench label")
    assert result["speed"]["clips_per_s_per_core_cpu"] > 0


def test_bench_pipeline_through_the_cli(tmp_path) -> None:
    out = tmp_path / "pipeline.json"
    args = "--clips 2 --clips-per-shard 1 --frames 4 --size 64"
    assert main(["bench", "pipeline", *args.split(), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for source in ("vtest.avi 768x576 MPEG-4", "480x360 H.264"):
        for work in ("no labels", "classical"):
            entry = result[f"{source}, {work}"]
            assert entry["single_process"]["clips_per_cpu_s"] > 0
            assert entry["ray_1_workers"]["steady_clips_per_s"] > 0
            assert entry["ray_2_workers"]["workers_used"] == 2
        stages = result[f"{source}, CPU per clip by stage"]
        assert set(stages) == {"pyav", "decord"} and all(cost["encode_ms"] > 0 for cost in stages.values())
    assert result["object_store"]["plan_bytes"] < 100 * 1024  # rows travel, frames do not


def test_bench_reader_compares_a_revision_with_the_tree_through_the_cli(capsys) -> None:
    assert main(["bench", "reader", "--base", "HEAD", "--rounds", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    sources, readers = ("vtest.avi", "h264 480x360"), ("HEAD", "working tree")
    assert set(result) == {f"{source} | {reader}" for source in sources for reader in readers}
    assert all(entry["decode_and_resize_ms"]["median"] > 0 for entry in result.values())


@pytest.mark.slow
def test_bench_ablate_through_the_cli(tmp_path, capsys, monkeypatch) -> None:
    """One switch that leaves stage 1 alone: it warm-starts from the as-built segmenter, and its row
    carries the paper's sign and the change measured here; then the loss floor of those runs."""
    from trajtok.config import load_config

    # MLflow exports the store it is pointed at to MLFLOW_TRACKING_URI; undone after the test, so later
    # tests' subprocesses (the demo's) do not inherit this test's store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    out, record = tmp_path / "ablate", tmp_path / "ablate.json"
    tiny = (
        "demo.train_videos=8 demo.heldout_videos=4 demo.segmenter_steps=2 train.steps=2 train.batch_size=4 "
        "data.samples_per_epoch=8 eval.batch_size=4 launch.nproc=1 train.log_every=1"
    )
    args = [*tiny.split(), "--out", str(out), "--switches", "as built", "no hard mask", "--json", str(record)]
    assert main(["bench", "ablate", *args]) == 0
    rows = json.loads(record.read_text())["rows"]
    assert list(rows) == ["as built", "no hard mask"]
    assert all(0 <= row["R@5"] <= 100 and 0 <= row["seg mBO"] <= 100 for row in rows.values())
    assert not (out / "no-hard-mask" / "runs" / "segmenter").exists(), "stage 1 is shared"
    job = load_config(out / "no-hard-mask" / "runs" / "trajvit2" / "config.yaml")
    assert job.model.hard_mask is False
    assert job.model.init == str(out / "as-built" / "runs" / "segmenter")
    table = capsys.readouterr().out
    assert "| no hard mask |" in table and "R@5 -4.7" in table

    # the loss floor of the same runs: the exact ground truth scored against the same pseudo-labels
    floor = tmp_path / "floor.json"
    runs = [out / "as-built" / "runs" / "segmenter", out / "no-hard-mask" / "runs" / "trajvit2"]
    manifest = out / "synth-train" / "manifest.jsonl"
    args = [*map(str, runs), "--manifest", str(manifest), "--clips", "4", "--json", str(floor)]
    assert main(["bench", "seg-floor", *args]) == 0
    result = json.loads(floor.read_text())
    rows = result["rows"]
    assert result["clips"] == 4 and list(rows) == ["exact ground truth", "untrained", "segmenter", "trajvit2"]
    assert rows["exact ground truth"]["focal"] is None
    assert all(0 <= row["dice"] < 1 for row in rows.values())
    assert rows["untrained"]["dice fall %"] == 0


def test_gpu_script_runs_the_harness_and_writes_one_json(tmp_path) -> None:
    """bench/gpu.sh, the prepared GPU run, as a CPU smoke: its setup finds everything already importable,
    each clip length runs under its own limit, and the parts are merged into one JSON and plot."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path), "FRAMES": "2 4"}
    options = "--device cpu --size tiny --px 32 --precision fp32 --steps 1 --rounds 1 --threads 1"
    args = [*options.split(), "--models", "vit3d", "trajvit2"]
    done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "installing" not in done.stdout  # nothing to install where the project is installed
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert [(row["model"], row["frames"]) for row in result["rows"]] == [
        ("vit3d", 2), ("trajvit2", 2), ("vit3d", 4), ("trajvit2", 4)
    ]  # fmt: skip
    assert result["settings"]["frames"] == [2, 4] and (tmp_path / "gpu.png").stat().st_size > 0
