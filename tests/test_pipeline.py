"""The sharding job end to end on a real local Ray: synthetic and real videos, images and broken files.

One Ray instance serves the module; one job over a mixed manifest is shared by the tests that read its
output. Every manifest row must end written, skipped or failed with the expected reason; shards are read
back with `webdataset` and every sample validated; the job is an MLflow run with metrics and artifacts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import pytest
import ray
import webdataset as wds
from exported_runs import write_weights
from mlflow import MlflowClient
from video_corpus import gradient, write_packed_b_frames_avi

from launch.cli import main
from pipeline.accounting import FAILED, WRITTEN, RowOutcome, ShardStats
from pipeline.dispatch import WorkerStatus, run_shards
from pipeline.job import cluster_workers, run_shard_job, worker_gpus
from pipeline.plan import ShardPlan, plan_shards
from pipeline.shard_report import inspect_shards
from pseudolabel.base import build_labeler
from trajtok.config import JobConfig, SynthConfig, load_config
from trajtok.data.encode import write_video
from trajtok.data.sample import decode_sample, validate_sample
from trajtok.data.synth import write_dataset
from trajtok.data.video import open_video
from trajtok.errors import ConfigError
from trajtok.rundir import RUN_ID_FILE

# line -> (status, reason kind) for the mixed manifest built below; kind "" for written rows
EXPECTED = {
    1: ("written", ""),  # synthetic
    2: ("written", ""),
    3: ("written", ""),
    4: ("written", ""),
    5: ("written", ""),  # synthetic, two captions
    6: ("written", ""),  # vtest.avi, a 30 s window
    7: ("written", ""),  # tree.avi (cinepak, declares 444 frames, has 68)
    8: ("written", ""),  # a jpg image: one sample with T = 1
    9: ("skipped", "missing file"),
    10: ("skipped", "undecodable"),  # empty file
    11: ("skipped", "undecodable"),  # truncated mp4
    12: ("skipped", "undecodable"),  # text named .mp4
    13: ("skipped", "no video stream"),  # audio only
    14: ("skipped", "too short"),  # 4 frames, clips need 8
    15: ("skipped", "undecodable"),  # garbage .png
    16: ("skipped", "bad caption"),  # blank caption
    17: ("skipped", "bad row"),  # not JSON
    18: ("skipped", "duplicate"),  # the same video and window as line 1
    19: ("written", ""),  # a path with ../ segments and a hostile id: read, never written outside out
    20: ("written", ""),  # packed B-frames in AVI: timestamps that lie, read by a sequential decode
    21: ("written", ""),  # a display matrix: frames turned upright
}
OVERRIDES = ["clip.frames=8", "clip.size=64", "clip.clips_per_video=2", "pipeline.clips_per_shard=4"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init("local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory, shared_videos: Path) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    synth = write_dataset(
        SynthConfig(out=str(root / "synth"), videos=6, frames=16, height=64, width=64, fps=8)
    )
    synth_rows = [json.loads(line) for line in synth.read_text().splitlines()]
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "truncated.mp4").write_bytes((root / "synth" / synth_rows[0]["video"]).read_bytes()[:600])
    (bad / "text.mp4").write_text("this is not a video\n")
    _audio_only(bad / "audio.m4a")
    write_video(bad / "short.mp4", np.full((4, 32, 32, 3), 90, np.uint8), fps=8)
    (bad / "garbage.png").write_bytes(os.urandom(256))
    with open_video(shared_videos / "vtest.avi") as video:
        frame = video.read_frames([100])[0]
    image = root / "plaza.jpg"
    _write_jpg(image, frame)
    first = str(root / "synth" / synth_rows[0]["video"])
    rows = [
        json.dumps({"video": str(root / "synth" / r["video"]), "caption": r["caption"]})
        for r in synth_rows[:4]
    ]
    rows += [
        json.dumps({"video": str(root / "synth" / synth_rows[4]["video"]), "caption": ["two", "captions"]}),
        json.dumps(
            {
                "video": str(shared_videos / "vtest.avi"),
                "caption": "people cross a plaza",
                "start": 10,
                "end": 40,
            }
        ),
        json.dumps({"video": str(shared_videos / "tree.avi"), "caption": "a tree behind a window"}),
        json.dumps({"video": str(image), "caption": "a plaza, one frame"}),
        json.dumps({"video": str(bad / "missing.mp4"), "caption": "gone"}),
        json.dumps({"video": str(bad / "empty.mp4"), "caption": "empty"}),
        json.dumps({"video": str(bad / "truncated.mp4"), "caption": "truncated"}),
        json.dumps({"video": str(bad / "text.mp4"), "caption": "text"}),
        json.dumps({"video": str(bad / "audio.m4a"), "caption": "audio"}),
        json.dumps({"video": str(bad / "short.mp4"), "caption": "short"}),
        json.dumps({"video": str(bad / "garbage.png"), "caption": "noise"}),
        json.dumps({"video": first, "caption": "   "}),
        "{not json",
        json.dumps({"video": first, "caption": "the same clip again"}),
        json.dumps(
            {
                "video": f"bad/../synth/../synth/{synth_rows[5]['video']}",
                "caption": "x",
                "id": "../../../evil",
            }
        ),
    ]
    rotated = root / "portrait.mp4"
    with av.open(str(rotated), mode="w") as output:
        stream = output.add_stream("libx264", rate=25)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        stream.set_display_rotation(90)
        for image in gradient(24):
            output.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        output.mux(stream.encode())
    packed = write_packed_b_frames_avi(root / "packed.avi", gradient())
    rows += [
        json.dumps({"video": str(packed), "caption": "packed B-frames"}),
        json.dumps({"video": str(rotated), "caption": "a phone held upright"}),
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


@pytest.fixture(scope="module")
def finished_job(local_ray, mixed_manifest: Path, tmp_path_factory) -> tuple[JobConfig, dict]:
    work = tmp_path_factory.mktemp("job")
    cfg = load_config(
        None,
        [
            f"data.manifest={mixed_manifest}",
            f"pipeline.out={work / 'out'}",
            f"run_dir={work / 'run'}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
            "tracking.system_metrics=false",
            *OVERRIDES,
        ],
    )
    cwd = Path.cwd()
    os.chdir(work)  # MLflow keeps artifacts in ./mlruns beside a SQLite store
    try:
        return cfg, run_shard_job(cfg)
    finally:
        os.chdir(cwd)


def test_every_row_is_accounted_for(finished_job):
    _, summary = finished_job
    assert summary["rows"] == len(EXPECTED) == summary["accounted"]
    assert summary["written"] + summary["skipped"] + summary["failed"] == summary["rows"]
    outcomes = {r["line"]: ("skipped", r["reason"]) for r in summary["skipped_rows"]}
    outcomes |= {r["line"]: ("failed", r["reason"]) for r in summary["failed_rows"]}
    for line, (status, kind) in EXPECTED.items():
        if status == "written":
            assert line not in outcomes, outcomes.get(line)
        else:
            assert outcomes[line][0] == status and outcomes[line][1].startswith(kind + ":"), (
                line,
                outcomes[line],
            )
    # 6 synthetic videos (one by the ../ row), 2 real ones and 2 trap files give 2 clips each, the image 1
    assert summary["clips"] == 2 * 6 + 2 * 2 + 2 * 2 + 1
    assert summary["sequential_decode_rows"] == 1  # the packed AVI: read the slow way, written, counted
    assert summary["run"]["shards_written"] == summary["shards"] == summary["run"]["shards_planned"]


def test_shards_read_back_with_webdataset_and_validate(finished_job):
    cfg, summary = finished_job
    out = Path(cfg.pipeline.out)
    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    assert len(urls) == summary["shards"]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == summary["clips"]
    with tarfile.open(urls[0]) as tar:  # plain ustar members: no PAX header for a loader to parse
        assert all(member.pax_headers == {} and member.mtime == 0 for member in tar.getmembers())
    stats_keys = []
    for stats in out.glob("*.stats.json"):
        stats_keys += [k for row in json.loads(stats.read_text())["rows"] for k in row["keys"]]
    assert sorted(stats_keys) == sorted(keys)
    images = 0
    for sample in samples:
        validate_sample(sample, decode_frames=True)
        clip = decode_sample(sample)
        images += clip.is_image
        assert min(clip.frames.shape[1:3]) == 64 and clip.labels.shape == clip.frames.shape[:3]
        assert clip.meta.labeler.name == "classical" and clip.meta.num_trajectories >= 1
    assert images == 1
    two = [decode_sample(s) for s in samples if decode_sample(s).meta.captions == ["two", "captions"]]
    assert len(two) == 2 and {c.meta.clip_index for c in two} == {0, 1}
    decoding = {c.meta.source.rsplit("/", 1)[-1]: c.meta.source_decode for c in map(decode_sample, samples)}
    assert decoding["packed.avi"] == {"timestamps": "derived", "rotation": 0, "sample_aspect_ratio": 1.0}
    assert decoding["portrait.mp4"] == {"timestamps": "container", "rotation": 90, "sample_aspect_ratio": 1.0}
    portrait = [c for c in map(decode_sample, samples) if c.meta.source.endswith("portrait.mp4")]
    assert portrait[0].frames.shape[1:3] == (86, 64) and portrait[0].meta.source_width == 48  # upright


def test_nothing_is_written_outside_out(finished_job, mixed_manifest: Path):
    cfg, _ = finished_job
    out = Path(cfg.pipeline.out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlflow.db", "mlruns", "out", "run"]
    assert not list(mixed_manifest.parent.rglob("*evil*"))
    for tar in out.glob("*.tar"):
        assert all("/" not in name and ".." not in name for name in _tar_names(tar))
    assert all(p.is_file() and p.parent == out for p in out.rglob("*"))


def test_mlflow_run_has_params_metrics_and_artifacts(finished_job):
    cfg, summary = finished_job
    run_id = (Path(cfg.run_dir) / RUN_ID_FILE).read_text().strip()
    client = MlflowClient(cfg.tracking.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["clip.frames"] == "8" and run.data.params["pseudolabel.name"] == "classical"
    metrics = run.data.metrics
    assert metrics["summary/written"] == summary["written"] and metrics["summary/failed"] == summary["failed"]
    assert metrics["shard/clips_per_second"] > 0 and metrics["shard/bytes"] > 0
    assert len(client.get_metric_history(run_id, "shard/clips")) == summary["shards"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "config.yaml"} <= artifacts
    assert client.list_artifacts(run_id, "images"), "no trajectory overlay logged"
    (manifest,) = run.inputs.dataset_inputs  # where the lineage manifest -> shards -> training starts
    assert manifest.dataset.name == "manifest"
    assert json.loads(manifest.dataset.source)["uri"] == cfg.data.manifest


def test_inspect_reports_and_validates(finished_job, tmp_path: Path, capsys):
    cfg, summary = finished_job
    report, picture = inspect_shards(cfg.pipeline.out)
    assert report.ok, report.text()
    assert report.samples == summary["clips"] and report.images == 1
    assert all(s.finished for s in report.shards)
    assert picture is not None and picture.ndim == 3
    png = tmp_path / "look.png"
    assert main(["shards", "inspect", cfg.pipeline.out, "--picture", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "all samples valid" in printed and "trajectories per clip" in printed and png.stat().st_size > 0


def test_inspect_finds_a_corrupt_shard(finished_job, tmp_path: Path):
    cfg, _ = finished_job
    copy = tmp_path / "copy"
    shutil.copytree(cfg.pipeline.out, copy)
    tar = sorted(copy.glob("*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    report, _ = inspect_shards(str(copy))
    assert not report.ok
    assert main(["shards", "inspect", str(copy), "--picture", str(tmp_path / "p.png")]) == 1
    assert (tmp_path / "p.png").stat().st_size > 0


def test_inspect_writes_its_picture_into_the_folder_not_the_working_directory(
    finished_job, tmp_path: Path, monkeypatch
):
    cfg, _ = finished_job
    copy = tmp_path / "copy"
    shutil.copytree(cfg.pipeline.out, copy)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["shards", "inspect", str(copy)]) == 0
    assert (copy / "inspect.png").stat().st_size > 0 and not any(elsewhere.iterdir())


def test_rerun_skips_finished_shards_and_redoes_a_partial_one(finished_job, tmp_path: Path):
    cfg, first = finished_job
    out = tmp_path / "out"
    shutil.copytree(cfg.pipeline.out, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    victim = sorted(out.glob("*.stats.json"))[1]
    victim.unlink()  # as if killed after the tar's rename, before its stats
    (out / victim.name.replace(".stats.json", ".tar")).write_bytes(b"half")
    (out / "shard-000000.tar.tmp-0123").write_bytes(b"left by a killed writer")
    rerun = _config(cfg, out, tmp_path)
    summary = run_shard_job(rerun)
    assert summary["run"]["shards_written"] == 1
    assert summary["run"]["shards_already_done"] == first["shards"] - 1
    for key in ("rows", "written", "skipped", "failed", "clips", "skipped_rows", "failed_rows"):
        assert summary[key] == first[key], key
    assert {
        p.name: p.read_bytes() for p in out.glob("*.tar")
    } == before  # identical bytes, label maps included
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_changed_settings_are_refused_unless_overwrite(finished_job, tmp_path: Path):
    cfg, first = finished_job
    out = tmp_path / "out"
    shutil.copytree(cfg.pipeline.out, out)
    changed = _config(cfg, out, tmp_path, "pseudolabel.max_trajectories=64")
    with pytest.raises(ConfigError, match="pipeline.overwrite=true"):
        run_shard_job(changed)
    rewritten = run_shard_job(
        _config(cfg, out, tmp_path, "pseudolabel.max_trajectories=64", "pipeline.overwrite=true")
    )
    assert rewritten["run"]["shards_written"] == first["shards"]
    assert rewritten["written"] == first["written"]
    meta = [decode_sample(s).meta for s in wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)]
    assert all(m.labeler.params["max_trajectories"] == 64 for m in meta)


def test_unlabelled_jpg_frames_through_uris(local_ray, mixed_manifest: Path, tmp_path: Path):
    """Manifest, videos and output as fsspec URIs: file:// here, s3:// etc. where the driver is installed."""
    manifest = tmp_path / "two.jsonl"
    rows = [json.loads(line) for line in mixed_manifest.read_text().splitlines()[:2]]
    rows = [{**row, "video": f"file://{row['video']}"} for row in rows]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = _config(
        load_config(None, [f"data.manifest=file://{manifest}"]),
        tmp_path / "out",
        tmp_path,
        "pipeline.label=false",
        "pipeline.frame_format=jpg",
        f"pipeline.out=file://{tmp_path / 'out'}",
    )
    summary = run_shard_job(cfg)
    assert summary["manifest"] == f"file://{manifest}"
    assert summary["written"] == 2 and summary["trajectories"] == 0
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 4
    for sample in samples:
        assert "labels.npz" not in sample and "007.jpg" in sample
        clip = decode_sample(sample)
        assert clip.labels is None and clip.meta.labeler is None and clip.frames.shape[0] == 8


