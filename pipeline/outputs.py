"""The output folder of a shard job: shard tars, their stats, the summary; local path or fsspec URI.

Every file is written under a temporary name and moved into place when complete, so a reader (or a
rerun after `kill -9`) never sees half a shard under its final name. A shard's stats JSON is written
after its tar is in place and is the only completion marker. Only names this module builds are ever
joined to the folder, and each is checked to be a plain file name, so nothing in a manifest can make the
job write outside it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec

SUMMARY_NAME = "summary.json"
TAR_SUFFIX = ".tar"
STATS_SUFFIX = ".stats.json"  # `shard-000003.stats.json` beside `shard-000003.tar`: the completion marker
_SHARD_PREFIX = "shard-"
_TMP_MARK = ".tmp-"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def shard_name(index: int) -> str:
    return f"{_SHARD_PREFIX}{index:06d}"


class OutputDir:
    """One output folder (`/abs/path`, `file://...`, `s3://bucket/prefix`, ...), shared by driver and workers.

    Picklable (it keeps only the URL), so the driver hands it to Ray workers, which open their own
    file system objects.
    """

    def __init__(self, url: str) -> None:
        fs, root = fsspec.core.url_to_fs(url)
        self.url = fs.unstrip_protocol(root) if fs.protocol != ("file", "local") else root
        self._fs, self._root = fs, root.rstrip("/")

    def __reduce__(self):
        return (OutputDir, (self.url,))

    def __repr__(self) -> str:
        return f"OutputDir({self.url!r})"

    def path(self, name: str) -> str:
        """The full path of `name` in the folder; refuses anything but a plain file name."""
        if not _PLAIN_NAME.match(name) or ".." in name:
            raise ValueError(f"refusing to write {name!r}: not a plain file name inside {self.url}")
        return f"{self._root}/{name}"

    def display(self, name: str) -> str:
        """`name` as the user would type it (with the URL's protocol)."""
        return f"{self.url.rstrip('/')}/{name}"

    def make(self) -> None:
        """Create the folder and prove it is writable (a file written, then removed)."""
        self._fs.makedirs(self._root, exist_ok=True)
        probe = self.path(f"write-probe{_TMP_MARK}{uuid.uuid4().hex}")
        with self._fs.open(probe, "wb") as f:
            f.write(b"ok")
        self._fs.rm(probe)

    def exists(self, name: str) -> bool:
        return self._fs.exists(self.path(name))

    def size(self, name: str) -> int:
        return int(self._fs.size(self.path(name)))

    def names(self) -> list[str]:
        """Sorted plain names in the folder (no sub-folders)."""
        if not self._fs.exists(self._root):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(self._root, detail=False))

    def open_read(self, name: str) -> IO[bytes]:
        return self._fs.open(self.path(name), "rb")

    def read_json(self, name: str) -> Any:
        with self.open_read(name) as f:
            return json.loads(f.read())

    @contextmanager
    def atomic_writer(self, name: str) -> Iterator[IO[bytes]]:
        """A binary file that appears under `name` only if the block completes; else it is removed."""
        final = self.path(name)
        tmp = self.path(f"{name}{_TMP_MARK}{uuid.uuid4().hex}")
        try:
            with self._fs.open(tmp, "wb") as f:
                yield f
            self._fs.mv(tmp, final)
        finally:
            if self._fs.exists(tmp):
                self._fs.rm(tmp)

    def write_json(self, name: str, obj: Any) -> None:
        with self.atomic_writer(name) as f:
            f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def remove(self, name: str) -> None:
        if self.exists(name):
            self._fs.rm(self.path(name))

    def remove_leftovers(self, stem: str | None = None) -> None:
        """Delete temporary files left by killed writers: those of `stem` (`shard-000003.tar.tmp-...`),
        or all of them (only while no writer of this folder runs)."""
        for other in self.names():
            if _TMP_MARK in other and (stem is None or other.startswith(stem + ".")):
                self.remove(other)
