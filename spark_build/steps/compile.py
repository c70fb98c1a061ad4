"""The compile step: the source's own `setup.py` through `pip wheel`, exactly as vLLM builds.

The build directory is setuptools' `build/` inside the source tree, which persists across
runs: after a crash or Ctrl-C, Ninja finds the objects already built and compiles only the
rest. The environment is the one vLLM's `setup.py` reads (MAX_JOBS, NVCC_THREADS,
TORCH_CUDA_ARCH_LIST, CMAKE_BUILD_TYPE, VLLM_TARGET_DEVICE, CUDA_HOME) plus
TRITON_PTXAS_PATH, since Triton's bundled ptxas rejects `sm_121a`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from spark_build.compile import cache as compiler_cache
from spark_build.compile.cache_plan import env_note
from spark_build.compile.cxxstd import check_source_against_torch
from spark_build.compile.governed import (
    GovernedCompile,
    GovernorJournal,
    governed_compile,
    ninja_outputs,
    objects_recorded,
    planned_objects,
    timing_detail,
)
from spark_build.compile.jobplan import DEFAULT_PROFILE, Estimates, JobPlan, cpu_count, load_estimates, plan_jobs
from spark_build.compile.ninjalog import seed_ninja_log
from spark_build.durable import sha256_of
from spark_build.errors import StepFailed
from spark_build.pipeline.progress import forecast_line
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.fetched import FetchedSources
from spark_build.upstream.versions import version_from_tag
from spark_build.venv import find_tool


def ninja_log_entries(src: Path) -> int:
    """How many objects Ninja has recorded building in setup.py's build tree (`objects_recorded`)."""
    return objects_recorded(src / "build")


def compile_env(ctx: Context, plan: JobPlan) -> dict[str, str]:
    """The variables the build reads; everything else is inherited unchanged."""
    cfg = ctx.config
    cuda_bin = cfg.cuda_home / "bin"
    return {
        # *_SRC_DIR: CMake builds from the fetched sources, never GitHub
        **FetchedSources.from_dict(ctx.optional_result("sources")).env,
        "TORCH_CUDA_ARCH_LIST": ctx.target.arch_list,
        **plan.env(),
        "CUDA_HOME": str(cfg.cuda_home),
        "CMAKE_BUILD_TYPE": cfg.build_type,
        "VLLM_TARGET_DEVICE": "cuda",
        "TRITON_PTXAS_PATH": str(cuda_bin / "ptxas"),
        "VIRTUAL_ENV": str(ctx.venv),
        "PATH": os.pathsep.join([*map(str, tool_dirs(ctx)), str(cuda_bin), os.environ.get("PATH", "")]),
        "CMAKE_ARGS": with_make_program(os.environ.get("CMAKE_ARGS", ""), find_tool("ninja", tool_dirs(ctx))),
        **version_env(ctx),
    }


def version_env(ctx: Context) -> dict[str, str]:
    """The version the wheel is named with, when the source is a vLLM release tag."""
    clone = ctx.result("clone")
    labels = [str(c["version_label"]) for c in ctx.optional_result("changes").get("changes", []) if c.get("applied")]
    version = release_version(ctx.recipe().dist, str(clone.get("describe", "")), labels)
    return {"SETUPTOOLS_SCM_PRETEND_VERSION": version} if version else {}


def release_version(dist: str, describe: str, labels: Sequence[str]) -> str | None:
    """`0.13.0` for vLLM built at its tag `v0.13.0`, `0.13.0+pr12345` with a pull request on top.

    The patch series leaves the tree dirty, and setuptools_scm calls a dirty tree at a tag the
    next release's development build (`0.13.1.dev0+g0edad7b71.d20261130`): a wheel pip would
    rank above 0.13.0 and that `vllm==0.13.0` would refuse. vLLM's setup.py still appends its
    CUDA label (`+cu130`, or `.cu130` after ours). A branch or a commit past a tag keeps
    setuptools_scm's own development version: it is one.
    """
    version = version_from_tag(describe)
    if dist != "vllm" or version is None or describe.removeprefix("v") != str(version):
        return None
    return f"{version}+{'.'.join(labels)}" if labels else str(version)


