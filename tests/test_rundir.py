"""The run directory's one writer: a file is replaced whole or not at all."""

from __future__ import annotations

import json

import pytest

from trajtok.rundir import atomic_path, read_run_id, write_json, write_run_id


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "run" / "state.json", {"step": 4})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"step": ')  # killed half-way through the new version
        raise RuntimeError("disk full")
    assert json.loads(target.read_text()) == {"step": 4}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_the_run_id_round_trips_and_is_empty_for_a_new_directory(tmp_path):
    assert read_run_id(tmp_path) == ""
    write_run_id(tmp_path, "0123abcd")
    assert read_run_id(tmp_path) == "0123abcd"
