"""make_example_upstream refuses to overwrite a folder; the repository it makes with git and the
wheel it builds are tested in tests/integration/test_example_upstream.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build.errors import UsageError
from spark_build.upstream.example import make_example_upstream


def test_make_example_upstream_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError) as caught:
        make_example_upstream(tmp_path)
    assert str(tmp_path) in caught.value.message
    assert "\n" not in caught.value.message
    assert caught.value.hint
    assert caught.value.exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