def with_make_program(cmake_args: str, ninja: Path | None) -> str:
    """The user's CMAKE_ARGS (vLLM's setup.py appends them to its configure) plus the Ninja the
    compile runs, named to CMake. PATH alone is not enough: CMake caches CMAKE_MAKE_PROGRAM at a
    tree's first configure, so a tree first configured by the stock Ninja (an earlier build, a
    resume after the scheduling Ninja was built) would keep starting objects in manifest order.
    A path with a space is left to PATH: vLLM's setup.py splits CMAKE_ARGS on whitespace."""
    if ninja is None or any(c.isspace() for c in str(ninja)):
        return cmake_args
    return " ".join([*cmake_args.split(), f"-DCMAKE_MAKE_PROGRAM:FILEPATH={ninja}"])


def scheduling_ninja(ctx: Context) -> Path | None:
    """The duration-weighted Ninja the ninja step built, when it could."""
    ninja = ctx.optional_result("ninja").get("ninja")
    return Path(ninja) if ninja else None


def tool_dirs(ctx: Context) -> list[Path]:
    """Where the compile finds its tools: the scheduling Ninja's folder first, so CMake and
    setup.py pick it over the venv's, then the build venv's and inherited scripts."""
    ninja = scheduling_ninja(ctx)
    return [*([ninja.parent] if ninja else []), *ctx.bin_dirs]


_BUILD_TEMP_PROBE = (
    "import json, sys, sysconfig; "
    "temp = f'temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}'; "
    "json.dump({'build_temp': temp}, open(sys.argv[1], 'w'))"
)


def arch_plan_commands(ctx: Context) -> object | None:
    """The arch plan's compile_commands.json: every object of the same CMakeLists, configured
    for the same arch list; None when the arch plan left none."""
    try:
        return json.loads(ctx.layout.arch_plan_compile_commands.read_text())
    except (OSError, ValueError):
        return None


def seed_durations(ctx: Context, step: str, estimates: Estimates) -> str:
    """Write the estimates' durations into setup.py's build tree before Ninja first reads it,
    so the scheduling Ninja starts the longest objects first. The objects' paths come from the
    arch plan's configure of the same CMakeLists; setup.py's build folder is setuptools'
    `build/temp.<platform>-<cache tag>`, asked of the build's interpreter."""
    commands = arch_plan_commands(ctx)
    if commands is None:
        return "no arch-plan object list to seed Ninja's durations from"
    outputs = ninja_outputs(commands, ctx.layout.arch_plan)
    build_temp = ctx.layout.build_tree / str(ctx.probe_json(step, ctx.python, _BUILD_TEMP_PROBE)["build_temp"])
    seeded = seed_ninja_log(build_temp / ".ninja_log", outputs, estimates.seconds)
    if not seeded:
        return "Ninja's log already holds every object's duration"
    longest = max(seeded, key=seeded.__getitem__)
    return (
        f"seeded Ninja with {len(seeded)} durations ({estimates.origin}); the longest, "
        f"{Path(longest).name} ({seeded[longest]:.0f} s), starts first"
    )


