"""The arch plan: what vLLM's CMake will build, read from its own outputs, judged for the GPU.

The fixtures in tests/data/ are trimmed real outputs of vLLM 0.13.0's CMake configure with
nvcc 13.0 and TORCH_CUDA_ARCH_LIST=12.1a (paths replaced by /SRC, /BUILD, /VENV): the
configure messages, and 16 compile_commands.json entries before and after the patch series.
tests/integration/test_archplan.py produces them again from the real sdist.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

from spark_build.arch.cmake_configure import cmake_args, cuda_major, missing_link_libraries
from spark_build.arch.compat import ComputeCapability, GpuCode, Verdict
from spark_build.arch.plan import (
    COMMON_FAMILY,
    CompileCosts,
    ObjectArchs,
    ParsedPlan,
    PlanRow,
    dead_weight_line,
    gencode_codes,
    judge,
    parse_compile_commands,
    parse_configure_messages,
    plan_from_outputs,
    raise_for_problems,
)
from spark_build.arch.plan_table import plan_table
from spark_build.arch.target import Target
from spark_build.compile.jobplan import DEFAULT_PROFILE
from spark_build.steps.archplan import beyond_effects

DATA = Path(__file__).parents[1] / "data"

SPARK = ComputeCapability(12, 1)

ROOTS = {
    "vllm": Path("/SRC/vllm"),
    "vllm-flash-attn": Path("/SRC/vllm-flash-attn"),
    "qutlass": Path("/SRC/qutlass"),
    "flashmla": Path("/SRC/flashmla"),
}


def builds_for_major(row: PlanRow, target: ComputeCapability) -> bool:
    """Whether the row carries code made for the target's generation (12.x for the Spark)."""
    return any(GpuCode.parse(code).major == target.major for code in (*row.sass, *row.ptx))


def _log() -> str:
    return (DATA / "vllm-0.13.0-cuda13.0-12.1a.configure.log").read_text()


def _commands(when: str) -> str:
    return (DATA / f"vllm-0.13.0-cuda13.0-12.1a-{when}.compile_commands.json").read_text()


def _rows_by_name(plan_rows: tuple) -> dict[str, list]:
    found: dict[str, list] = {}
    for row in plan_rows:
        found.setdefault(row.name, []).append(row)
    return found


def test_configure_messages_show_cuda13_collapsing_12_1a_to_12_0_and_the_12_0f_families() -> None:
    families = parse_configure_messages(_log())
    assert families[COMMON_FAMILY] == ("12.0",)
    assert families["scaled_mm_c3x_sm120"] == ("12.0f",)
    assert families["CUTLASS MLA"] == ("12.0f",)
    assert families["moe_data"] == ("12.0f",)
    assert families["FA2"] == ("8.0+PTX",)
    assert families["FA3"] == ()
    assert families["scaled_mm_c3x_sm90"] == ()


def test_a_family_built_for_sm120_keeps_its_archs_when_its_sm100_twin_is_not_built() -> None:
    # vLLM prints "Building NVFP4 for archs: 12.0f" and then, for sm100, "Not building NVFP4".
    assert parse_configure_messages(_log())["NVFP4"] == ("12.0f",)


@pytest.mark.parametrize(
    ("argv", "sass", "ptx"),
    [
        pytest.param(["-gencode", "arch=compute_120,code=sm_120"], ("sm_120",), (), id="-gencode, two tokens"),
        pytest.param(
            ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_80,code=compute_80"],
            ("sm_80",),
            ("compute_80",),
            id="8.0+PTX as vLLM writes it",
        ),
        pytest.param(["-gencode=arch=compute_120f,code=sm_120f"], ("sm_120f",), (), id="-gencode=, one token"),
        pytest.param(
            ["--generate-code=arch=compute_121a,code=[sm_121a,compute_121a]"],
            ("sm_121a",),
            ("compute_121a",),
            id="--generate-code= with a code list",
        ),
        pytest.param(["--generate-code", "arch=compute_90a,code=sm_90a"], ("sm_90a",), (), id="--generate-code, two"),
        pytest.param(["-arch=sm_90"], ("sm_90",), ("compute_90",), id="-arch shorthand adds PTX"),
        pytest.param(["-O3", "-std=c++17"], (), (), id="no arch flags"),
    ],
)
def test_gencode_flags_in_every_nvcc_spelling_are_read(argv: list[str], sass: tuple, ptx: tuple) -> None:
    assert gencode_codes(argv) == (sass, ptx)


def test_compile_commands_give_each_object_its_target_group_and_codes() -> None:
    objects = {Path(o.source).name: o for o in parse_compile_commands(_commands("before"), ROOTS)}
    utils = objects["cuda_utils_kernels.cu"]
    assert (utils.target, utils.group, utils.sass, utils.ptx) == ("_C", "csrc", ("sm_120",), ())
    qutlass = objects["gemm.cu"]
    assert (qutlass.target, qutlass.group, qutlass.sass) == ("_C", "qutlass:qutlass/csrc", ("sm_120a",))
    fa2 = objects["flash_fwd_hdim128_bf16_sm80.cu"]
    assert (fa2.target, fa2.sass, fa2.ptx) == ("_vllm_fa2_C", ("sm_80",), ("compute_80",))
    assert not objects["torch_bindings.cpp"].device_code
    assert not objects["flash_fwd_hdim128_bf16_sm90.cu"].arch_flags


