"""Recipe facts read from the real vLLM 0.13.0 and 0.33.0 sdists (from the package index, fetched
before the unit guard is on: tests/unit/conftest.py), by rules (no table per release), and the
patch series scoped by release range."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.errors import StepFailed
from spark_build.upstream.facts import (
    PYPI_INDEX,
    TORCH_CU130_INDEX,
    SourceFacts,
    build_for,
    gcc_minimum,
    read_facts,
    requested_archs,
    text_for_cuda,
    torch_index_for,
)
from spark_build.upstream.facts_report import facts_lines, markdown_table
from spark_build.upstream.patches import find_series, read_patch
from spark_build.upstream.sdist import unpack_recipe_files
from tests.artifacts import vllm_sdist

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vllm_sdists("0.13.0", "0.33.0")


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SourceFacts]:
    read = {}
    for version in ("0.13.0", "0.33.0"):
        read[version] = read_facts(unpack_recipe_files(vllm_sdist(version), tmp_path_factory.mktemp(version)))
    return read


def test_0_13_0_builds_with_torch_2_9_from_the_cu130_index_as_cxx17(facts: dict[str, SourceFacts]) -> None:
    f = facts["0.13.0"]
    assert f.version == "0.13.0"
    assert f.torch is not None
    assert f.torch.packages == ("torch==2.9.0", "torchvision==0.24.0", "torchaudio==2.9.0")
    assert f.torch.index == TORCH_CU130_INDEX
    assert (f.cxx_standard, f.requires_python, f.cutlass_revision) == ("17", ">=3.10,<3.14", "v4.2.1")
    assert (f.use_existing_torch, f.build_requirements) == ("use_existing_torch.py", ("requirements/build.txt",))


def test_0_33_0_builds_with_torch_2_14_from_the_package_index_as_cxx20(facts: dict[str, SourceFacts]) -> None:
    f = facts["0.33.0"]
    assert f.torch is not None
    # torchaudio stays at 2.11.0 in 0.33.0's requirements/cuda.txt: read, not assumed to follow torch.
    assert f.torch.packages == ("torch==2.14.0", "torchvision==0.29.0", "torchaudio==2.11.0")
    assert f.torch.index == PYPI_INDEX
    assert (f.cxx_standard, f.requires_python, f.cutlass_revision) == ("20", ">=3.11,<3.15", "v4.7.1")
    assert f.use_existing_torch == "tools/use_existing_torch.py"
    assert f.build_requirements == ("requirements/build/cuda.txt",)


def test_12_1a_meets_the_12_0_family_under_cuda_13_and_qutlass_runs_only_from_the_release_that_asks_12_0f(
    facts: dict[str, SourceFacts],
) -> None:
    old = {p.name: p for p in facts["0.13.0"].projects}
    new = {p.name: p for p in facts["0.33.0"].projects}
    assert facts["0.13.0"].cmake_arch == facts["0.33.0"].cmake_arch == "12.0"
    assert old["qutlass"].target_use == "cannot run (12.0a)"  # what patches/vllm/0001 fixes
    assert new["qutlass"].target_use == "runs (12.0f)"
    assert new["deepgemm"].target_use == "runs (12.0f)"
    assert new["flashmla"].target_use.startswith("not built")
    assert new["cutlass"].target_use == "no arch gate"  # headers for vLLM's own kernels
    assert {p.src_dir_env for p in new.values()} >= {"DEEPGEMM_SRC_DIR", "TML_FA4_SRC_DIR", "FMHA_SM100_SRC_DIR"}


@pytest.mark.parametrize(
    ("torch", "index"),
    [("2.9.0", TORCH_CU130_INDEX), ("2.10.0", TORCH_CU130_INDEX), ("2.11.0", PYPI_INDEX), ("2.14.0", PYPI_INDEX)],
    ids=["2.9 cu130 index", "2.10 cu130 index", "2.11 package index", "2.14 package index"],
)
def test_the_torch_index_is_the_one_with_cuda_13_linux_wheels_of_that_torch(torch: str, index: str) -> None:
    assert torch_index_for(Version(torch))[0] == index


def test_cuda_version_branches_are_read_as_cuda_13_0_reads_them() -> None:
    text = """