def test_hanging_input_cannot_stall_a_shard(local_ray, mixed_manifest: Path, tmp_path: Path):
    """A source that never answers: the decode guard skips it; without the guard, the watchdog fails it."""
    with _silent_server() as url:
        manifest = tmp_path / "hang.jsonl"
        good = mixed_manifest.read_text().splitlines()[:2]
        manifest.write_text(
            "\n".join([good[0], json.dumps({"video": url, "caption": "never arrives"}), good[1]]) + "\n"
        )
        base = load_config(None, [f"data.manifest={manifest}"])
        guarded = run_shard_job(_config(base, tmp_path / "a", tmp_path, "pipeline.decode_timeout=2"))
        assert guarded["written"] == 2 and guarded["skipped"] == 1
        assert guarded["skipped_rows"][0]["reason"].startswith("decode timeout:")
        watched = run_shard_job(
            _config(base, tmp_path / "b", tmp_path, "pipeline.decode_timeout=600", "pipeline.stall_timeout=8")
        )
        assert watched["written"] == 2 and watched["failed"] == 1
        assert watched["failed_rows"][0]["line"] == 2
        assert watched["failed_rows"][0]["reason"].startswith("stalled: no progress for 8 s")
        assert watched["run"]["worker_restarts"] == 1
        tars = sorted(str(p) for p in (tmp_path / "b").glob("*.tar"))
        keys = [s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False)]
        assert len(keys) == len(set(keys)) == 4