def test_before_the_patches_qutlass_is_built_as_sm_120a_which_cannot_run_on_the_spark() -> None:
    plan = plan_from_outputs(_log(), _commands("before"), ROOTS, "12.1a", SPARK)
    (qutlass,) = _rows_by_name(plan.rows)["_C qutlass:qutlass/csrc"]
    assert (qutlass.sass, qutlass.verdict) == (("sm_120a",), Verdict.CANNOT_RUN)
    assert [row.name for row in plan.problems()] == ["_C qutlass:qutlass/csrc"]
    # pristine setup.py builds FA3 for nothing: dead weight, a cost and no stop
    assert [row.name for row in plan.dead_weight()] == ["_vllm_fa3_C vllm-flash-attn:hopper/instantiations"]


# What the patched setup.py lists for 12.1a (its ext_modules, read by `setup_extensions`).
BUILT_AFTER = frozenset({"_C", "_moe_C", "cumem_allocator", "triton_kernels", "_vllm_fa2_C", "_flashmla_C"})


def test_after_the_patches_every_object_built_for_12_x_runs_natively_on_12_1() -> None:
    plan = plan_from_outputs(_log(), _commands("after"), ROOTS, "12.1a", SPARK, BUILT_AFTER)
    assert plan.problems() == []
    twelve = [row for row in plan.rows if builds_for_major(row, SPARK)]
    assert twelve and all(row.verdict is Verdict.NATIVE for row in twelve)
    (qutlass,) = _rows_by_name(plan.rows)["_C qutlass:qutlass/csrc"]
    assert qutlass.sass == ("sm_120f",)


def test_families_built_only_as_older_ptx_are_judged_jit_not_native() -> None:
    rows = _rows_by_name(plan_from_outputs(_log(), _commands("after"), ROOTS, "12.1a", SPARK).rows)
    assert rows["FA2"][0].verdict is Verdict.JIT
    assert rows["_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src"][0].verdict is Verdict.JIT


def test_objects_compiled_without_any_gencode_are_flagged_not_judged() -> None:
    # FA3 (Hopper only) gets no arch for a 12.1a target, yet setup.py still builds its target.
    rows = _rows_by_name(plan_from_outputs(_log(), _commands("before"), ROOTS, "12.1a", SPARK).rows)
    (fa3,) = rows["_vllm_fa3_C vllm-flash-attn:hopper/instantiations"]
    assert fa3.verdict is None and "no -gencode" in fa3.note


def test_judge_rules_with_gpuarch_for_a_family_gated_on_12_0a() -> None:
    rows = judge(ParsedPlan({"scaled_mm_c3x_sm120": ("12.0a",)}, ()), SPARK)
    assert [(r.sass, r.verdict) for r in rows] == [(("sm_120a",), Verdict.CANNOT_RUN)]


def test_the_plan_table_names_each_row_and_its_verdict() -> None:
    plan = plan_from_outputs(_log(), _commands("before"), ROOTS, "12.1a", SPARK)
    console = Console(record=True, width=220)
    console.print(plan_table(plan))
    text = console.export_text()
    assert "TORCH_CUDA_ARCH_LIST=12.1a" in text
    line = next(line for line in text.splitlines() if "qutlass:qutlass/csrc" in line)
    assert "sm_120a" in line and "cannot run" in line


def test_objects_of_a_target_setup_py_builds_without_any_gencode_are_dead_weight_priced_and_no_stop() -> None:
    built_with_fa3 = BUILT_AFTER | {"_vllm_fa3_C"}
    costs = CompileCosts.from_profile(json.loads(DEFAULT_PROFILE.read_text()))
    remedies = {"_vllm_fa3_C": "removed by patches/vllm/0006-x.patch (not applied: --no-patches)"}
    plan = plan_from_outputs(_log(), _commands("after"), ROOTS, "12.1a", SPARK, built_with_fa3, costs, remedies)
    (fa3,) = _rows_by_name(plan.rows)["_vllm_fa3_C vllm-flash-attn:hopper/instantiations"]
    assert fa3.dead and "runs on no target GPU" in fa3.note
    assert plan.problems() == [] and plan.dead_weight() == [fa3]
    raise_for_problems(plan)  # the build goes on
    # the one FA3 object of this trimmed compile_commands.json, priced as the shipped profile measured them
    assert fa3.cpu_s is not None and round(fa3.cpu_s) == 65
    assert dead_weight_line(fa3) == (
        "_vllm_fa3_C vllm-flash-attn:hopper/instantiations: 1 object(s) compiled for no target GPU, "
        "≈ 65 CPU-s (shipped 0.13.0 profile); removed by patches/vllm/0006-x.patch (not applied: --no-patches)"
    )


