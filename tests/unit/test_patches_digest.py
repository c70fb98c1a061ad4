"""The patch step's fingerprint (`patches_digest`): what `--resume` compares to decide whether the
patch step, and everything after it, reruns. It is taken over a copy of the shipped `patches/`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spark_build.upstream.patches import patches_digest, series_names

SHIPPED = Path(__file__).resolve().parents[2] / "patches"


@pytest.fixture
def patches(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SHIPPED, tmp_path / "patches"))


def test_editing_the_readme_or_a_series_comment_or_an_unlisted_file_keeps_the_digest(patches: Path) -> None:
    before = patches_digest(patches)
    (patches / "README").write_text((patches / "README").read_text() + "\nOne more word on how patches are named.\n")
    series = patches / "vllm" / "series"
    series.write_text("# a comment about the order\n" + series.read_text())
    (patches / "vllm" / "0099-draft-not-in-the-series.patch").write_text("Releases: >=0.99.0\n")
    assert patches_digest(patches) == before


def test_editing_a_listed_patch_changes_the_digest(patches: Path) -> None:
    before = patches_digest(patches)
    patch = patches / "vllm" / series_names(patches / "vllm")[-1]
    patch.write_text(patch.read_text().replace("Releases:", "Releases: ", 1))
    assert patches_digest(patches) != before


def test_reordering_or_dropping_a_patch_from_the_series_changes_the_digest(patches: Path) -> None:
    series = patches / "vllm" / "series"
    names = series_names(patches / "vllm")
    before = patches_digest(patches)
    series.write_text("\n".join([names[1], names[0], *names[2:]]) + "\n")
    reordered = patches_digest(patches)
    series.write_text("\n".join(names[1:]) + "\n")
    assert len({before, reordered, patches_digest(patches)}) == 3


def test_a_listed_patch_that_is_missing_changes_the_digest_instead_of_failing_the_plan(patches: Path) -> None:
    before = patches_digest(patches)
    (patches / "vllm" / series_names(patches / "vllm")[0]).unlink()
    assert patches_digest(patches) != before
