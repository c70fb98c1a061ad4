"""The JIT bill: the arch plan's estimate (objects × measured PTX per object × measured rate) and
the wheel's own (PTX modules read from `cuobjdump -symbols -ptx`, billed only where no SASS in
the library runs their kernels natively). tests/integration/test_jitbill.py runs the same on a
library nvcc builds."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from spark_build.arch.compat import ComputeCapability, Verdict
from spark_build.arch.jitcost import (
    MB,
    MEASURED,
    PTX_MB_PER_OBJECT,
    PTXAS_RATE,
    JitBill,
    JitRate,
    PtxMeasure,
    family_of,
    plan_bill,
)
from spark_build.arch.plan import ArchPlan, ParsedPlan, PlanRow
from spark_build.arch.plan_table import jit_bill_table
from spark_build.wheel.archaudit import ArchReport, parse_fatbin_dump
from spark_build.wheel.jitbill import bill_lines, jit_modules, kernel_family, render_bill, wheel_jit_bill
from tests.unit.test_archplan import SPARK

RATE = JitRate(4.0, "test rate")


def _row(name: str, objects: int, verdict: Verdict) -> PlanRow:
    return PlanRow("objects", name, ("sm_80",), ("compute_80",), verdict, objects=objects)


@pytest.mark.parametrize(
    ("group", "family"),
    [
        ("_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src", "FA2"),
        ("_moe_C csrc/moe/marlin_moe_wna16", "Marlin MoE"),
        ("_C csrc/quantization/gptq_marlin", "GPTQ Marlin"),
        ("_C csrc/quantization/marlin", "Marlin"),
        ("_C csrc/quantization/hadamard", "Hadamard"),
        ("_C csrc/quantization/w8a8", "scaled_mm_c2x"),
        ("_C csrc/attention", "_C csrc/attention"),
    ],
)
def test_plan_groups_are_named_by_the_kernel_family_vllm_calls_them(group: str, family: str) -> None:
    assert family_of(group) == family


def test_plan_bill_prices_jit_objects_by_family_and_leaves_native_ones_out() -> None:
    rows = [
        _row("_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src", 60, Verdict.JIT),
        _row("_moe_C csrc/moe/marlin_moe_wna16", 15, Verdict.JIT),
        _row("_C csrc/quantization/gptq_marlin", 18, Verdict.NATIVE),
        PlanRow("family", "FA2", ("sm_80",), ("compute_80",), Verdict.JIT),  # families are not objects
    ]
    sizes = {"FA2": 2.0, "Marlin MoE": 0.5}
    measured = {"FA2": PtxMeasure("fa2.cu", 1.0, 4.0), "Marlin MoE": PtxMeasure("moe.cu", 1.0, 2.0)}
    bill = plan_bill(rows, sizes, measured, {}, RATE)
    fa2, moe = bill.lines
    assert (fa2.family, fa2.objects, fa2.ptx_bytes, fa2.seconds) == ("FA2", 60, 120 * MB, 480.0)
    assert (moe.family, moe.objects, moe.ptx_bytes, moe.seconds) == ("Marlin MoE", 15, 7.5 * MB, 15.0)
    assert bill.seconds == 495.0 and all(line.measured for line in bill.lines)


def test_a_family_without_a_measurement_is_estimated_from_the_median_at_the_fallback_rate_and_says_so() -> None:
    sizes = {"A": 1.0, "B": 3.0, "C": 5.0}
    bill = plan_bill([_row("_C csrc/quantization/hadamard", 2, Verdict.JIT)], sizes, {}, {}, RATE)
    (line,) = bill.lines
    assert (line.ptx_bytes, line.seconds, line.measured) == (6 * MB, 24.0, False)


def test_a_family_that_stays_jit_carries_its_reason_into_the_bill() -> None:
    rows = [_row("_C csrc/quantization/w8a8", 1, Verdict.JIT)]
    reason = {"scaled_mm_c2x": "kernel bodies guarded below 900"}
    bill = plan_bill(rows, {"scaled_mm_c2x": 1.0}, {}, reason, RATE)
    assert bill.to_dict()["lines"][0] == {
        "family": "scaled_mm_c2x",
        "objects": 1,
        "ptx_mb": 1.0,
        "jit_s": 4,
        "measured": True,
        "note": "kernel bodies guarded below 900",
    }


def test_the_shipped_measurements_name_their_object_and_price_fa2_above_hadamard_per_mb() -> None:
    assert {"FA2", "Marlin", "Hadamard"} <= set(MEASURED) and MEASURED["FA2"].rate == PTXAS_RATE
    assert {"FA2", "Marlin MoE", "GPTQ Marlin"} <= set(PTX_MB_PER_OBJECT)
    assert all(m.ptx_mb > 0 and m.ptxas_s > 0 and m.object.endswith(")") for m in MEASURED.values())
    assert MEASURED["FA2"].rate.seconds_per_mb > MEASURED["Hadamard"].rate.seconds_per_mb
    fa2 = plan_bill([_row("_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src", 60, Verdict.JIT)])
    assert fa2.lines[0].measured and fa2.seconds > 60, "60 FA2 modules take minutes to JIT"


def test_the_arch_plan_prints_the_bill_and_none_when_nothing_is_left_on_jit() -> None:
    plan = ArchPlan("12.1a", SPARK, ParsedPlan({}, ()), ())
    rows = [_row("_vllm_fa2_C vllm-flash-attn:csrc/flash_attn/src", 60, Verdict.JIT)]
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    console.print(jit_bill_table(plan, plan_bill(rows, {"FA2": 2.0}, {}, {}, RATE)))
    console.print(jit_bill_table(plan, JitBill((), RATE)))
    text = out.getvalue()
    assert "│ FA2    │      60 │    120 │   480 │" in text
    assert "every family built for this target runs natively" in text
    assert "a family not measured: 4 s per MB of PTX" in " ".join(text.split()), "the caption, wrapped"


# A trimmed `cuobjdump -symbols -ptx` of a library with an sm_80 + PTX object (two kernels) and a
# native sm_120 object whose kernel also has PTX, as CUDA 13.0's cuobjdump prints them.
DUMP = """
Fatbin elf code:
================
arch = sm_80
code version = [1,8]
host = linux
compile_size = 64bit

