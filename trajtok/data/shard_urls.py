"""Shard specs to URLs: brace patterns, globs and fsspec URLs, without loading the data stack.

Kept apart from the loader so that the submit host's checks (and anything else that only names shards)
do not import torch and webdataset to expand a pattern.
"""

from __future__ import annotations

import glob as globlib

import braceexpand
import fsspec


def expand_shards(spec: str) -> list[str]:
    """`"a-{000..003}.tar b.tar dir/*.tar"` -> the list of URLs, in order.

    Items are separated by spaces; each is brace-expanded; an item with `*` or `?` is globbed (locally, or
    through fsspec for a URL).
    """
    urls: list[str] = []
    for item in spec.split():
        for url in braceexpand.braceexpand(item):
            if any(c in url for c in "*?["):
                urls.extend(_glob(url))
            else:
                urls.append(url)
    return urls


def _glob(pattern: str) -> list[str]:
    if "://" not in pattern:
        return sorted(globlib.glob(pattern))
    fs, _, _ = fsspec.get_fs_token_paths(pattern)
    protocol = pattern.split("://", 1)[0]
    return [f"{protocol}://{p}" if "://" not in p else p for p in sorted(fs.glob(pattern))]