def test_cli_exit_status(local_ray, mixed_manifest: Path, tmp_path: Path, capsys):
    args = ["tracking.enabled=false", f"run_dir={tmp_path / 'run'}", *OVERRIDES]
    two = tmp_path / "two.jsonl"
    two.write_text("".join(mixed_manifest.read_text().splitlines(keepends=True)[7:9]))  # image + missing file
    assert main(["shard", "configs/shard.yaml", f"manifest={two}", f"out={tmp_path / 'out'}", *args]) == 0
    printed = capsys.readouterr().out
    assert "2 rows: 1 written" in printed and "1 skipped" in printed and "missing file" in printed
    assert main(["shard", f"manifest={tmp_path / 'nope.jsonl'}", f"out={tmp_path / 'o2'}", *args]) == 2
    assert "manifest not found" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert main(["shard", f"manifest={two}", f"out={blocker / 'out'}", *args]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_trained_segmenter_labels_a_shard_job(local_ray, mixed_manifest: Path, tmp_path: Path):
    """`pseudolabel.name=trajtok` through Ray, one actor holding the model: every sample is labelled and its
    json names the model (weights digest, step), so a shard says which model labelled it."""
    run = write_weights(tmp_path / "segmenter-run", name="segmenter", step=7)
    manifest = tmp_path / "four.jsonl"
    lines = mixed_manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0], lines[1], lines[5], lines[7]]) + "\n")  # synthetic, vtest, a jpg
    cfg = _config(
        load_config(None, [f"data.manifest={manifest}"]),
        tmp_path / "out",
        tmp_path,
        "pseudolabel.name=trajtok",
        f"pseudolabel.params={{weights: {run}, batch_size: 2}}",
        "pipeline.label_actors=1",
    )
    summary = run_shard_job(cfg)
    assert summary["written"] == 4 and summary["clips"] == 7 and summary["failed"] == 0
    digest = build_labeler("trajtok", {"weights": str(run)}).describe()["source"]["sha256"]
    samples = [
        s
        for tar in sorted((tmp_path / "out").glob("*.tar"))
        for s in wds.WebDataset(str(tar), shardshuffle=False)
    ]
    assert len(samples) == 7
    for sample in samples:  # the image is one sample of T = 1, labelled by the same model
        validate_sample(sample)
        clip = decode_sample(sample)
        assert clip.meta.labeler.name == "trajtok" and clip.meta.labeler.source["sha256"] == digest
        assert clip.meta.labeler.source["step"] == 7 and clip.meta.num_trajectories >= 1
        assert clip.labels.shape == clip.frames.shape[:3]


