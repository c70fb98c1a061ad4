"""The release watch's pure decisions: which releases are new to the patch series."""

from __future__ import annotations

from packaging.version import Version

from spark_build.nightly.official import OfficialWheel, Place
from spark_build.nightly.release_watch import sdist_releases, series_tested_below
from spark_build.upstream.patches import read_series
from tests.conftest import ROOT


def test_the_series_was_tested_below_0_34_0_the_bound_of_its_one_open_range() -> None:
    # 0001-0005 end for good (upstream or a newer patch took over); 0006 ends where testing ended.
    assert series_tested_below(read_series(ROOT / "patches" / "vllm")) == Version("0.34.0")


def test_only_final_releases_with_a_source_distribution_count() -> None:
    names = [
        "vllm-0.33.0.tar.gz",
        "vllm-0.34.0.tar.gz",
        "vllm-0.34.0-cp38-abi3-manylinux_2_28_aarch64.whl",
        "vllm-0.35.0rc1.tar.gz",
        "vllm_other-1.0.0.tar.gz",
        "vllm-0.35.0.dev3.tar.gz",
    ]
    files = [OfficialWheel(n, f"https://example.invalid/{n}", "0" * 64, Place.INDEX) for n in names]
    assert sorted(sdist_releases(files)) == [Version("0.33.0"), Version("0.34.0")]