def test_an_object_the_profile_lacks_is_priced_at_its_targets_median_and_an_unknown_target_not_at_all() -> None:
    costs = CompileCosts({"a.o": 10.0}, {"_fa3": 4.0})
    obj = ObjectArchs("new.o", "new.cu", "_fa3", "g", (), (), True)
    assert costs.estimate([obj, dataclasses.replace(obj, object="a.o")]) == 14.0
    assert costs.estimate([dataclasses.replace(obj, target="_other")]) is None


def test_objects_of_a_target_setup_py_skips_cost_nothing_and_say_so() -> None:
    plan = plan_from_outputs(_log(), _commands("after"), ROOTS, "12.1a", SPARK, BUILT_AFTER)
    (fa3,) = _rows_by_name(plan.rows)["_vllm_fa3_C vllm-flash-attn:hopper/instantiations"]
    assert not fa3.dead and "setup.py skips _vllm_fa3_C" in fa3.note
    assert plan.to_dict()["built_targets"] == sorted(BUILT_AFTER)


def test_the_plan_as_json_lists_rows_verdicts_and_problems() -> None:
    data = json.loads(json.dumps(plan_from_outputs(_log(), _commands("before"), ROOTS, "12.1a", SPARK).to_dict()))
    assert data["target"] == "12.1"
    assert data["problems"] == ["_C qutlass:qutlass/csrc"]
    assert [d["name"] for d in data["dead_weight"]] == ["_vllm_fa3_C vllm-flash-attn:hopper/instantiations"]
    assert data["families"]["scaled_mm_c3x_sm120"] == ["12.0f"]
    assert {"kind", "name", "objects", "sass", "ptx", "verdict", "note"} <= set(data["rows"][0])
    assert data["host_objects"] == 3


@pytest.mark.parametrize(
    ("arch", "target"), [("12.1a", "12.1"), ("8.0+PTX;12.0f", "12.0"), ("9.0a 12.1a", "12.1")], ids=str
)
def test_the_plan_is_judged_for_the_newest_gpu_of_the_arch_list(arch: str, target: str) -> None:
    assert Target.from_option(arch).newest == ComputeCapability.parse(target)


def test_cmake_is_called_with_setup_py_arguments_plus_compile_commands(tmp_path: Path) -> None:
    args = cmake_args(
        tmp_path / "src",
        tmp_path / "build",
        python=Path("/venv/bin/python"),
        cuda_home=Path("/usr/local/cuda"),
        jobs=4,
        nvcc_threads=2,
        stubs={"CUDA_cuda_driver_LIBRARY": Path("/stubs/libcuda.so")},
    )
    assert args[:3] == [str(tmp_path / "src"), "-G", "Ninja"]
    for expected in (
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        "-DVLLM_TARGET_DEVICE=cuda",
        "-DVLLM_PYTHON_EXECUTABLE=/venv/bin/python",
        "-DNVCC_THREADS=2",
        "-DCMAKE_JOB_POOLS:STRING=compile=4",
        "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        "-DCUDA_cuda_driver_LIBRARY=/stubs/libcuda.so",
    ):
        assert expected in args


def _toolkit(root: Path, *libs: str) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda.h").write_text("#define CUDA_VERSION 13000\n")
    for lib in libs:
        (root / lib).parent.mkdir(parents=True, exist_ok=True)
        (root / lib).write_text("")
    return root


def test_a_toolkit_without_driver_or_nvrtc_gets_configure_only_stubs_with_real_sonames(tmp_path: Path) -> None:
    missing = missing_link_libraries(_toolkit(tmp_path / "cuda"))
    assert [(m.cmake_var, m.soname) for m in missing] == [
        ("CUDA_cuda_driver_LIBRARY", "libcuda.so.1"),
        ("CUDA_nvrtc_LIBRARY", "libnvrtc.so.13"),
    ]


def test_a_toolkit_with_its_stub_libcuda_and_nvrtc_needs_no_stubs(tmp_path: Path) -> None:
    cuda = _toolkit(tmp_path / "cuda", "lib64/stubs/libcuda.so", "targets/x86_64-linux/lib/libnvrtc.so")
    assert missing_link_libraries(cuda) == []
    assert cuda_major(cuda) == 13


@pytest.mark.parametrize(
    ("built", "effect"),
    [
        pytest.param(
            frozenset({"_C", "_vllm_fa2_C"}), "does its job: setup.py no longer builds _vllm_fa3_C", id="gone"
        ),
        pytest.param(frozenset({"_C", "_vllm_fa3_C"}), "did NOT stop setup.py building _vllm_fa3_C", id="still-built"),
    ],
)
def test_a_patch_applied_beyond_its_range_is_checked_against_what_setup_py_now_builds(
    built: frozenset[str], effect: str
) -> None:
    patch = "0006-build-fa3-only-for-9.x-archs-0.17.patch"
    assert beyond_effects({patch}, {"_vllm_fa3_C": patch}, built) == [
        f"arch-plan: {patch} (applied beyond its tested range) {effect}"
    ]
    assert beyond_effects(set(), {"_vllm_fa3_C": patch}, built) == []
