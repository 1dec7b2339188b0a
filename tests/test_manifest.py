"""Manifests: JSONL, CSV and TrajViT JSON; path resolution; problem rows with line numbers; strict mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest

from trajtok.data.manifest import ManifestProblem, is_uri, read_manifest, resolve_location
from trajtok.errors import ManifestError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jsonl(*rows: object) -> str:
    return "\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n"


def test_jsonl_rows_paths_and_extra(tmp_path, shared_videos):
    vtest = shared_videos / "vtest.avi"
    manifest = write(
        tmp_path / "data" / "m.jsonl",
        jsonl(
            {
                "video": "videos/a.mp4",
                "caption": "a red circle moving left",
                "id": "a",
                "gt_labels": "l/a.npz",
            },
            {"video": str(vtest), "caption": ["people walk", "a plaza"], "start": 1.5, "end": 4},
            "",
            {"video": "s3://bucket/clips/c.mp4", "caption": "  a tree  ", "id": 7},
        ),
    )
    m = read_manifest(manifest)
    assert m.problems == [] and m.total == 3
    a, b, c = m.rows
    assert (a.line, b.line, c.line) == (1, 2, 4)  # the blank line is skipped but still counted
    assert a.video == "videos/a.mp4"
    assert a.path == str(tmp_path / "data" / "videos" / "a.mp4") and not a.is_uri
    assert a.captions == ["a red circle moving left"] and a.id == "a"
    assert a.extra == {"gt_labels": "l/a.npz"}
    assert a.resolve(a.extra["gt_labels"]) == str(tmp_path / "data" / "l" / "a.npz")
    assert b.path == str(vtest) and os.path.isfile(b.path)
    assert b.captions == ["people walk", "a plaza"] and (b.start, b.end) == (1.5, 4.0) and b.id is None
    assert c.path == "s3://bucket/clips/c.mp4" and c.is_uri
    assert c.captions == ["a tree"] and c.id == "7" and (c.start, c.end) == (None, None)


def test_relative_paths_resolve_against_the_manifest_directory_not_the_cwd(tmp_path, monkeypatch):
    manifest = write(tmp_path / "sets" / "one" / "m.jsonl", jsonl({"video": "../v/x.mp4", "caption": "x"}))
    monkeypatch.chdir(tmp_path / "sets")
    row = read_manifest("one/m.jsonl").rows[0]
    assert row.path == str(tmp_path / "sets" / "v" / "x.mp4")
    assert row.base == str(manifest.parent)
    # a root overrides the base (TrajViT lists are relative to a separate video root)
    assert read_manifest(manifest, root=tmp_path / "r").rows[0].path == str(tmp_path / "v" / "x.mp4")
    assert read_manifest(manifest, root="gs://b/d").rows[0].path == "gs://b/v/x.mp4"


def test_manifest_on_a_uri_resolves_relative_videos_on_the_same_store():
    with fsspec.open("memory://sets/m.jsonl", "wt") as f:
        f.write(jsonl({"video": "clips/a.mp4", "caption": "a"}, {"video": "/abs/b.mp4", "caption": "b"}))
    a, b = read_manifest("memory://sets/m.jsonl").rows
    assert a.path == "memory://sets/clips/a.mp4" and a.is_uri
    assert b.path == "/abs/b.mp4" and not b.is_uri


def test_location_helpers():
    assert is_uri("s3://b/k") and is_uri("file:///x") and is_uri("https://h/v.mp4")
    assert not is_uri("/x/y.mp4") and not is_uri("rel/y.mp4") and not is_uri("C:/x")
    assert resolve_location("a/../b.mp4", "/data") == "/data/b.mp4"
    assert resolve_location("http://h/v.mp4", "/data") == "http://h/v.mp4"


def test_problem_rows_are_reported_with_line_numbers(tmp_path):
    manifest = write(
        tmp_path / "m.jsonl",
        jsonl(
            {"video": "ok1.mp4", "caption": "fine"},
            {"caption": "no video"},
            {"video": "b.mp4", "caption": "   "},
            '{"video": "c.mp4", "caption": "broken',
            {"video": "d.mp4", "caption": "backwards", "start": 5, "end": 2},
            {"video": "e.mp4", "caption": []},
            {"video": "f.mp4", "caption": "x", "start": "soon"},
            "[1, 2]",
            {"video": "ok2.mp4", "caption": "fine too", "id": "k"},
            {"video": "g.mp4", "caption": "again", "id": "k"},
            {"video": "", "caption": "empty"},
            {"video": "h.mp4", "caption": ["one", 2]},
            {"video": "i.mp4", "caption": "x", "end": -1},
        ),
    )
    m = read_manifest(manifest, strict=False)
    assert [r.video for r in m.rows] == ["ok1.mp4", "ok2.mp4"]
    assert [p.line for p in m.problems] == [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13]
    assert m.total == 13
    reasons = dict(m.problems)
    assert reasons[2] == "missing 'video' field"
    assert reasons[3] == "empty caption"
    assert reasons[4].startswith("bad JSON:")
    assert reasons[5] == "end 2 s is not after start 5 s"
    assert reasons[6] == "empty caption"
    assert reasons[7] == "'start' is not a number: 'soon'"
    assert reasons[8] == "expected a JSON object"
    assert reasons[10] == "duplicate id 'k' (first on line 9)"
    assert reasons[11] == "'video' must be a non-empty string"
    assert reasons[12] == "'caption' must be a string or a list of strings"
    assert "non-negative" in reasons[13]
    assert isinstance(m.problems[0], ManifestProblem)


def test_strict_mode_raises_on_the_first_problem_with_file_and_line(tmp_path):
    manifest = write(
        tmp_path / "m.jsonl",
        jsonl({"video": "a.mp4", "caption": "a"}, {"video": "b.mp4", "caption": "b", "end": 0}, {"x": 1}),
    )
    with pytest.raises(ManifestError, match=rf"^{manifest}:2: end 0 s is not after start 0 s$"):
        read_manifest(manifest)


def test_csv_with_caption_lists_empty_cells_and_extra_columns(tmp_path):
    manifest = write(
        tmp_path / "m.csv",
        "video,caption,start,end,id,gt_labels\n"
        "a.mp4,a dog runs,,,,labels/a.npz\n"
        'b.mp4,"[""a dog"", ""a brown dog""]",1,2.5,b,\n'
        '"c,1.mp4","[music] a man sings, loudly",0,3,,\n'
        "d.mp4,,,,,\n"
        'e.mp4,"a caption\nover two lines",,,,\n'
        "f.mp4,too,many,cells,1,2,3\n"
        'g.mp4,"[1, 2]",,,,\n'
        "h.mp4,x,3,2,,\n",
    )
    m = read_manifest(manifest, strict=False)
    a, b, c, e = m.rows
    assert a.captions == ["a dog runs"] and a.start is None and a.id is None
    assert a.extra == {"gt_labels": "labels/a.npz"}
    assert b.captions == ["a dog", "a brown dog"] and (b.start, b.end) == (1.0, 2.5) and b.id == "b"
    assert c.video == "c,1.mp4" and c.captions == ["[music] a man sings, loudly"]
    assert e.captions == ["a caption\nover two lines"] and e.line == 7  # the line where the record ends
    assert dict(m.problems) == {
        5: "empty caption",
        8: "more cells than the 6 header columns",
        9: "'caption' must be a string or a list of strings",
        10: "end 2 s is not after start 3 s",
    }
    with pytest.raises(ManifestError, match=rf"^{manifest}:5: empty caption$"):
        read_manifest(manifest)


def test_csv_without_required_columns_is_a_file_error(tmp_path):
    manifest = write(tmp_path / "m.csv", "path,text\na.mp4,hello\n")
    with pytest.raises(ManifestError, match=r"m\.csv:1: CSV header has no video or caption column"):
        read_manifest(manifest, strict=False)


def test_trajvit_json_list(tmp_path):
    # the layout of the public TrajViT metadata files: a JSON list, one object per video, indented
    items = [
        {"video": "video7020.mp4", "caption": "a woman creating a fondant baby and flower"},
        {"image": "img_001.jpg", "caption": ["a dog", "a dog in grass"]},
        {"video": "clip_002.mp4", "caption": "", "mask": "m/clip_002_mask.npz"},
        {"video": "clip_003.mp4", "caption": "skier", "mask": "m/c3_mask.npz", "graph": "m/c3_graph.npz"},
    ]
    manifest = write(tmp_path / "meta" / "msrvtt.json", json.dumps(items, indent=4))
    m = read_manifest(manifest, strict=False, root=tmp_path / "videos")
    first, image, last = m.rows
    assert first.path == str(tmp_path / "videos" / "video7020.mp4") and first.line == 2
    assert image.video == "img_001.jpg" and image.captions == ["a dog", "a dog in grass"]
    assert last.extra == {"mask": "m/c3_mask.npz", "graph": "m/c3_graph.npz"}
    assert last.resolve(last.extra["graph"]) == str(tmp_path / "videos" / "m" / "c3_graph.npz")
    assert m.problems == [ManifestProblem(line=13, reason="empty caption")]
    assert (last.line, m.total) == (18, 4)


def test_trajvit_json_that_is_not_a_list_or_is_broken(tmp_path):
    with pytest.raises(ManifestError, match=r"x\.json: expected a JSON list of objects"):
        read_manifest(write(tmp_path / "x.json", '"just a string"'), strict=False)
    broken = write(tmp_path / "y.json", '[\n  {"video": "a.mp4", "caption": "a"},\n  {"video": \n]')
    with pytest.raises(ManifestError, match=r"y\.json:4: bad JSON"):
        read_manifest(broken, strict=False)
    assert read_manifest(write(tmp_path / "empty.json", " [ ] ")).total == 0


def test_format_detection_and_unreadable_files(tmp_path):
    lines = write(tmp_path / "m.json", jsonl({"video": "a.mp4", "caption": "a"}))  # JSONL in a .json file
    assert read_manifest(lines).rows[0].video == "a.mp4"
    with pytest.raises(ManifestError, match=r"nope\.jsonl: manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    with pytest.raises(ManifestError, match="cannot tell the manifest format"):
        read_manifest(write(tmp_path / "m.txt", "a.mp4 hello\n"))
    with pytest.raises(ManifestError, match="unknown manifest format 'xml'"):
        read_manifest(lines, format="xml")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match=r"bin\.jsonl: cannot read manifest"):
        read_manifest(binary)
