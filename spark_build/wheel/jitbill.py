"""The JIT bill of a built wheel, read from its own PTX: which modules a GPU compiles at the
first model load because no SASS in the wheel runs their kernels natively.

The arch audit judges an extension by its best code, so `_C` counts as native on a DGX Spark
(12.1) as soon as some of its kernels carry `sm_120f` — while its Marlin kernels carry only
`sm_80` + PTX and are JIT-compiled at their first launch. The driver picks code per module:
a PTX module whose kernels all have SASS that runs on the target is never compiled; any other
is compiled whole. So this takes every image of `cuobjdump -symbols -ptx` with each PTX
module's size, as the arch audit read them in its own pass (`arch_audit(keep_ptx=True)`: the
dump of vLLM's PTX takes minutes, once is enough), and bills the modules with a kernel that has
no native SASS, by kernel family, at the measured rate of `arch.jitcost`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from spark_build.arch.compat import CodeKind, ComputeCapability, Verdict, runs_on
from spark_build.arch.jitcost import MB, MEASURED, PTXAS_RATE, JitBill, JitLine, JitRate
from spark_build.wheel.archaudit import ArchReport, FatbinImage
from spark_build.wheel.audit import AuditReport

# Kernel names (mangled, lowercased) → family; the first match wins, the rest keep their
# extension's name. Read from vLLM 0.13.0's namespaces: marlin_moe_wna16 (csrc/moe), marlin_24
# and marlin (csrc/quantization), hadamard_transform, and the enable_smXX_to_smYY guards of the
# CUTLASS 2.x scaled_mm kernels.
KERNEL_FAMILIES: tuple[tuple[str, str], ...] = (
    ("*flash_fwd*", "FA2"),
    ("*marlin_moe_wna16*", "Marlin MoE"),
    ("*marlin_24*", "Marlin"),
    ("*marlin*", "GPTQ Marlin"),
    ("*hadamard*", "Hadamard"),
    ("*enable_sm*_to_sm*", "scaled_mm_c2x"),
)


def kernel_family(kernel: str, default: str, table: Iterable[tuple[str, str]] = KERNEL_FAMILIES) -> str:
    name = kernel.lower()
    return next((family for pattern, family in table if fnmatch.fnmatchcase(name, pattern)), default)


def jit_modules(modules: Iterable[FatbinImage], target: ComputeCapability) -> list[FatbinImage]:
    """The PTX modules the driver compiles on `target`: runnable by JIT, with a kernel that no
    SASS image of the same library runs natively. Of PTX for several virtual archs with the same
    kernels (`compute_80` and `compute_90`), the driver compiles only the newest it can."""
    native: set[str] = set()
    newest: dict[frozenset[str], FatbinImage] = {}
    for module in modules:
        verdict = runs_on(module.code, target)
        if module.code.kind is CodeKind.SASS and verdict is Verdict.NATIVE:
            native.update(module.kernels)
        elif module.code.kind is CodeKind.PTX and verdict is Verdict.JIT:
            kernels = frozenset(module.kernels)
            known = newest.get(kernels)
            if known is None or known.code.capability < module.code.capability:
                newest[kernels] = module
    return [m for m in newest.values() if any(k not in native for k in m.kernels)]


def bill_lines(
    modules: Mapping[str, list[FatbinImage]],
    fallback: JitRate,
    rates: Mapping[str, JitRate] | None = None,
    table: Iterable[tuple[str, str]] = KERNEL_FAMILIES,
) -> tuple[JitLine, ...]:
    """Modules per extension → one line per (extension, family), at the family's measured rate
    (`fallback` for a family nobody measured). A module counts for the family of its first
    kernel: nvcc puts one source file, one family, in a module."""
    rates = family_rates() if rates is None else rates
    totals: dict[tuple[str, str], tuple[int, int]] = {}
    for extension, found in modules.items():
        module_name = Path(extension).name.split(".", 1)[0]
        for module in found:
            family = kernel_family(module.kernels[0], module_name, table) if module.kernels else module_name
            count, size = totals.get((extension, family), (0, 0))
            totals[(extension, family)] = (count + 1, size + module.size)
    lines = []
    for (extension, family), (count, size) in sorted(totals.items()):
        rate = rates.get(family, fallback)
        lines.append(JitLine(f"{extension}: {family}", count, size, rate.seconds(size), family in rates))
    return tuple(lines)


def family_rates() -> dict[str, JitRate]:
    return {family: measure.rate for family, measure in MEASURED.items()}


@dataclass(frozen=True)
class WheelJitBill(AuditReport):
    """The bill as an audit report: JIT is slow, not broken, so it has no problems."""

    source: str
    target: ComputeCapability
    bill: JitBill
    problems: tuple[str, ...] = ()

    def fix(self) -> str:
        return "build the families named here for the target (patches/vllm/0007 for vLLM 0.13.x)"

    def render(self, console: Console) -> None:
        render_bill(console, self.bill, f"PTX JIT at first load on {self.target}: {self.source}")


def render_bill(console: Console, bill: JitBill, title: str) -> None:
    """The bill as a table (shared by the validate step and `invoke validate`)."""
    if not bill.lines:
        console.print(f"{title}: none — every dispatched kernel has native SASS")
        return
    table = Table(title=title)
    for column, justify in (("family", "left"), ("modules", "right"), ("PTX MB", "right"), ("JIT s", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for line in bill.lines:
        table.add_row(line.family, str(line.objects), f"{line.ptx_bytes / MB:.1f}", f"{line.seconds:.0f}")
    table.add_row("total", "", f"{bill.ptx_bytes / MB:.1f}", f"{bill.seconds:.0f}", style="bold")
    console.print(table)
    console.print(rate_note(bill), markup=False)


def rate_note(bill: JitBill) -> str:
    measured = ", ".join(f"{family} {rate.seconds_per_mb:g}" for family, rate in sorted(family_rates().items()))
    return (
        f"seconds per MB of PTX, measured with ptxas -arch=sm_120 (arch/jitcost.py): {measured}; "
        f"other families {bill.rate.seconds_per_mb:g} ({bill.rate.source})"
    )


def wheel_jit_bill(
    report: ArchReport,
    rate: JitRate = PTXAS_RATE,
    rates: Mapping[str, JitRate] | None = None,
) -> WheelJitBill:
    """The bill of every extension the arch audit found PTX in and vLLM dispatches on its target,
    from the images the audit kept."""
    if report.ptx_images is None:
        raise ValueError(f"the arch audit of {report.source} kept no PTX: run arch_audit(..., keep_ptx=True)")
    modules: dict[str, list[FatbinImage]] = {}
    for extension, images in report.ptx_images.items():
        found = jit_modules(images, report.target)
        if found:
            modules[extension] = found
    return WheelJitBill(report.source, report.target, JitBill(bill_lines(modules, rate, rates), rate))
