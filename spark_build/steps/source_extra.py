"""The two steps between build-deps and compile that only real vLLM needs.

- sources: fetch what vLLM's CMake would download from GitHub at configure time, at the
  revisions its cmake files pin, and point the build at them (`*_SRC_DIR`), so neither the
  arch plan nor the compile touches the network.
- arch-plan: run vLLM's real CMake configure (no compile) and judge, per kernel family and
  object, whether the target GPU runs what would be built — before a 40-minute compile.

The example upstream has no external projects and no vLLM CMake; both steps say so and pass.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from uv import find_uv_bin

from spark_build.arch.compat import ComputeCapability
from spark_build.arch.plan import plan_source, plan_table, raise_for_problems
from spark_build.durable import atomic_write_text
from spark_build.steps.base import Context, Step, uv_env
from spark_build.upstream.sources import FetchedSources, prepare_sources, sources_intact


def _is_vllm(ctx: Context) -> bool:
    recipe = ctx.recipe()
    return recipe.dist == "vllm" and recipe.version is not None


class Sources(Step):
    name = "sources"
    summary = "fetch the external projects vLLM's CMake pins (offline-capable) and export *_SRC_DIR"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        cfg = ctx.config
        return {"mirrors": dict(cfg.source_mirrors), "offline": cfg.offline, "cutlass": cfg.cutlass_from_package}

    def run(self, ctx: Context) -> dict[str, Any]:
        if not _is_vllm(ctx):
            ctx.notes.append("sources: no external projects to fetch (not a vLLM release tree)")
            return FetchedSources(()).to_dict()
        cfg = ctx.config
        recipe = ctx.recipe()
        assert recipe.version is not None
        cutlass_venv = None
        if cfg.cutlass_from_package:
            # Offline, nothing mirrors CUTLASS's git repo; the nvidia-cutlass wheel carries its
            # headers (4.2.0, where vLLM 0.13.0 pins v4.2.1).
            ctx.run(
                self.name,
                [find_uv_bin(), "pip", "install", "--python", ctx.python, "nvidia-cutlass"],
                env=uv_env(cfg.uv_cache_dir),
            )
            cutlass_venv = ctx.venv
        fetched = prepare_sources(
            ctx.src,
            recipe.version,
            ctx.workdir / "cache" / "sources",
            mirrors=cfg.source_mirrors,
            offline=cfg.offline,
            cutlass_venv=cutlass_venv,
        )
        for project in fetched.projects:
            ctx.notes.append(f"sources: {project.name} {project.revision} from {project.origin}")
        ctx.notes.extend(f"sources: {note}" for note in fetched.notes)
        return fetched.to_dict()

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return sources_intact(result)


def sources_env(ctx: Context) -> dict[str, str]:
    """The `*_SRC_DIR` variables the sources step exported (empty for the example)."""
    record = ctx.state.record(Sources.name)
    if record is None or record.status != "done":
        return {}
    return FetchedSources.from_dict(record.result).env


class ArchPlanStep(Step):
    name = "arch-plan"
    summary = "run vLLM's CMake configure only and judge every kernel family against the target GPU"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"arch": ctx.arch}

    def run(self, ctx: Context) -> dict[str, Any]:
        if not _is_vllm(ctx):
            ctx.notes.append("arch-plan: not applicable (reads vLLM's CMake; this source is not vLLM)")
            return {"skipped": True}
        gpus = ctx.host.gpus if ctx.host is not None else ()
        target = ComputeCapability.parse(gpus[0].compute_cap) if gpus else None
        record = ctx.state.record(Sources.name)
        plan = plan_source(
            ctx.src,
            ctx.workdir / "arch-plan",
            ctx.arch,
            venv=ctx.venv,
            cuda_home=ctx.config.cuda_home,
            sources=FetchedSources.from_dict(record.result if record else {}),
            runner=ctx.runner,
            log=ctx.log(self.name),
            target=target,
            step=self.name,
        )
        table = io.StringIO()
        Console(file=table, width=150, color_system=None).print(plan_table(plan))
        atomic_write_text(ctx.log_dir / "arch-plan.txt", table.getvalue())
        atomic_write_text(ctx.log_dir / "arch-plan.json", json.dumps(plan.to_dict(), indent=2))
        ctx.show(plan_table(plan))
        raise_for_problems(plan, step=self.name, log=ctx.log_dir / "arch-plan.txt")
        return plan.to_dict()

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return bool(result.get("skipped")) or (ctx.workdir / "arch-plan" / "compile_commands.json").is_file()
