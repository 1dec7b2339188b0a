"""`trajtok bench label` runs from its one command at a tiny size and reports what BENCHMARKS.md quotes."""

from __future__ import annotations

import json

from launch.cli import main


def test_bench_label_through_the_cli(tmp_path, capsys) -> None:
    out, picture = tmp_path / "label.json", tmp_path / "real.png"
    args = "--clips 2 --frames 4 --size 48 64 --speed-clips 1 --compare --compare-clips 1"
    assert main(["bench", "label", *args.split(), "--picture", str(picture), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["record"]["command"].startswith("trajtok bench label --clips 2")
    assert result["labeler"]["name"] == "classical" and result["clips"]["seeds"] == [0, 1]
    assert set(result["quality"]) == set(result["targets_met"]) == {"shapes", "blobs"}
    for generator, quality in result["quality"].items():
        assert 0 < quality["purity"] <= 1 and 0 <= quality["mean_best_overlap"] <= 1
        assert set(result["targets_met"][generator]) == {
            "purity",
            "mean_best_overlap",
            "duration_fraction",
            "num_trajectories",
        }
    assert result["speed"]["clips_per_s_per_core_cpu"] > 0 and result["decode_seconds"]["mp4_clip"] > 0
    assert result["memory"]["traced_peak_mib"] > 0
    assert [row["video"] for row in result["real_videos"]] == ["vtest.avi", "tree.avi"]
    assert all(1 <= row["trajectories"] <= 128 for row in result["real_videos"])
    assert len(result["compare"]) == 6  # 3 superpixel methods x 2 flows
    assert picture.stat().st_size > 0
    assert "| score | `shapes` | `blobs` | target |" in capsys.readouterr().out
