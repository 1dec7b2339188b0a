"""Manifests: the list of videos and captions a pipeline job starts from.

Three formats, chosen by suffix (`format=` overrides; other suffixes go by the first character):
- JSONL (`.jsonl`, `.ndjson`): one object per line, e.g.
  `{"video": "clips/a.mp4", "caption": ["a dog runs", "a brown dog"], "start": 2.0, "end": 6.5, "id": "a"}`.
- CSV (`.csv`): a header row with the same column names. A caption cell that parses as a JSON list of
  strings (`["a dog runs", "a brown dog"]`) holds several captions; any other text is one caption. Empty
  `start`/`end`/`id` cells mean "not given".
- TrajViT JSON (`.json`; one starting with `{` is read as JSONL): the list of objects the public
  TrajViT/TrajTok code reads, `[{"video": "v.mp4", "caption": "..."}, ...]`; `image` is accepted for
  `video` (image datasets), and extra keys such as `mask`/`graph` sidecar paths are kept.

`video` may be relative (to the manifest's directory, or to `root` when given), absolute, or a URI
(`s3://...`, `file://...`); rows expose the resolved `path` and `is_uri`. Whether a path is allowed
(e.g. must not escape into where the pipeline writes) is the pipeline's decision. Columns other than
video/caption/start/end/id are kept in `extra`.

Pipelines account for every row: with `strict=False` a malformed row becomes a `ManifestProblem(line,
reason)` beside the good rows; with `strict=True` the first one raises `ManifestError("<file>:<line>:
<reason>")`. A file that cannot be read as a whole (missing, no header, not a JSON list) always raises.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import fsspec

from trajtok.errors import ManifestError

FORMATS = ("jsonl", "csv", "json")
KNOWN_FIELDS = ("video", "caption", "start", "end", "id")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str) -> bool:
    """True for `scheme://...` locations (object stores, http, file://), False for plain paths."""
    return bool(_URI.match(location))


def resolve_location(location: str, base: str) -> str:
    """A URI or absolute path as it is; a relative path joined to `base` (a directory path or URI)."""
    if is_uri(location) or os.path.isabs(location):
        return location
    if is_uri(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, location))}"
    return os.path.normpath(os.path.join(base, location))


@dataclass(frozen=True)
class ManifestRow:
    """One good row: a video (or image) with its captions and optional time window."""

    line: int  # line of the file (for CSV, where the record ends; for TrajViT JSON, where the object starts)
    video: str  # as written in the manifest
    path: str  # resolved: an absolute local path or a URI
    is_uri: bool
    captions: list[str]
    start: float | None = None  # seconds
    end: float | None = None
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    base: str = ""  # directory (or URI) relative locations were resolved against

    def resolve(self, location: str) -> str:
        """Resolve another location of this row (e.g. `extra["gt_labels"]`) the way `video` was."""
        return resolve_location(location, self.base)


class ManifestProblem(NamedTuple):
    """A row that was skipped, and why."""

    line: int
    reason: str


@dataclass
class Manifest:
    """What was read from one manifest file."""

    source: str
    rows: list[ManifestRow]
    problems: list[ManifestProblem]

    @property
    def total(self) -> int:
        """Every data row of the file: good or problem."""
        return len(self.rows) + len(self.problems)


def read_manifest(
    path: str | Path,
    *,
    strict: bool = True,
    format: str | None = None,
    root: str | Path | None = None,
    needs_caption: bool = True,
) -> Manifest:
    """Read a JSONL, CSV or TrajViT JSON manifest; see the module docstring for formats and modes.
    `needs_caption=False`: a row without `caption` is read with none (a QA set's rows carry questions)."""
    source = str(path)
    text = _read_text(source)
    fmt = format or _detect_format(source, text)
    if fmt not in FORMATS:
        raise ManifestError(f"{source}: unknown manifest format {fmt!r} (expected one of {FORMATS})")
    if root is None:
        base = _parent(source)
    else:
        base = str(root) if is_uri(str(root)) else os.path.abspath(root)
    records = {"jsonl": _jsonl_records, "csv": _csv_records, "json": _json_list_records}[fmt](text, source)
    rows: list[ManifestRow] = []
    problems: list[ManifestProblem] = []
    first_line_of_id: dict[str, int] = {}
    for line, record in records:
        try:
            row = _build_row(line, record, base, fmt == "json", needs_caption)
            if row.id is not None:
                if row.id in first_line_of_id:
                    raise _RowError(f"duplicate id {row.id!r} (first on line {first_line_of_id[row.id]})")
                first_line_of_id[row.id] = line
        except _RowError as err:
            if strict:
                raise ManifestError(f"{source}:{line}: {err}") from None
            problems.append(ManifestProblem(line, str(err)))
            continue
        rows.append(row)
    return Manifest(source, rows, problems)


