"""The arch plan as a table: family or object group → SASS and PTX built → verdict on the target.

Apart from the plan so that the decision (`plan.judge`) stays plain data and the table —
printed by the arch-plan step and written beside its log — is only a view of it.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from spark_build.arch.compat import Verdict
from spark_build.arch.jitcost import MB, JitBill
from spark_build.arch.plan import ArchPlan

_VERDICT_TEXT = {
    Verdict.NATIVE: ("native", "green"),
    Verdict.JIT: ("PTX JIT", "yellow"),
    Verdict.CANNOT_RUN: ("cannot run", "bold red"),
}


def verdict_text(verdict: Verdict | None, unjudged: str = "— not built") -> Text:
    if verdict is None:
        return Text(unjudged, style="dim")
    label, style = _VERDICT_TEXT[verdict]
    return Text(label, style=style)


def plan_table(plan: ArchPlan) -> Table:
    """The plan as a table: family or object group → SASS and PTX built → verdict."""
    table = Table(title=f"arch plan: TORCH_CUDA_ARCH_LIST={plan.arch_list} on compute capability {plan.target}")
    table.add_column("kernel family / object group")
    table.add_column("objects", justify="right")
    table.add_column("SASS")
    table.add_column("PTX")
    table.add_column(f"on {plan.target}")
    table.add_column("note", style="dim")
    last_kind = None
    for row in plan.rows:
        if last_kind is not None and row.kind != last_kind:
            table.add_section()
        last_kind = row.kind
        table.add_row(
            row.name,
            str(row.objects) if row.kind == "objects" else "",
            " ".join(row.sass) or "—",
            " ".join(row.ptx) or "—",
            verdict_text(row.verdict, "— no arch" if row.kind == "objects" else "— not built"),
            row.note,
        )
    return table


def jit_bill_table(plan: ArchPlan, bill: JitBill) -> Table:
    """The families the plan leaves on PTX JIT, with the PTX and seconds the target pays for them."""
    table = Table(title=f"PTX JIT at first load on {plan.target} (estimate, every module loaded)")
    table.add_column("family")
    table.add_column("objects", justify="right")
    table.add_column("PTX MB", justify="right")
    table.add_column("JIT s", justify="right")
    table.add_column("note", style="dim")
    for line in bill.lines:
        size = f"{line.ptx_bytes / MB:.0f}" + ("" if line.measured else " (est.)")
        table.add_row(line.family, str(line.objects), size, f"{line.seconds:.0f}", line.note)
    if not bill.lines:
        table.add_row("none", "0", "0", "0", "every family built for this target runs natively")
    else:
        table.add_row("total", "", f"{bill.ptx_bytes / MB:.0f}", f"{bill.seconds:.0f}", style="bold")
    table.caption = (
        "JIT s: ptxas -arch=sm_120 on one measured object per family (arch/jitcost.py); "
        f"a family not measured: {bill.rate.seconds_per_mb:g} s per MB of PTX"
    )
    return table
