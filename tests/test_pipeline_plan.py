"""Sharding pipeline parts that need no Ray: planning, clip policy, atomic outputs, accounting, resume."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from launch.commands._common import expand_aliases
from launch.commands.shard import ALIASES
from pipeline.accounting import FAILED, SKIPPED, WRITTEN, RowOutcome, ShardStats, summarize
from pipeline.job import check_config, resume_state, settings_digest
from pipeline.outputs import OutputDir
from pipeline.plan import plan_shards, rows_per_shard
from pipeline.worker import skip_reason
from trajtok.config import ClipConfig, load_config
from trajtok.data.clips import clip_windows, read_clips
from trajtok.data.encode import write_video
from trajtok.data.manifest import read_manifest
from trajtok.errors import ConfigError, DecodeTimeout, NoVideoStream, TooShort, VideoDecodeError


def _manifest(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "m.jsonl"
    rows = [{"video": f"v{i}.mp4", "caption": f"clip {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _fingerprint(row):
    return [row.line, row.path, row.captions]


def test_plan_is_deterministic_and_covers_every_row_once(tmp_path: Path):
    rows = read_manifest(_manifest(tmp_path, 10)).rows
    plans = plan_shards(rows, 4, _fingerprint)
    assert [len(p.rows) for p in plans] == [4, 4, 2]
    assert [p.name for p in plans] == ["shard-000000", "shard-000001", "shard-000002"]
    assert [r.line for p in plans for r in p.rows] == list(range(1, 11))
    again = plan_shards(read_manifest(_manifest(tmp_path, 10)).rows, 4, _fingerprint)
    assert [p.digest for p in again] == [p.digest for p in plans]
    edited = rows[:5] + rows[6:]  # a row removed: the shards from there on change
    changed = plan_shards(edited, 4, _fingerprint)
    assert changed[0].digest == plans[0].digest and changed[1].digest != plans[1].digest


def test_rows_per_shard_follows_clips_per_video():
    assert rows_per_shard(64, 1) == 64
    assert rows_per_shard(64, 4) == 16
    assert rows_per_shard(2, 8) == 1


def test_clip_windows_policy():
    whole = ClipConfig(seconds=0.0, clips_per_video=2)
    assert clip_windows(0.0, 10.0, whole) == [(0.0, 5.0), (5.0, 10.0)]
    fixed = ClipConfig(seconds=2.0, clips_per_video=3)
    assert clip_windows(0.0, 12.0, fixed) == [(1.0, 3.0), (5.0, 7.0), (9.0, 11.0)]
    assert clip_windows(0.0, 5.0, fixed) == [(0.25, 2.25), (2.75, 4.75)]  # only two fit
    assert clip_windows(0.0, 1.0, fixed) == []


def test_read_clips_on_a_real_video_is_reproducible(shared_videos: Path):
    cfg = ClipConfig(frames=8, size=64, seconds=3.0, clips_per_video=3, sampling="random")
    path = str(shared_videos / "vtest.avi")
    clips = list(read_clips(path, 10.0, 40.0, cfg, timeout=30))
    again = list(read_clips(path, 10.0, 40.0, cfg, timeout=30))
    assert [c.index for c in clips] == [0, 1, 2]
    assert len({c.key for c in clips}) == 3
    for a, b in zip(clips, again):
        assert a.key == b.key and np.array_equal(a.frames, b.frames)
        assert a.frames.shape == (8, 64, 86, 3)  # 576x768 -> short side 64, width 85.3 -> even 86
        assert a.start >= 10.0 and a.end <= 40.0
        assert np.all((a.timestamps >= a.start) & (a.timestamps < a.end))


def test_too_short_never_repeats_frames(tmp_path: Path):
    video = write_video(tmp_path / "short.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=8)
    with pytest.raises(TooShort, match="clip.frames=8"):
        list(read_clips(str(video), None, None, ClipConfig(frames=8, size=32), timeout=30))
    with pytest.raises(TooShort, match="shorter than clip.seconds"):
        list(read_clips(str(video), None, None, ClipConfig(frames=2, size=32, seconds=5.0), timeout=30))


def test_skip_reasons_are_categorised(tmp_path: Path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoDecodeError) as err:
        list(read_clips(str(missing), None, None, ClipConfig(), timeout=30))
    assert skip_reason(err.value).startswith("missing file: ")
    assert skip_reason(TooShort("x: 1 s long")).startswith("too short: ")
    assert skip_reason(DecodeTimeout("x: decode timed out after 2s")).startswith("decode timeout: ")
    assert skip_reason(NoVideoStream("x: no video stream (holds: audio)")).startswith("no video stream: ")
    # the kind is the error's type, never its wording (audio-only and hanging files: tests/test_pipeline.py)
    assert skip_reason(VideoDecodeError("x: no such file in the index")).startswith("undecodable: ")


def test_output_dir_refuses_names_that_leave_it(tmp_path: Path):
    out = OutputDir(str(tmp_path / "out"))
    out.make()
    for name in ("../evil", "a/b", "/etc/passwd", "..", ".hidden", ""):
        with pytest.raises(ValueError, match="not a plain file name"):
            out.path(name)
    assert out.path("shard-000001.tar").startswith(str(tmp_path / "out") + "/")


def test_atomic_writer_leaves_nothing_when_interrupted(tmp_path: Path):
    out = OutputDir(f"file://{tmp_path}/out")
    out.make()
    with pytest.raises(RuntimeError), out.atomic_writer("shard-000000.tar") as f:
        f.write(b"half a shard")
        raise RuntimeError("killed")
    assert out.names() == []
    with out.atomic_writer("shard-000000.tar") as f:
        f.write(b"whole")
        assert out.names() == [n for n in out.names() if ".tmp-" in n]  # only the temporary name so far
    assert out.names() == ["shard-000000.tar"]
    (tmp_path / "out" / "shard-000000.tar.tmp-dead").write_bytes(b"left by kill -9")
    (tmp_path / "out" / "shard-000000.stats.json.tmp-dead").write_bytes(b"{")
    out.remove_leftovers("shard-000000")
    assert out.names() == ["shard-000000.tar"]


def test_unwritable_output_is_a_config_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    from pipeline.job import _output_dir

    with pytest.raises(ConfigError, match="pipeline.out"):
        _output_dir(str(blocker / "out"))


def test_summary_counts_add_up():
    first = [RowOutcome(1, "a", WRITTEN, keys=["a-c0"]), RowOutcome(2, "b", SKIPPED, "too short: b")]
    stats = [
        ShardStats("shard-000000", "s", "p", first, clips=1),
        ShardStats("shard-000001", "s", "p", [RowOutcome(4, "d", FAILED, "ValueError: boom")], clips=0),
    ]
    rejected = [RowOutcome(3, "", SKIPPED, "bad caption: empty caption")]
    summary = summarize(stats, rejected, "m.jsonl", rows=4)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (1, 2, 1)
    assert summary["written"] + summary["skipped"] + summary["failed"] == summary["rows"] == 4
    assert summary["accounted"] == 4
    assert summary["skip_reasons"] == {"bad caption": 1, "too short": 1}
    assert [r["line"] for r in summary["skipped_rows"]] == [2, 3]
    assert summary["failed_rows"][0]["reason"] == "ValueError: boom"
    assert ShardStats.from_json(json.loads(json.dumps(stats[0].to_json()))) == stats[0]


def test_resume_state_keeps_matching_shards_and_flags_changed_ones(tmp_path: Path):
    rows = read_manifest(_manifest(tmp_path, 6)).rows
    plans = plan_shards(rows, 2, _fingerprint)
    out = OutputDir(str(tmp_path / "out"))
    out.make()
    for index, settings, digest in ((0, "S", plans[0].digest), (1, "OTHER", plans[1].digest), (7, "S", "x")):
        name = f"shard-{index:06d}"
        out.write_json(f"{name}.stats.json", ShardStats(name, settings, digest, []).to_json())
    with tarfile.open(tmp_path / "out" / "shard-000002.tar", "w"):
        pass  # a tar without stats: killed between rename and stats, redone
    state = resume_state(out, plans, "S")
    assert [s.shard for s in state.done] == ["shard-000000"]
    assert [p.name for p in state.todo] == ["shard-000001", "shard-000002"]
    assert state.conflicts == ["shard-000007.stats.json", "shard-000001.stats.json"]


def test_retry_failed_reopens_shards_with_failed_rows(tmp_path: Path):
    plans = plan_shards(read_manifest(_manifest(tmp_path, 4)).rows, 2, _fingerprint)
    out = OutputDir(str(tmp_path / "out"))
    out.make()
    rows = [RowOutcome(1, "a", WRITTEN, keys=["a"]), RowOutcome(2, "b", FAILED, "stalled: no progress")]
    for plan, outcomes in zip(plans, (rows, [])):
        out.write_json(f"{plan.name}.stats.json", ShardStats(plan.name, "S", plan.digest, outcomes).to_json())
    assert [s.shard for s in resume_state(out, plans, "S").done] == ["shard-000000", "shard-000001"]
    state = resume_state(out, plans, "S", retry_failed=True)
    assert [p.name for p in state.todo] == ["shard-000000"] and not state.conflicts


def test_settings_digest_tracks_what_changes_the_bytes():
    base = load_config(None, [])
    same = load_config(None, ["pipeline.label_actors=4", "ray.num_cpus=2", "pipeline.out=elsewhere"])
    assert settings_digest(base) == settings_digest(same)
    changes = ["clip.frames=8", "pseudolabel.max_trajectories=100", "pipeline.frame_format=jpg"]
    for change in [*changes, "pipeline.label=false"]:
        assert settings_digest(load_config(None, [change])) != settings_digest(base), change


def test_settings_digest_tracks_the_jpeg_encoder(monkeypatch):
    jpg, mp4 = (load_config(None, [f"pipeline.frame_format={f}"]) for f in ("jpg", "mp4"))
    before = settings_digest(jpg), settings_digest(mp4)
    monkeypatch.setattr("trajtok.data.sample.JPEG_QUALITY", 80)  # other jpg bytes: other shards
    assert settings_digest(jpg) != before[0] and settings_digest(mp4) == before[1]


def test_check_config_names_the_key():
    with pytest.raises(ConfigError, match="data.manifest"):
        check_config(load_config(None, ["pipeline.out=x"]))
    with pytest.raises(ConfigError, match="pipeline.frame_format"):
        check_config(load_config(None, ["pipeline.out=x", "data.manifest=m", "pipeline.frame_format=gif"]))
    with pytest.raises(ConfigError, match="pseudolabel.name"):
        settings_digest(load_config(None, ["pseudolabel.name=nope"]))


def test_cli_aliases():
    assert expand_aliases(["manifest=m.jsonl", "out=s3://b/x", "clip.frames=8"], ALIASES) == [
        "data.manifest=m.jsonl",
        "pipeline.out=s3://b/x",
        "clip.frames=8",
    ]