class Compile(Step):
    name = "compile"
    summary = "compile the extensions and build the wheel (persistent build dir, memory-planned jobs)"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        # Jobs are left out on purpose: they change how fast, not what is built.
        return {
            "arch": ctx.target.arch_list,
            "build_type": ctx.config.build_type,
            "cuda_home": str(ctx.config.cuda_home),
        }

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        commit = ctx.result("clone")["commit"]
        recipe = ctx.recipe()
        source = f"{recipe.dist}@{commit} {ctx.target.arch_list}"
        # Seconds here instead of an #error at the first object that includes torch.
        label = f"{recipe.dist} {recipe.version}" if recipe.version else recipe.dist
        torch = ctx.result("torch")  # its location: the build venv's, or the interpreter's own (existing)
        if torch.get("location"):
            check_source_against_torch(ctx.src, Path(str(torch["location"])), torch["version"], label)
        # The arch plan asked setup.py which targets it builds: plan for those objects only.
        built = ctx.optional_result("arch-plan").get("built_targets")
        targets = frozenset(built) if built is not None else None
        estimates = load_estimates([cfg.logs_dir], DEFAULT_PROFILE, source=source, targets=targets)
        plan = plan_jobs(
            psutil.virtual_memory().available,
            cfg.mem_reserve,
            estimates.peaks,
            cpu_count(),
            cfg.nvcc_threads or 1,
            jobs_override=cfg.jobs,
            mem_budget=cfg.mem_budget,
        )
        stand_in = "" if recipe.is_vllm_release else " (vLLM's measured objects stand in for this source's own)"
        ctx.notes.append(f"compile: {plan.reason}; estimates: {estimates.origin}{stand_in}")
        if scheduling_ninja(ctx) is not None:
            ctx.notes.append(f"compile: {seed_durations(ctx, self.name, estimates)}")
        if pinned := version_env(ctx):
            version = pinned["SETUPTOOLS_SCM_PRETEND_VERSION"]
            ctx.notes.append(f"compile: the wheel is version {version} (the release tag; vLLM adds its CUDA label)")
        ctx.layout.dist.mkdir(parents=True, exist_ok=True)
        for stale in ctx.layout.dist.glob("*.whl"):
            stale.unlink()
        before = ninja_log_entries(ctx.src)
        token = cfg.dist_token_file.read_text().strip() if cfg.dist_token_file else None
        cache = compiler_cache.start(
            ctx,
            self.name,
            mode=cfg.cache,
            size_limit=cfg.cache_size,
            workdir=ctx.workdir,
            cache_dir=cfg.cache_dir,
            dist=cfg.dist,
            dist_token=token,
        )
        try:
            outcome = self._compile(ctx, plan, estimates, source, cache.env)
        finally:
            cache_record = compiler_cache.finish(ctx, self.name, cache)
        return {**outcome, "objects_built": ninja_log_entries(ctx.src) - before, "cache": cache_record}

    def _compile(
        self, ctx: Context, plan: JobPlan, estimates: Estimates, source: str, cache_env: Mapping[str, str]
    ) -> dict[str, Any]:
        """Run `pip wheel`, governed and retried with fewer jobs after an OOM kill (`governed`)."""
        log = ctx.log(self.name)
        # Durations count only when the arch plan said which targets setup.py builds: FA3's 224
        # profiled objects would otherwise be forecast for a build that skips them.
        built = ctx.optional_result("arch-plan").get("built_targets")
        targets = frozenset(built) if built is not None else None
        objects = (
            planned_objects(arch_plan_commands(ctx), ctx.layout.arch_plan, estimates, targets)
            if targets is not None
            else None
        )
        sink = ctx.runner.sink
        spec = GovernedCompile(
            estimates=estimates,
            source=source,
            objects=objects,
            build_tree=ctx.layout.build_tree,
            jobs_json=ctx.run_folder.jobs,
            journal=GovernorJournal(ctx.run_folder.governor_journal),
            reserve_bytes=ctx.config.mem_reserve,
            log=log,
            on_forecast=lambda outlook: sink.progress(forecast_line(outlook)),
        )

        def pip_wheel(at: JobPlan, on_start: Callable[[int], None]) -> int:
            env_vars = {**compile_env(ctx, at), **cache_env}
            wheel_argv: list[str | os.PathLike[str]] = ["-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps"]
            return ctx.run(
                self.name,
                [ctx.python, *wheel_argv, "-w", ctx.layout.dist, "."],
                cwd=ctx.src,
                env={**os.environ, **env_vars},
                env_note=env_note(env_vars),
                on_start=on_start,
                check=False,
            )

        outcome = governed_compile(spec, plan, pip_wheel, note=lambda line: ctx.notes.append(f"compile: {line}"))
        wheels = sorted(ctx.layout.dist.glob("*.whl"))
        if len(wheels) != 1:
            raise StepFailed(
                f"expected one wheel in {ctx.layout.dist}, found {len(wheels)}",
                hint="read the compile log; the build may have produced no wheel",
            )
        wheel = wheels[0]
        return {"wheel": str(wheel), "sha256": sha256_of(wheel), **outcome.to_dict(plan)}

    def detail(self, result: Mapping[str, Any]) -> str:
        return timing_detail(result)

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        wheel = Path(str(result.get("wheel", "")))
        return wheel.is_file() and sha256_of(wheel) == result.get("sha256")
