"""The JIT bill: what a GPU pays at the first model load for kernels it runs only through PTX.

A family built as `sm_80` + `compute_80` runs on a DGX Spark (12.1), but the driver first
compiles its PTX, module by module, when a kernel of the module is first launched: minutes of
`ptxas` at the first model load on every Spark, and again whenever the JIT cache
(`~/.nv/ComputeCache`, 256 MiB by default) is cleared or too small. The arch plan and the
validate step put that cost in numbers: objects (or PTX modules), PTX size, and seconds.

The rate is measured, not guessed (`PTXAS_RATE`): ptxas of CUDA 13.0, the compiler inside the
driver's JIT, compiling real vLLM 0.13.0 PTX for `sm_120`. Before the compile the plan has no
PTX yet, so it multiplies objects by the PTX one measured object of the family carries
(`PTX_MB_PER_OBJECT`); the validate step reads the wheel's own PTX instead (`wheel.jitbill`).
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


# Measured 2026-12-07 (benchmarks/RESULTS.md, "JIT bill and compile cost"): `ptxas -arch=sm_120
# -O3` of CUDA 13.0 on the compute_80 PTX nvcc embeds for FA2's
# flash_fwd_sparse_hdim128_bf16_causal_sm80.cu (flash-attention 86f8f157, vLLM 0.13.0's pin):
# 6.88 CPU-s for 1.67 MB of PTX as cuobjdump prints it (the size the validate step reads).
# The GPU machine's driver, JIT cache off, took 148 s for 38 MB of the official 0.26.0 wheel's
# FA2 PTX (3.9 s per MB): the same order, so ptxas stands for the driver's JIT here.
PTXAS_RATE = JitRate(
    seconds_per_mb=4.1,
    source="ptxas 13.0 -arch=sm_120 on vLLM 0.13.0's FA2 PTX, 6.88 CPU-s for 1.67 MB; benchmarks/RESULTS.md",
)

# PTX per object, in MB, of one real object of each family vLLM 0.13.0 builds PTX-only for
# 12.x (nvcc 13.0 `-ptx` for the virtual arch the build embeds; benchmarks/RESULTS.md). A
# family without a measurement is estimated with the median of these.
PTX_MB_PER_OBJECT: Mapping[str, float] = {
    "FA2": 1.67,
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
        "hold empty kernels; on 12.x cutlass_scaled_mm runs the native sm120 c3x kernels instead"
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
    rate: JitRate = PTXAS_RATE,
    per_object_mb: Mapping[str, float] = PTX_MB_PER_OBJECT,
    stays_jit: Mapping[str, str] = STAYS_JIT,
) -> JitBill:
    """The bill of a plan: every object group the target runs only by PTX JIT, by family."""
    objects: dict[str, int] = {}
    for row in rows:
        if row.kind == "objects" and row.verdict is Verdict.JIT:
            family = family_of(row.name)
            objects[family] = objects.get(family, 0) + row.objects
    fallback = statistics.median(per_object_mb.values()) if per_object_mb else 0.0
    lines = []
    for family, count in sorted(objects.items()):
        measured = family in per_object_mb
        ptx = count * (per_object_mb[family] if measured else fallback) * MB
        lines.append(JitLine(family, count, ptx, rate.seconds(ptx), measured, stays_jit.get(family, "")))
    return JitBill(tuple(lines), rate)
