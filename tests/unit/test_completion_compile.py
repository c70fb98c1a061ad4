"""The completion's compile as the source build's: the pure pieces of `compile.extension_targets`
and `compile.governed` that it adds — which objects are the targets', the Ninja command, the
estimates a target the shipped profile never built is planned from, and its timing-table cell."""

from __future__ import annotations

from pathlib import Path

from spark_build.compile.extension_targets import CompileRun, ninja_argv, target_estimates, targets_outputs
from spark_build.compile.governed import timing_detail
from spark_build.compile.jobplan import JobPlan, cmake_target_of
from spark_build.layout import RunFolder

COMMANDS = [
    {"directory": "/w/build", "output": "CMakeFiles/_C.dir/csrc/a.cu.o", "file": "/s/csrc/a.cu"},
    {"directory": "/w/build", "output": "/w/build/CMakeFiles/_qutlass_C.dir/q/gemm.cu.o", "file": "/s/q/gemm.cu"},
    {"directory": "/w/build/sub", "output": "CMakeFiles/_moe_C.dir/m.cu.o", "file": "/s/m.cu"},
]


def compile_run(tmp_path: Path) -> CompileRun:
    return CompileRun(
        source="v0.26.0 12.1a completion",
        ninja=Path("/usr/bin/ninja"),
        weighted=False,
        cache_env={},
        records=tmp_path,
        run_folder=RunFolder(tmp_path / "run"),
        reserve_bytes=0,
        mem_budget=None,
        jobs_override=None,
        available_bytes=lambda: 1 << 40,
        on_forecast=lambda _outlook: None,
        note=lambda _line: None,
    )


def test_targets_outputs_are_only_the_named_targets_objects_as_ninja_names_them() -> None:
    wanted = frozenset({"_qutlass_C", "_moe_C"})
    assert targets_outputs(COMMANDS, Path("/w/build"), wanted) == [
        "CMakeFiles/_qutlass_C.dir/q/gemm.cu.o",
        "sub/CMakeFiles/_moe_C.dir/m.cu.o",
    ]


def test_ninja_argv_runs_the_planned_jobs_for_the_named_targets_only() -> None:
    plan = JobPlan(max_jobs=6, nvcc_threads=2, budget_bytes=1, per_job_bytes=1, reason="", limited_by="memory")
    argv = ninja_argv(Path("/c/ninja"), Path("/w/build"), plan, ["_qutlass_C"])
    assert argv == [Path("/c/ninja"), "-C", Path("/w/build"), "-j", "3", "_qutlass_C"]


def test_a_target_the_profile_built_is_planned_from_that_targets_objects_alone(tmp_path: Path) -> None:
    estimates = target_estimates(compile_run(tmp_path), frozenset({"_moe_C"}))
    assert estimates.peaks and {cmake_target_of(name) for name in estimates.peaks} == {"_moe_C"}


def test_a_target_the_profile_never_built_is_planned_from_every_profiled_object(tmp_path: Path) -> None:
    estimates = target_estimates(compile_run(tmp_path), frozenset({"_qutlass_C"}))
    assert {"_C", "_moe_C", "_vllm_fa2_C"} <= {cmake_target_of(name) for name in estimates.peaks}


def test_timing_detail_names_jobs_objects_of_the_total_and_the_cache() -> None:
    cache = {"tool": "ccache", "storage": "local", "stats": {"hits": 1, "misses": 7, "uncacheable": 0}}
    completion = {"max_jobs": 2, "objects_built": 7, "objects_total": 11, "cache": cache}
    assert timing_detail(completion).startswith("MAX_JOBS 2, 7 of 11 objects; ccache local: 1 hits, 7 misses")
    assert timing_detail({"max_jobs": 4, "objects_built": 3}) == "MAX_JOBS 4, 3 objects"
