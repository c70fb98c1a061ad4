"""Seeding `.ninja_log`: measured durations for objects Ninja has not built yet, so a
duration-weighted Ninja starts the longest first — without ever touching what it did build."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from spark_build.compile.governed import ninja_outputs, planned_objects
from spark_build.compile.jobplan import DEFAULT_PROFILE, Estimates, load_estimates
from spark_build.compile.ninjalog import SEED_HEADER, is_build_object, parse_ninja_log, seed_ninja_log
from spark_build.steps.compile import ninja_log_entries

DATA = Path(__file__).parents[1] / "data"

SECONDS = {"_C.dir/csrc/quantization/scaled_mm_c2x.cu.o": 953.2, "_C.dir/csrc/cache_kernels.cu.o": 41.0}
OUTPUTS = ["CMakeFiles/_C.dir/csrc/cache_kernels.cu.o", "CMakeFiles/_C.dir/csrc/quantization/scaled_mm_c2x.cu.o"]


def test_a_fresh_tree_gets_a_current_log_with_each_known_object_s_duration_in_milliseconds(tmp_path: Path) -> None:
    log = tmp_path / "build" / ".ninja_log"
    seeded = seed_ninja_log(log, [*OUTPUTS, "CMakeFiles/_C.dir/csrc/new_kernel.cu.o"], SECONDS)

    assert list(seeded) == OUTPUTS  # an object never measured is left to Ninja's default weight
    text = log.read_text()
    assert text.startswith(SEED_HEADER)
    assert "0\t953200\t0\tCMakeFiles/_C.dir/csrc/quantization/scaled_mm_c2x.cu.o\t0\n" in text
    durations = {e.object: e.end_ms - e.start_ms for e in parse_ninja_log(log)}
    assert durations == {"_C.dir/csrc/cache_kernels.cu.o": 41000, "_C.dir/csrc/quantization/scaled_mm_c2x.cu.o": 953200}


def test_an_object_ninja_already_recorded_keeps_its_line_and_its_command_hash(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    built = "12\t40012\t1764000000000000000\tCMakeFiles/_C.dir/csrc/cache_kernels.cu.o\t9f3a2c1b\n"
    log.write_text(SEED_HEADER + built)

    seeded = seed_ninja_log(log, OUTPUTS, SECONDS)

    assert seeded == {"CMakeFiles/_C.dir/csrc/quantization/scaled_mm_c2x.cu.o": 953.2}
    lines = log.read_text().splitlines(keepends=True)
    assert lines[:2] == [SEED_HEADER, built]  # first and unchanged: Ninja still finds it up to date
    assert len(lines) == 3


def test_a_subproject_s_objects_match_the_profile_by_their_target_folder(tmp_path: Path) -> None:
    # flash-attention builds inside _deps/; the profile names objects from their CMake target on.
    fa2 = "_deps/vllm-flash-attn-build/CMakeFiles/_vllm_fa2_C.dir/csrc/flash_fwd_split.cu.o"
    seeded = seed_ninja_log(tmp_path / ".ninja_log", [fa2], {"_vllm_fa2_C.dir/csrc/flash_fwd_split.cu.o": 600.0})
    assert seeded == {fa2: 600.0}


def test_seeding_twice_adds_nothing_and_writes_nothing(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    seed_ninja_log(log, OUTPUTS, SECONDS)
    before = log.read_text()
    assert seed_ninja_log(log, OUTPUTS, SECONDS) == {}
    assert log.read_text() == before


def test_an_object_listed_twice_is_seeded_once(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    assert list(seed_ninja_log(log, [OUTPUTS[0], OUTPUTS[0]], SECONDS)) == [OUTPUTS[0]]
    assert log.read_text().count(OUTPUTS[0]) == 1


def test_a_source_fetched_outside_the_tree_matches_its_measurement_by_target_and_path_tail(tmp_path: Path) -> None:
    # CMake names such objects after the checkout's absolute path, which differs per machine.
    measured = {"_C.dir/tmp/fb/src/qutlass/qutlass/csrc/gemm.cu.o": 420.0, "_C.dir/csrc/a/x.cu.o": 1.0}
    here = "CMakeFiles/_C.dir/home/me/w/cache/sources/qutlass/830d2c45/qutlass/csrc/gemm.cu.o"
    elsewhere = "CMakeFiles/_moe_C.dir/home/me/w/cache/sources/qutlass/830d2c45/qutlass/csrc/gemm.cu.o"
    log = tmp_path / ".ninja_log"

    # another target is another object; the seconds found by the fallback are the ones returned
    assert seed_ninja_log(log, [here, elsewhere], measured) == {here: 420.0}
    assert {e.end_ms for e in parse_ninja_log(log)} == {420000}


def test_objects_are_named_as_ninja_names_them_relative_to_the_top_build_folder(tmp_path: Path) -> None:
    root = tmp_path / "arch-plan"
    commands = [
        # CMake 3.25 and 4.x spell outputs absolute; a relative one is relative to its entry's folder
        {"directory": str(root), "file": "x.cu", "output": str(root / "CMakeFiles/_C.dir/csrc/x.cu.o")},
        {"directory": str(root / "vllm-flash-attn"), "file": "f.cu", "output": "CMakeFiles/_vllm_fa2_C.dir/f.cu.o"},
        {"directory": str(root), "file": "h.h"},  # no output: nothing Ninja builds
    ]
    assert ninja_outputs(commands, root) == [
        "CMakeFiles/_C.dir/csrc/x.cu.o",
        "vllm-flash-attn/CMakeFiles/_vllm_fa2_C.dir/f.cu.o",
    ]
    assert ninja_outputs({"not": "a list"}, root) == []


def test_seeded_durations_do_not_count_as_objects_built(tmp_path: Path) -> None:
    log = tmp_path / "src" / "build" / "temp.linux-x86_64-cpython-312" / ".ninja_log"
    seed_ninja_log(log, OUTPUTS, SECONDS)
    assert ninja_log_entries(tmp_path / "src") == 0
    with log.open("a") as handle:
        handle.write("12\t40012\t1764000000000000000\tCMakeFiles/_C.dir/csrc/cache_kernels.cu.o\t9f3a2c1b\n")
    assert ninja_log_entries(tmp_path / "src") == 1


@pytest.mark.parametrize(
    ("name", "counted"),
    [
        ("_C.dir/csrc/cache_kernels.cu.o", True),
        ("_C.dir/tmp/w/work/cache/sources/qutlass/830d2c45/qutlass/csrc/bindings.cpp.o", True),
        ("_vllm_fa2_C.dir/csrc/flash_attn/src/flash_fwd_split_hdim128_bf16_sm80.cu.o", True),
        ("_C.abi3.so", False),
        ("vllm-flash-attn/_vllm_fa2_C.abi3.so", False),
        ("cmTC_efe49.dir/CMakeCUDACompilerABI.cu.o", False),
        ("cmTC_efe49", False),
    ],
    ids=[
        "object",
        "object-outside-the-tree",
        "subproject-object",
        "link",
        "subproject-link",
        "cmake-check",
        "cmake-check-link",
    ],
)
def test_objects_are_the_targets_translation_units_not_links_or_cmake_checks(name: str, counted: bool) -> None:
    assert is_build_object(name) is counted


def test_the_builds_objects_are_the_arch_plans_for_the_targets_setup_py_builds() -> None:
    # vLLM 0.13.0's configure for 12.1a (16 of its entries): FA3 is configured but setup.py skips it.
    commands = json.loads((DATA / "vllm-0.13.0-cuda13.0-12.1a-after.compile_commands.json").read_text())
    commands.append({"directory": "/BUILD", "output": "CMakeFiles/_C.dir/csrc/new_in_a_later_release.cu.o"})
    targets = frozenset({"_C", "_moe_C", "_vllm_fa2_C", "cumem_allocator"})
    estimates = load_estimates([], DEFAULT_PROFILE, targets=targets)

    objects = planned_objects(commands, Path("/BUILD"), estimates, targets)

    assert len(objects) == 15 and not any(name.startswith("_vllm_fa3_C") for name in objects)
    assert objects["_C.dir/csrc/quantization/w8a8/cutlass/scaled_mm_c2x.cu.o"] == pytest.approx(953, abs=1)
    assert objects["_C.dir/SRC/qutlass/qutlass/csrc/gemm.cu.o"] > 0  # the profile's other checkout path
    assert objects["_C.dir/csrc/new_in_a_later_release.cu.o"] == statistics.median(estimates.seconds.values())


def test_without_the_arch_plans_list_the_builds_objects_are_the_estimates() -> None:
    estimates = Estimates({"_C.dir/a.cu.o": 1}, {"_C.dir/a.cu.o": 10.0}, "test")
    assert planned_objects(None, Path("/BUILD"), estimates, None) == {"_C.dir/a.cu.o": 10.0}
