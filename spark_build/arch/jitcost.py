"""The JIT bill: what a GPU pays at the first model load for kernels it runs only through PTX.

A family built as `sm_80` + `compute_80` runs on a DGX Spark (12.1), but the driver first
compiles its PTX, module by module, when a kernel of the module is first launched: minutes of
`ptxas` at the first model load on every Spark, and again whenever the JIT cache
(`~/.nv/ComputeCache`, 256 MiB by default) is cleared or too small. The arch plan and the
validate step put that cost in numbers: objects (or PTX modules), PTX size, and seconds.

The seconds are measured, not guessed (`MEASURED`): ptxas of CUDA 13.0, the compiler inside
the driver's JIT, compiling real vLLM 0.13.0 PTX for `sm_120`, one object per family. Before
the compile the plan has no PTX yet, so it prices each object as the measured one of its family;
the validate step reads the wheel's own PTX and bills it at the family's rate (`wheel.jitbill`).
Both numbers are for every module of a family; a first load touches only the modules of the
kernels it launches (four FA2 head-dim-128 modules took 148 s on the GPU machine with the real
driver).
"""

from __future__ import annotations

import fnmatch
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from spark_build.arch.compat import Verdict
from spark_build.arch.plan import PlanRow

MB = 1_000_000


@dataclass(frozen=True)
class JitRate:
    """Seconds of PTX compilation per MB of PTX text, and where that number comes from."""

    seconds_per_mb: float
    source: str

    def seconds(self, ptx_bytes: float) -> float:
        return ptx_bytes / MB * self.seconds_per_mb


@dataclass(frozen=True)
class PtxMeasure:
    """One real object of a family: the PTX nvcc embeds for it (MB as cuobjdump prints it, the
    size the validate step reads from a wheel) and the CPU seconds of `ptxas -arch=sm_120 -O3`
    on that PTX — the work the driver's JIT does for it at the first launch."""

    object: str
    ptx_mb: float
    ptxas_s: float

    @property
    def rate(self) -> JitRate:
        return JitRate(round(self.ptxas_s / self.ptx_mb, 2), f"ptxas 13.0 -arch=sm_120 on {self.object}")


# Measured 2026-12-07 on this project's CPU machine with CUDA 13.0 (benchmarks/RESULTS.md, "JIT
# bill and compile cost"), one object per family of vLLM 0.13.0 (flash-attention 86f8f157 for
# FA2) that a 12.x GPU runs only through PTX. The rate differs by family (FA2's large kernels
# cost about three times Hadamard's per MB), so each family is billed at its own. The GPU
# machine's driver, JIT cache off, took 148 s for 38 MB of the official 0.26.0 wheel's FA2 PTX
# (3.9 s per MB), the same as ptxas here: ptxas stands for the driver's JIT.
MEASURED: Mapping[str, PtxMeasure] = {
    "FA2": PtxMeasure(
        "flash_fwd_hdim128_bf16_sm80.cu + flash_fwd_sparse_hdim128_bf16_causal_sm80.cu (compute_80)", 11.82, 46.81
    ),
    "Marlin": PtxMeasure("marlin_24_cuda_kernel.cu (compute_80)", 3.15, 12.23),
    "GPTQ Marlin": PtxMeasure("gptq_marlin/sm80_kernel_bfloat16_u4b8_bfloat16.cu (compute_90)", 12.62, 27.62),
    "Marlin MoE": PtxMeasure("marlin_moe_wna16/sm80_kernel_bfloat16_u4b8_bfloat16.cu (compute_80)", 11.63, 40.10),
    "Hadamard": PtxMeasure("hadamard_transform_cuda.cu (compute_90)", 0.83, 1.25),
}

# Families nobody measured are billed at FA2's rate, the slowest measured: an upper bound.
PTXAS_RATE = MEASURED["FA2"].rate

# PTX per object, in MB as cuobjdump prints it, read from vLLM's official 0.13.0 wheel (PyPI,
# CUDA 12.9) by the validate step's own bill (`wheel.jitbill`): the same sources compiled for
# the same virtual archs as a 12.1a build of 0.13.0 without patch 0007. The plan cannot see PTX
# before the compile; a family not here is estimated with the median.
PTX_MB_PER_OBJECT: Mapping[str, float] = {
    "FA2": 12.27,  # 736.3 MB in 60 modules
    "GPTQ Marlin": 6.65,  # 119.7 MB in 18 (the newest PTX of each: compute_90 for bf16)
    "Marlin MoE": 6.86,  # 102.9 MB in 15
    "Marlin": 3.2,
    "Hadamard": 0.8,
    "scaled_mm_c2x": 33.9,
}