symbols:
FUNC          GLOBAL  DEFAULT    ENTRY                                _Z16flash_fwd_kernelPf
FUNC          GLOBAL  DEFAULT    ENTRY                                _Z12other_kernelPf

Fatbin ptx code:
================
arch = sm_80
code version = [9,0]
host = linux
compile_size = 64bit
compressed

.version 9.0
.target sm_80
.visible .entry _Z16flash_fwd_kernelPf(
ret;
.visible .entry _Z12other_kernelPf(
ret;

Fatbin elf code:
================
arch = sm_120
code version = [1,8]

symbols:
FUNC          GLOBAL  DEFAULT    ENTRY                                _Z13native_kernelPf

Fatbin ptx code:
================
arch = sm_120
code version = [9,0]

.version 9.0
.target sm_120
.visible .entry _Z13native_kernelPf(
ret;
""".splitlines()


def test_modules_are_read_with_their_kernels_and_the_size_of_their_ptx() -> None:
    modules = list(parse_fatbin_dump(DUMP))
    assert [m.code.name for m in modules] == ["sm_80", "compute_80", "sm_120", "compute_120"]
    ptx = modules[1]
    assert ptx.kernels == ("_Z16flash_fwd_kernelPf", "_Z12other_kernelPf")
    body = [".version 9.0", ".target sm_80", ".visible .entry _Z16flash_fwd_kernelPf(", "ret;"]
    body += [".visible .entry _Z12other_kernelPf(", "ret;", ""]
    assert ptx.size == sum(len(line) + 1 for line in body), "the PTX text, not cuobjdump's header"
    assert modules[2].kernels == ("_Z13native_kernelPf",)


def test_modules_read_from_blocks_of_lines_are_those_read_line_by_line_wherever_the_blocks_split() -> None:
    """cuobjdump's output is parsed in blocks of whole lines (a line at a time took 20 times
    cuobjdump's own time on vLLM's FA2); a PTX module's size must not depend on where they split."""
    by_line = parse_fatbin_dump(DUMP)
    for cut in range(1, len(DUMP)):
        assert parse_fatbin_dump(["\n".join(DUMP[:cut]), "\n".join(DUMP[cut:])]) == by_line, cut
    assert parse_fatbin_dump(["\n".join(DUMP)]) == by_line


def test_only_ptx_whose_kernels_lack_native_sass_is_billed_on_the_spark() -> None:
    jit = jit_modules(parse_fatbin_dump(DUMP), SPARK)
    assert [(m.code.name, m.kernels[0]) for m in jit] == [("compute_80", "_Z16flash_fwd_kernelPf")]


def test_of_ptx_for_two_virtual_archs_with_the_same_kernels_only_the_newest_is_billed() -> None:
    compute_90 = [
        line.replace("arch = sm_80", "arch = sm_90").replace(".target sm_80", ".target sm_90") for line in DUMP
    ]
    both = DUMP[: DUMP.index("arch = sm_120") - 2] + compute_90[compute_90.index("Fatbin ptx code:") - 1 :]
    jit = jit_modules(parse_fatbin_dump(both), SPARK)
    assert [m.code.name for m in jit] == ["compute_90"], "the driver JITs compute_90, not compute_80 too"


def test_on_an_ampere_gpu_nothing_is_billed_since_sm_80_runs_natively() -> None:
    assert jit_modules(parse_fatbin_dump(DUMP), ComputeCapability(8, 6)) == []


@pytest.mark.parametrize(
    ("kernel", "family"),
    [
        ("_ZN5flash25flash_fwd_splitkv_kernelI", "FA2"),
        ("_ZN16marlin_moe_wna166MarlinIN4vllm", "Marlin MoE"),
        ("_ZN9marlin_246Marlin_24ILi4E", "Marlin"),
        ("_ZN6marlin6MarlinIN4vllm", "GPTQ Marlin"),
        ("_Z22hadamard_transform_kernelI", "Hadamard"),
        ("_ZN7cutlass7Kernel2IN4vllm18enable_sm89_to_sm90I", "scaled_mm_c2x"),
        ("_Z14rms_norm_kernelI", "_C"),
    ],
)
def test_wheel_kernels_are_named_by_family_from_their_mangled_names(kernel: str, family: str) -> None:
    assert kernel_family(kernel, "_C") == family


def test_the_wheel_bill_sums_modules_per_extension_and_family_at_the_familys_rate() -> None:
    jit = jit_modules(parse_fatbin_dump(DUMP), SPARK)
    rates = {"FA2": JitRate(2.0, "fa2")}
    (line,) = bill_lines({"vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so": jit * 4}, RATE, rates)
    assert line.family == "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so: FA2" and line.measured
    assert (line.objects, line.ptx_bytes) == (4, 4 * jit[0].size)
    assert line.seconds == pytest.approx(4 * jit[0].size / MB * 2.0)
    (other,) = bill_lines({"vllm/_C.abi3.so": jit}, RATE, {})
    assert other.seconds == pytest.approx(jit[0].size / MB * 4.0) and not other.measured
    out = io.StringIO()
    render_bill(Console(file=out, width=300, color_system=None), JitBill((line,), RATE), "PTX JIT on 12.1")
    assert "_vllm_fa2_C.abi3.so: FA2 │       4 │" in out.getvalue() and "total" in out.getvalue()
    assert "other families 4 (test rate)" in out.getvalue()
    out = io.StringIO()
    render_bill(Console(file=out, width=200, color_system=None), JitBill((), RATE), "PTX JIT on 12.1")
    assert "none — every dispatched kernel has native SASS" in out.getvalue()


def test_the_wheel_bill_is_read_from_the_images_the_arch_audit_kept_not_from_a_second_dump() -> None:
    fa2 = "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"
    report = ArchReport("vllm.whl", SPARK, (), (), (), {fa2: tuple(parse_fatbin_dump(DUMP))})
    (line,) = wheel_jit_bill(report, RATE, {"FA2": JitRate(2.0, "fa2")}).bill.lines
    assert (line.family, line.objects) == (f"{fa2}: FA2", 1) and line.measured


def test_the_wheel_bill_refuses_an_audit_that_kept_no_ptx_rather_than_billing_nothing() -> None:
    with pytest.raises(ValueError, match=r"keep_ptx=True"):
        wheel_jit_bill(ArchReport("vllm.whl", SPARK, (), ()), RATE, {})