class _RowError(Exception):
    """A malformed row; becomes a ManifestProblem or, in strict mode, a ManifestError."""


def _read_text(source: str) -> str:
    try:
        with fsspec.open(source, "rt", encoding="utf-8-sig") as f:
            return f.read()
    except FileNotFoundError:
        raise ManifestError(f"{source}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{source}: cannot read manifest ({err})") from None


def _parent(source: str) -> str:
    if is_uri(source):
        scheme, rest = source.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return os.path.dirname(os.path.abspath(source))


def _detect_format(source: str, text: str) -> str:
    suffix = posixpath.splitext(source.lower())[1]
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    first = text.lstrip()[:1]
    if first == "{":
        return "jsonl"
    if first == "[" or suffix == ".json":
        return "json"
    raise ManifestError(f"{source}: cannot tell the manifest format; use .jsonl, .csv or a .json list")


Records = Iterator[tuple[int, "dict[str, Any] | _RowError"]]


def _jsonl_records(text: str, source: str) -> Records:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            yield line, _RowError(f"bad JSON: {err.msg} at column {err.colno}")
            continue
        yield line, record if isinstance(record, dict) else _RowError("expected a JSON object")


def _csv_records(text: str, source: str) -> Records:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [name for name in ("video", "caption") if name not in header]
    if missing:
        raise ManifestError(f"{source}:1: CSV header has no {' or '.join(missing)} column (has {header})")
    for record in reader:
        if None in record:
            yield reader.line_num, _RowError(f"more cells than the {len(header)} header columns")
            continue
        cells = {key: value for key, value in record.items() if value is not None}
        if "caption" in cells:
            cells["caption"] = _csv_caption(cells["caption"])
        for name in ("start", "end", "id"):
            if cells.get(name) == "":
                del cells[name]
        yield reader.line_num, cells


def _csv_caption(cell: str) -> str | list[Any]:
    if cell.lstrip().startswith("["):
        try:
            value = json.loads(cell)
        except json.JSONDecodeError:
            return cell  # text that merely starts with "[", e.g. "[music] a man sings"
        if isinstance(value, list):
            return value
    return cell


def _json_list_records(text: str, source: str) -> Records:
    """Items of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    if text[pos : pos + 1] != "[":
        raise ManifestError(f"{source}: expected a JSON list of objects")
    line, counted = 1, 0
    pos = _skip_space(text, pos + 1)
    if text[pos : pos + 1] == "]":
        return
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{source}:{err.lineno}: bad JSON: {err.msg}") from None
        yield line, item if isinstance(item, dict) else _RowError("expected a JSON object")
        pos = _skip_space(text, pos)
        separator = text[pos : pos + 1]
        if separator == "]":
            return
        if separator != ",":
            lineno = text.count("\n", 0, pos) + 1
            raise ManifestError(f"{source}:{lineno}: bad JSON: expected ',' or ']' after an item")
        pos = _skip_space(text, pos + 1)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _build_row(
    line: int, record: dict[str, Any] | _RowError, base: str, image_alias: bool, needs_caption: bool = True
) -> ManifestRow:
    if isinstance(record, _RowError):
        raise record
    record = dict(record)
    if image_alias and "video" not in record and "image" in record:
        record["video"] = record.pop("image")
    if "video" not in record:
        raise _RowError("missing 'video' field")
    video = record.pop("video")
    if not isinstance(video, str) or not video.strip():
        raise _RowError("'video' must be a non-empty string")
    video = video.strip()
    caption = record.pop("caption", None)
    captions = _captions(caption) if caption is not None or needs_caption else []
    start = _seconds(record.pop("start", None), "start")
    end = _seconds(record.pop("end", None), "end")
    if end is not None and end <= (start or 0.0):
        raise _RowError(f"end {end:g} s is not after start {start or 0.0:g} s")
    raw_id = record.pop("id", None)
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, (str, int))):
        raise _RowError("'id' must be a string or an integer")
    row_id = None if raw_id is None else str(raw_id).strip() or None
    path = resolve_location(video, base)
    return ManifestRow(line, video, path, is_uri(path), captions, start, end, row_id, record, base)


def _captions(value: Any) -> list[str]:
    if value is None:
        raise _RowError("missing 'caption' field")
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise _RowError("'caption' must be a string or a list of strings")
    captions = [item.strip() for item in items]
    if not captions or not all(captions):
        raise _RowError("empty caption")
    return captions


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _RowError(f"'{name}' must be a number of seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise _RowError(f"'{name}' is not a number: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise _RowError(f"'{name}' must be a finite, non-negative number of seconds, got {value!r}")
    return seconds