def test_worker_gpus_follow_the_labeler_and_the_cluster(local_ray, tmp_path: Path):
    assert worker_gpus(load_config(None, [])) == 0.0  # classical runs on the CPU
    sam2 = ["pseudolabel.name=sam2", "pseudolabel.params={random_weights: true}"]
    expected = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    assert worker_gpus(load_config(None, sam2)) == expected
    assert worker_gpus(load_config(None, [*sam2, "pipeline.label_gpus=0.25"])) == 0.25
    run = write_weights(tmp_path / "run", name="segmenter")
    trajtok = ["pseudolabel.name=trajtok", f"pseudolabel.params={{weights: {run}}}"]
    assert worker_gpus(load_config(None, trajtok)) == expected  # a GPU where the cluster has one
    assert cluster_workers(0.0) == int(ray.cluster_resources()["CPU"])


class _Row(NamedTuple):
    line: int
    path: str


class _ScriptedWorker:
    """A shard worker (same interface as pipeline.worker.ShardWorker) that dies or hangs where told:
    `die_on[line]` times on a row (counted in files, across restarts), forever on `hang_on` rows."""

    def __init__(self, die_on: dict[int, int], hang_on: set[int], marks: str) -> None:
        self.die_on, self.hang_on, self.marks = die_on, hang_on, Path(marks)
        self._status = WorkerStatus()

    @ray.method(concurrency_group="status")
    def status(self) -> WorkerStatus:
        return self._status

    def process(self, plan: ShardPlan, abandoned: dict[int, str]) -> ShardStats:
        rows: list[RowOutcome] = []
        for row in plan.rows:
            self._status = WorkerStatus(plan.name, row.line, len(rows), len(rows))
            if row.line in abandoned:
                rows.append(RowOutcome(row.line, row.path, FAILED, abandoned[row.line]))
                continue
            deaths = self.marks / f"deaths-{row.line}"
            if len(deaths.read_text() if deaths.exists() else "") < self.die_on.get(row.line, 0):
                deaths.write_text(deaths.read_text() + "x" if deaths.exists() else "x")
                time.sleep(1.5)  # long enough for the driver to see which row this worker is on
                os._exit(1)  # what a segfault or the OOM killer looks like from outside
            if row.line in self.hang_on:
                time.sleep(3600)
            time.sleep(0.1)
            rows.append(RowOutcome(row.line, row.path, WRITTEN, keys=[f"k{row.line}"]))
        written = sum(r.status == WRITTEN for r in rows)
        return ShardStats(plan.name, "settings", plan.digest, rows, clips=written)


