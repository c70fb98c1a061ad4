"""A configure for some extension targets keeps the release's CMake and drops only whole
external-project files that define none of them (the comparison with a full configure of real
vLLM 0.13.0 is in tests/integration/test_archplan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build.errors import StepFailed
from spark_build.upstream.facts import builds_against_torch
from spark_build.upstream.targeted_cmake import plan_targeted, target_cmake
from spark_build.upstream.versions import ExternalProject
from tests.conftest import ROOT

MAIN = """\
define_extension_target(_C SOURCES csrc/ops.cu)
if (VLLM_GPU_LANG STREQUAL "CUDA")
    include(cmake/external_projects/deepgemm.cmake)
    include(cmake/external_projects/qutlass.cmake)
    # vllm-flash-attn should be last
    include(${CMAKE_CURRENT_LIST_DIR}/cmake/external_projects/vllm_flash_attn.cmake)
endif ()
"""
FILES = {
    "cmake/external_projects/deepgemm.cmake": (
        'message(STATUS "DeepGEMM _C will be built")  # _qutlass_C is not ours\n'
        "add_custom_target(_deep_gemm_C ALL)\n"
        'install(FILES x COMPONENT _deep_gemm_C FILES_MATCHING PATTERN "_C.cpython-*.so")\n'
    ),
    "cmake/external_projects/qutlass.cmake": "define_extension_target(\n  _qutlass_C\n  SOURCES gemm.cu)\n",
    "cmake/external_projects/vllm_flash_attn.cmake": "FetchContent_MakeAvailable(vllm-flash-attn)\n",
}


def test_only_the_file_that_defines_the_target_is_kept_and_the_others_are_commented_out_in_place() -> None:
    plan = plan_targeted(MAIN, FILES, ["_qutlass_C"])
    assert plan.kept == ("cmake/external_projects/qutlass.cmake",)
    assert plan.dropped == ("cmake/external_projects/deepgemm.cmake", "cmake/external_projects/vllm_flash_attn.cmake")
    lines = plan.text.splitlines()
    assert lines[2] == (
        "    # spark-build: left out of a configure for _qutlass_C: include(cmake/external_projects/deepgemm.cmake)"
    )
    assert lines[3] == "    include(cmake/external_projects/qutlass.cmake)"
    assert lines[5].startswith("    # spark-build: left out") and lines[5].endswith("vllm_flash_attn.cmake)")
    assert [n for n, line in enumerate(MAIN.splitlines()) if line != lines[n]] == [2, 5]  # nothing else changes
    assert plan.describe() == (
        "configure for _qutlass_C: external projects kept: qutlass; left out: deepgemm, vllm_flash_attn"
    )


def test_a_target_named_only_in_prose_or_as_part_of_a_file_pattern_keeps_no_file() -> None:
    plan = plan_targeted(MAIN, FILES, ["_C"])
    assert plan.kept == () and plan.unseen == ()  # `_C` is CMakeLists.txt's own


def test_a_target_no_readable_file_names_keeps_the_files_that_hand_the_build_another_project_s_cmake() -> None:
    plan = plan_targeted(MAIN, FILES, ["_vllm_fa2_C"])
    assert plan.unseen == ("_vllm_fa2_C",)
    assert plan.kept == ("cmake/external_projects/vllm_flash_attn.cmake",)


def test_the_projects_fetched_are_the_main_file_s_and_the_kept_files_only() -> None:
    def project(name: str, defined_in: str) -> ExternalProject:
        return ExternalProject(name, f"https://example.invalid/{name}.git", "v1", None, defined_in)

    everything = [
        project("cutlass", "CMakeLists.txt"),
        project("deepgemm", "cmake/external_projects/deepgemm.cmake"),
        project("qutlass", "cmake/external_projects/qutlass.cmake"),
        project("vllm-flash-attn", "cmake/external_projects/vllm_flash_attn.cmake"),
    ]
    plan = plan_targeted(MAIN, FILES, ["_qutlass_C"])
    assert [p.name for p in plan.projects(everything)] == ["cutlass", "qutlass"]


def _tree(root: Path, files: dict[str, str]) -> Path:
    (root / "CMakeLists.txt").write_text(MAIN)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_rewriting_keeps_the_release_s_file_and_a_second_scope_starts_from_it(tmp_path: Path) -> None:
    tree = _tree(tmp_path, FILES)
    target_cmake(tree, ["_qutlass_C"])
    assert (tree / "CMakeLists.txt.release").read_text() == MAIN
    again = target_cmake(tree, ["_C"])
    assert (tree / "CMakeLists.txt").read_text() == again.text
    assert "    include(cmake/external_projects/qutlass.cmake)\n" not in again.text  # from the release text


def test_a_target_the_release_defines_nowhere_stops_before_any_configure(tmp_path: Path) -> None:
    tree = _tree(tmp_path, {k: v for k, v in FILES.items() if "flash" not in k})
    with pytest.raises(StepFailed, match="the release's CMake defines no target _nope_C"):
        target_cmake(tree, ["_nope_C"])


def test_a_release_is_built_against_torch_only_where_its_cmake_finds_torch() -> None:
    example = (ROOT / "spark_build" / "upstream" / "example_upstream" / "CMakeLists.txt").read_text()
    assert builds_against_torch("project(vllm)\nfind_package(Torch REQUIRED)\n")
    assert not builds_against_torch("# find_package(Torch) would make every nvcc job slow\n")
    assert not builds_against_torch(example)  # the example includes no torch header
