"""arch-plan: vLLM's own CMake configure, judged kernel family by family against the target GPU
— minutes, where finding a kernel that cannot run after the compile costs forty."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from spark_build.arch.plan import plan_source, raise_for_problems
from spark_build.arch.plan_table import plan_table
from spark_build.durable import atomic_write_text
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.cutlass import cutlass_pin_warning
from spark_build.upstream.fetched import FetchedSources


class ArchPlanStep(Step):
    name = "arch-plan"
    summary = "run vLLM's CMake configure only and judge every kernel family against the target GPU"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"arch": ctx.target.arch_list}

    def run(self, ctx: Context) -> dict[str, Any]:
        if not ctx.recipe().is_vllm_release:
            ctx.notes.append("arch-plan: not applicable (reads vLLM's CMake; this source is not vLLM)")
            return {"skipped": True}
        sources = FetchedSources.from_dict(ctx.optional_result("sources"))
        warning = cutlass_pin_warning(sources)
        if warning:
            ctx.notes.append(f"arch-plan warning: {warning}")
        # The GPU the build is for (--arch, or this machine's), not whatever GPU this machine has.
        target = ctx.target.newest
        plan = plan_source(
            ctx.src,
            ctx.layout.arch_plan,
            ctx.target.arch_list,
            venv=ctx.venv,
            cuda_home=ctx.config.cuda_home,
            sources=sources,
            bin_dirs=ctx.bin_dirs[1:],
            runner=ctx.runner,
            log=ctx.log(self.name),
            target=target,
            step=self.name,
        )
        if plan.built is None:
            ctx.notes.append(
                "arch-plan warning: setup.py could not be asked which targets it builds (its error is in the "
                "arch-plan log); every configured target counts as built"
            )
        table = io.StringIO()
        Console(file=table, width=150, color_system=None, markup=False).print(plan_table(plan))
        atomic_write_text(ctx.run_folder.arch_plan_table, table.getvalue())
        atomic_write_text(ctx.run_folder.arch_plan_json, json.dumps(plan.to_dict(), indent=2))
        ctx.show(plan_table(plan))
        raise_for_problems(plan, step=self.name, log=ctx.run_folder.arch_plan_table)
        return plan.to_dict()

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return bool(result.get("skipped")) or (ctx.layout.arch_plan / "compile_commands.json").is_file()