def test_dispatcher_recovers_from_dead_and_stuck_workers(local_ray, tmp_path: Path):
    """Line 2's worker dies once (the node's fault: retried, not blamed), line 4 kills every worker that
    reads it (failed after two deaths), line 6 hangs (failed by the watchdog); the rest is written."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in workers
    rows = [_Row(line, f"v{line}.mp4") for line in range(1, 8)]
    plans = plan_shards(rows, 2, lambda row: list(row))
    worker = ray.remote(concurrency_groups={"status": 1})(_ScriptedWorker).options(num_cpus=0.5)
    result = run_shards(
        plans,
        lambda: worker.remote({2: 1, 4: 99}, {6}, str(tmp_path)),
        workers=2,
        stall_timeout=4,
    )
    outcomes = {row.line: row for stats in result.stats for row in stats.rows}
    assert sorted(outcomes) == list(range(1, 8)) and not result.lost
    assert sorted(line for line, row in outcomes.items() if row.status == WRITTEN) == [1, 2, 3, 5, 7]
    assert outcomes[4].reason.startswith("worker died: ") and outcomes[4].status == FAILED
    assert "twice on this row" in outcomes[4].reason
    assert outcomes[6].reason.startswith("stalled: no progress for 4 s") and outcomes[6].status == FAILED
    assert result.worker_restarts == 4  # line 2 once, line 4 twice, line 6 once
    assert (tmp_path / "deaths-2").read_text() == "x" and (tmp_path / "deaths-4").read_text() == "xx"


def test_dispatcher_gives_up_a_shard_nobody_can_be_blamed_for(local_ray, tmp_path: Path):
    """A worker that cannot even start (bad environment): the shard is given up after max_attempts and
    its rows are failed for this run only (no stats, so a rerun tries again)."""

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in workers

    def broken_worker():
        return ray.remote(concurrency_groups={"status": 1})(_BrokenWorker).options(num_cpus=0.5).remote()

    plans = plan_shards([_Row(1, "a.mp4"), _Row(2, "b.mp4")], 2, lambda row: list(row))
    result = run_shards(plans, broken_worker, workers=1, stall_timeout=30, max_attempts=2)
    assert not result.stats and [r.line for r in result.lost] == [1, 2]
    assert all("given up after 2 attempts: worker died: " in r.reason for r in result.lost)
    assert "no GPU driver on this node" in result.lost[0].reason


class _BrokenWorker(_ScriptedWorker):
    def __init__(self) -> None:
        raise RuntimeError("no GPU driver on this node")


# --- helpers ---------------------------------------------------------------------------------------


def _config(cfg: JobConfig, out: Path, work: Path, *extra: str) -> JobConfig:
    return load_config(
        None,
        [
            f"data.manifest={cfg.data.manifest}",
            f"pipeline.out={out}",
            f"run_dir={work / 'run'}",
            "tracking.enabled=false",
            *OVERRIDES,
            *extra,
        ],
    )


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_jpg(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(frame).save(path, quality=90)


class _silent_server:
    """An HTTP 'server' on loopback that accepts connections and never answers: a read that hangs."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/clip.mp4"

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def __exit__(self, *exc) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()
