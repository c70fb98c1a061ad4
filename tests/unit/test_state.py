"""The checkpoint file: atomic, and never trusted when corrupt."""

from __future__ import annotations

import json

import pytest

from spark_build.errors import StateCorrupt
from spark_build.pipeline import state


def test_state_round_trips_through_the_file(tmp_path):
    path = tmp_path / "state.json"
    saved = state.BuildState(
        steps={"clone": state.StepRecord("abc", "done", 1.0, 2.0, "run1", {"commit": "deadbeef"})}, run_id="run1"
    )
    state.save(path, saved)
    assert state.load(path) == saved
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json"], "no temp file left behind"


def test_a_missing_state_file_means_no_recorded_build(tmp_path):
    assert state.load(tmp_path / "state.json") is None


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        json.dumps({"schema": 99, "steps": {}}).encode(),
        json.dumps({"schema": 1, "steps": {"x": {"bogus": 1}}}).encode(),
        b"\xff\xfe\x00binary garbage\x81",
    ],
    ids=["truncated-json", "unknown-schema", "wrong-fields", "binary-garbage"],
)
def test_a_corrupt_state_file_is_moved_aside_and_reported(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateCorrupt) as caught:
        state.load(path)
    assert not path.exists()
    aside = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content, "the evidence is kept"
    assert caught.value.exit_code == 2
    assert "without --resume" in (caught.value.hint or "")


def test_published_files_are_readable_by_other_users(tmp_path):
    from spark_build.durable import atomic_copy, atomic_write_text

    atomic_write_text(tmp_path / "index.html", "<html/>")
    source = tmp_path / "a.whl"
    source.write_bytes(b"wheel")
    atomic_copy(source, tmp_path / "house" / "a.whl")
    for path in (tmp_path / "index.html", tmp_path / "house" / "a.whl"):
        assert path.stat().st_mode & 0o044 == 0o044, oct(path.stat().st_mode)


def test_the_wheelhouse_index_of_a_workdir_that_never_published_is_written_not_crashed(tmp_path):
    from spark_build.wheel.wheelhouse import write_indexes

    wheelhouse = tmp_path / "new-workdir" / "wheelhouse"
    write_indexes(wheelhouse)
    assert "Simple index" in (wheelhouse / "index.html").read_text()