set(ARCHS)
if(${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 13.4)
  list(APPEND ARCHS "10.7f")
elseif(${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER_EQUAL 13.0)
  list(APPEND ARCHS "12.0f")
else()
  list(APPEND ARCHS 12.0a 12.1a)
endif()
cuda_archs_loose_intersection(OUT "${ARCHS}" "${CUDA_ARCHS}")
"""
    assert requested_archs(text_for_cuda(text, Version("13.0"))) == ("12.0f",)
    assert requested_archs(text_for_cuda(text, Version("12.8"))) == ("12.0a", "12.1a")


@pytest.mark.parametrize(
    ("requested", "target", "built"),
    [(("12.0a", "10.0a"), "12.0", "12.0a"), (("10.0f", "12.0f"), "12.1a", "12.1a"), (("9.0a",), "12.0", None)],
    ids=["exact base wins", "family entry takes the target", "no match builds nothing"],
)
def test_the_arch_a_project_builds_follows_vllms_loose_intersection(
    requested: tuple[str, ...], target: str, built: str | None
) -> None:
    assert build_for(requested, target) == built


def test_the_report_prints_every_fact_and_the_table_one_row_per_release(facts: dict[str, SourceFacts]) -> None:
    lines = "\n".join(facts_lines("vllm-0.33.0.tar.gz", facts["0.33.0"]))
    assert "torch==2.14.0" in lines and "tools/use_existing_torch.py" in lines and "DEEPGEMM_SRC_DIR" in lines
    assert "spark-build patches  none cover this release" in lines
    table = markdown_table([(facts["0.13.0"], ("0001-a.patch", "0002-b.patch")), (facts["0.33.0"], ())])
    assert "| 0.13.0 | `use_existing_torch.py`" in table and "| 0.33.0 | `tools/use_existing_torch.py`" in table
    assert "| 5 | 0001, 0002 |" in table and "| 10 | — |" in table


QUTLASS_0_14 = "0003-qutlass-12.0f-family-code-with-cuda13-0.14.patch"
FA3_0_17 = "0006-build-fa3-only-for-9.x-archs-0.17.patch"


@pytest.mark.parametrize(
    ("version", "applies"),
    [
        (
            "0.13.0",
            [
                "0001-qutlass-12.0f-family-code-with-cuda13.patch",
                "0002-build-fa3-only-for-9.x-archs.patch",
                "0007-native-12.x-code-for-ptx-only-families.patch",
            ],
        ),
        ("0.14.0", [QUTLASS_0_14, "0004-build-fa3-only-for-9.x-archs-0.14.patch"]),
        ("0.16.0", [QUTLASS_0_14, "0005-build-fa3-only-for-9.x-archs-0.16.patch"]),
        ("0.17.0", [QUTLASS_0_14, FA3_0_17]),
        ("0.18.1", [QUTLASS_0_14, FA3_0_17]),
        ("0.19.0", [FA3_0_17]),
        ("0.33.0", [FA3_0_17]),
        ("0.34.0", []),
    ],
    ids=[
        "0.13 qutlass, FA3 and the native 12.x families",
        "0.14 the refreshed qutlass and FA3 fixes",
        "0.16 FA3 refreshed again",
        "0.17 FA3 for 0.17 on",
        "0.18.1 still both",
        "0.19 has 12.0f upstream, FA3 gate still ours",
        "0.33 the FA3 gate",
        "0.34 none covers it",
    ],
)
def test_each_release_gets_the_patches_whose_declared_range_covers_it(version: str, applies: list[str]) -> None:
    series = find_series(ROOT / "patches", "vllm", Version(version))
    assert series is not None
    assert [p.name for p in series.patches] == applies
    assert all(p.why for p in series.patches + series.skipped)


def test_a_patch_without_a_declared_range_is_refused_by_name(tmp_path: Path) -> None:
    patch = tmp_path / "0009-unscoped.patch"
    patch.write_text("fix something\n---\ndiff --git a/x b/x\n")
    with pytest.raises(StepFailed, match="0009-unscoped.patch declares no release range"):
        read_patch(patch)


@pytest.mark.parametrize(
    ("cmakelists", "minimum"),
    [
        pytest.param("project(x)\n", None, id="no-gate"),
        pytest.param(
            'if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS "11.3")\n'
            '  message(FATAL_ERROR "GCC >= 11.3 is required")\nendif()\n'
            'if (VLLM_GPU_LANG STREQUAL "CUDA"\n    AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"\n'
            '    AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS "13")\n  message(FATAL_ERROR "GCC >= 13")\nendif()\n',
            "13",
            id="the-highest-gate-of-a-cuda-build",
        ),
        pytest.param(
            'if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS "13")\n'
            '  message(WARNING "old GCC")\nendif()\n',
            None,
            id="a-warning-is-no-gate",
        ),
        pytest.param(
            'if (VLLM_GPU_LANG STREQUAL "HIP" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"'
            ' AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS "14")\n  message(FATAL_ERROR "x")\nendif()\n',
            None,
            id="a-rocm-only-gate-is-not-for-cuda",
        ),
    ],
)
def test_the_gcc_a_release_requires_is_the_highest_version_its_configure_stops_below(
    cmakelists: str, minimum: str | None
) -> None:
    assert gcc_minimum(cmakelists) == minimum


@pytest.mark.parametrize(
    ("version", "beyond"),
    [
        pytest.param("0.33.0", [], id="inside-0006s-range"),
        pytest.param("0.34.0", [FA3_0_17], id="0.34-newer-than-tested-gets-the-fa3-gate-only"),
        pytest.param("1.2.0", [FA3_0_17], id="any-newer-release"),
        pytest.param("0.12.0", [], id="older-than-every-lower-bound"),
    ],
)
def test_only_a_patch_whose_range_ends_where_testing_ended_is_tried_beyond_it(version: str, beyond: list[str]) -> None:
    series = find_series(ROOT / "patches", "vllm", Version(version))
    assert series is not None
    assert [p.name for p in series.beyond] == beyond
    assert all(p.tested_up_to() == "0.33.x" for p in series.beyond)


def _patch(tmp_path: Path, headers: str) -> Path:
    path = tmp_path / "0009-x.patch"
    path.write_text(f"x\n\n{headers}---\ndiff --git a/x b/x\n")
    return path


def test_a_range_that_ends_for_good_is_never_tried_beyond_and_a_required_patch_says_so(tmp_path: Path) -> None:
    final = read_patch(_patch(tmp_path, "Releases: >=0.1,<0.2\nReleases-why: w\nReleases-end: final (x)\n"))
    assert not final.beyond(Version("0.3.0"))
    required = read_patch(_patch(tmp_path, "Releases: >=0.1,<=0.2.1\nReleases-why: w\nRequired: yes\nWithout: slow\n"))
    assert required.beyond(Version("0.3.0")) and required.required and required.without == "slow"
    assert required.beyond_note() == "applied beyond its tested range (tested up to 0.2.1)"


def test_an_unknown_range_end_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="'Releases-end: maybe' is neither"):
        read_patch(_patch(tmp_path, "Releases: >=0.1,<0.2\nReleases-why: w\nReleases-end: maybe\n"))