# Object group of the arch plan (`<target> <folder>`, three folders deep) → the kernel family
# vLLM calls it; the first match wins. Only PTX-only groups are billed, and the one of
# csrc/quantization/w8a8 that is (sm_89 + compute_89, in 0.13.0) is scaled_mm_c2x.cu.
PLAN_FAMILIES: tuple[tuple[str, str], ...] = (
    ("_vllm_fa2_C *", "FA2"),
    ("* csrc/moe/marlin_moe_wna16*", "Marlin MoE"),
    ("* csrc/quantization/gptq_marlin*", "GPTQ Marlin"),
    ("* csrc/quantization/marlin*", "Marlin"),
    ("* csrc/quantization/hadamard*", "Hadamard"),
    ("* csrc/quantization/w8a8*", "scaled_mm_c2x"),
)

# Why a family stays on PTX JIT for 12.x although the patch series makes the others native.
STAYS_JIT: Mapping[str, str] = {
    "scaled_mm_c2x": (
        "stays PTX JIT: its kernel bodies compile only for __CUDA_ARCH__ below 900 "
        "(enable_sm*_to_sm* in csrc/quantization/w8a8/cutlass/scaled_mm_c2x.cuh), so 12.0 SASS would "
        "hold empty kernels; on 12.x cutlass_scaled_mm runs the native sm120 c3x kernels, only the azp "
        "variant reaches c2x (its sm80 kernels, whose bodies the 8.9 code already leaves out)"
    ),
}


def family_of(group: str, table: Iterable[tuple[str, str]] = PLAN_FAMILIES) -> str:
    return next((family for pattern, family in table if fnmatch.fnmatchcase(group, pattern)), group)


@dataclass(frozen=True)
class JitLine:
    """One family that runs by PTX JIT: how much PTX, and the seconds to compile it all."""

    family: str
    objects: int  # objects (plan) or PTX modules (wheel)
    ptx_bytes: float
    seconds: float
    measured: bool  # False: the PTX size is estimated from another family's
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "objects": self.objects,
            "ptx_mb": round(self.ptx_bytes / MB, 1),
            "jit_s": round(self.seconds),
            "measured": self.measured,
            "note": self.note,
        }


@dataclass(frozen=True)
class JitBill:
    lines: tuple[JitLine, ...]
    rate: JitRate

    @property
    def seconds(self) -> float:
        return sum(line.seconds for line in self.lines)

    @property
    def ptx_bytes(self) -> float:
        return sum(line.ptx_bytes for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": [line.to_dict() for line in self.lines],
            "ptx_mb": round(self.ptx_bytes / MB, 1),
            "jit_s": round(self.seconds),
            "rate_s_per_mb": self.rate.seconds_per_mb,
            "rate_source": self.rate.source,
        }


def plan_bill(
    rows: Iterable[PlanRow],
    per_object_mb: Mapping[str, float] = PTX_MB_PER_OBJECT,
    measured: Mapping[str, PtxMeasure] = MEASURED,
    stays_jit: Mapping[str, str] = STAYS_JIT,
    fallback: JitRate = PTXAS_RATE,
) -> JitBill:
    """The bill of a plan: every object group the target runs only by PTX JIT, by family: its
    objects × the family's PTX per object, at the family's measured ptxas rate (a family with
    no known PTX size: the median, and the line says it is estimated)."""
    objects: dict[str, int] = {}
    for row in rows:
        if row.kind == "objects" and row.verdict is Verdict.JIT:
            family = family_of(row.name)
            objects[family] = objects.get(family, 0) + row.objects
    median_mb = statistics.median(per_object_mb.values()) if per_object_mb else 0.0
    lines = []
    for family, count in sorted(objects.items()):
        ptx = count * per_object_mb.get(family, median_mb) * MB
        rate = measured[family].rate if family in measured else fallback
        lines.append(JitLine(family, count, ptx, rate.seconds(ptx), family in per_object_mb, stays_jit.get(family, "")))
    return JitBill(tuple(lines), fallback)
