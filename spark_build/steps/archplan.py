"""arch-plan: vLLM's own CMake configure, judged kernel family by family against the target GPU
— minutes, where finding a kernel that cannot run after the compile costs forty."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.text import Text

from spark_build.arch.jitcost import plan_bill
from spark_build.arch.plan import CompileCosts, dead_weight_line, plan_source, raise_for_problems
from spark_build.arch.plan_table import jit_bill_table, plan_table
from spark_build.compile.jobplan import DEFAULT_PROFILE
from spark_build.durable import atomic_write_text
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.cutlass import cutlass_pin_warning
from spark_build.upstream.fetched import FetchedSources
from spark_build.upstream.patches import removers


def _costs() -> CompileCosts | None:
    """The shipped profile's per-object CPU-s: what dead weight costs (None without it)."""
    try:
        return CompileCosts.from_profile(json.loads(DEFAULT_PROFILE.read_text()))
    except (OSError, ValueError):
        return None


def _remedies(ctx: Context) -> dict[str, str]:
    """CMake target → the patch of the series that removes it, and why it did not here (the
    patch step's result says what was applied and what was skipped beyond its range)."""
    recipe = ctx.recipe()
    folder = ctx.config.patches_dir / recipe.dist
    patch_result = ctx.optional_result("patch")
    applied = set(patch_result.get("applied", []))
    skipped = {b["patch"]: b["outcome"] for b in patch_result.get("beyond", []) if b["patch"] not in applied}
    remedies: dict[str, str] = {}
    for target, patch in removers(folder, recipe.version).items():
        where = f"patches/{recipe.dist}/{patch.name}"
        if ctx.config.no_patches:
            remedies[target] = f"removed by {where} (not applied: --no-patches)"
        elif patch.name in applied:
            remedies[target] = f"{where} is applied but did not remove it: refresh the patch for this release"
        elif patch.name in skipped:
            remedies[target] = f"removed by {where} where it applies ({skipped[patch.name]}): refresh it"
        else:
            remedies[target] = f"removed by {where} (releases {patch.declared}, not {recipe.version})"
    return remedies


def beyond_effects(applied: set[str], removed_by: Mapping[str, str], built: frozenset[str] | None) -> list[str]:
    """The effect of each patch applied beyond its tested range (`applied`), as setup.py now lists
    its extensions (`built`): the one check of such a patch the product can make before the
    compile. `removed_by` maps an extension target to the patch that removes it."""
    if built is None:
        return []
    lines = []
    for target, patch in sorted(removed_by.items()):
        if patch in applied:
            gone = target not in built
            effect = "does its job: setup.py no longer builds" if gone else "did NOT stop setup.py building"
            lines.append(f"arch-plan: {patch} (applied beyond its tested range) {effect} {target}")
    return lines


def _beyond_checked(ctx: Context, built: frozenset[str] | None) -> list[str]:
    applied = {b["patch"] for b in ctx.optional_result("patch").get("beyond", []) if "applied" in b["outcome"]}
    if not applied:
        return []
    recipe = ctx.recipe()
    removed_by = removers(ctx.config.patches_dir / recipe.dist, recipe.version)
    return beyond_effects(applied, {target: patch.name for target, patch in removed_by.items()}, built)


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
            costs=_costs(),
            remedies=_remedies(ctx),
        )
        if plan.built is None:
            ctx.notes.append(
                "arch-plan warning: setup.py could not be asked which targets it builds (its error is in the "
                "arch-plan log); every configured target counts as built"
            )
        bill = plan_bill(plan.rows)
        table = io.StringIO()
        Console(file=table, width=150, color_system=None, markup=False).print(
            plan_table(plan), jit_bill_table(plan, bill)
        )
        atomic_write_text(ctx.run_folder.arch_plan_table, table.getvalue())
        result = {**plan.to_dict(), "jit_bill": bill.to_dict()}
        atomic_write_text(ctx.run_folder.arch_plan_json, json.dumps(result, indent=2))
        ctx.show(plan_table(plan))
        ctx.show(jit_bill_table(plan, bill))
        ctx.notes.extend(_beyond_checked(ctx, plan.built))
        for row in plan.dead_weight():
            line = f"arch-plan dead weight (the build goes on): {dead_weight_line(row)}"
            ctx.show(Text(line))  # Text: target names and paths are not rich markup
            ctx.notes.append(line)
        raise_for_problems(plan, step=self.name, log=ctx.run_folder.arch_plan_table)
        return result

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return bool(result.get("skipped")) or (ctx.layout.arch_plan / "compile_commands.json").is_file()
