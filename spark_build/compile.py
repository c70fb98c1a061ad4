"""The compile step: the source's own `setup.py` through `pip wheel`, exactly as vLLM builds.

The build directory is setuptools' `build/` inside the source tree, which persists across
runs: after a crash or Ctrl-C, Ninja finds the objects already built and compiles only the
rest. The environment is the one vLLM's `setup.py` reads (MAX_JOBS, NVCC_THREADS,
TORCH_CUDA_ARCH_LIST, CMAKE_BUILD_TYPE, VLLM_TARGET_DEVICE, CUDA_HOME) plus
TRITON_PTXAS_PATH, since Triton's bundled ptxas rejects `sm_121a`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_build.durable import sha256_of
from spark_build.errors import StepFailed
from spark_build.steps import Context, Step


def ninja_log_entries(src: Path) -> int:
    """How many objects Ninja has recorded building in this tree (its `.ninja_log`)."""
    total = 0
    for log in src.glob("build/**/.ninja_log"):
        total += sum(1 for line in log.read_text(errors="replace").splitlines() if line and not line.startswith("#"))
    return total


def compile_env(ctx: Context, jobs: int, nvcc_threads: int) -> dict[str, str]:
    """The variables the build reads; everything else is inherited unchanged."""
    cfg = ctx.config
    cuda_bin = cfg.cuda_home / "bin"
    return {
        "TORCH_CUDA_ARCH_LIST": ctx.arch,
        "MAX_JOBS": str(jobs),
        "NVCC_THREADS": str(nvcc_threads),
        "CUDA_HOME": str(cfg.cuda_home),
        "CMAKE_BUILD_TYPE": cfg.build_type,
        "VLLM_TARGET_DEVICE": "cuda",
        "TRITON_PTXAS_PATH": str(cuda_bin / "ptxas"),
        "VIRTUAL_ENV": str(ctx.venv),
        "PATH": os.pathsep.join([str(ctx.venv / "bin"), str(cuda_bin), os.environ.get("PATH", "")]),
    }


@dataclass(frozen=True)
class _InterimPlan:
    max_jobs: int
    nvcc_threads: int
    reason: str


def _plan_jobs(ctx: Context) -> _InterimPlan:
    jobs = ctx.config.jobs or len(os.sched_getaffinity(0))
    return _InterimPlan(jobs, ctx.config.nvcc_threads or 1, "interim")


class Compile(Step):
    name = "compile"
    summary = "compile the extensions and build the wheel (persistent build dir, memory-planned jobs)"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        # Jobs are left out on purpose: they change how fast, not what is built.
        return {"arch": ctx.arch, "build_type": ctx.config.build_type, "cuda_home": str(ctx.config.cuda_home)}

    def run(self, ctx: Context) -> dict[str, Any]:
        plan = _plan_jobs(ctx)
        ctx.notes.append(f"compile: MAX_JOBS={plan.max_jobs} NVCC_THREADS={plan.nvcc_threads} — {plan.reason}")
        ctx.dist.mkdir(parents=True, exist_ok=True)
        for stale in ctx.dist.glob("*.whl"):
            stale.unlink()
        before = ninja_log_entries(ctx.src)
        env_vars = compile_env(ctx, plan.max_jobs, plan.nvcc_threads)
        ctx.run(
            self.name,
            [ctx.python, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps", "-w", ctx.dist, "."],
            cwd=ctx.src,
            env={**os.environ, **env_vars},
            env_note=env_vars,
        )
        wheels = sorted(ctx.dist.glob("*.whl"))
        if len(wheels) != 1:
            raise StepFailed(
                f"expected one wheel in {ctx.dist}, found {len(wheels)}",
                hint="read the compile log; the build may have produced no wheel",
            )
        wheel = wheels[0]
        return {
            "wheel": str(wheel),
            "sha256": sha256_of(wheel),
            "max_jobs": plan.max_jobs,
            "nvcc_threads": plan.nvcc_threads,
            "objects_built": ninja_log_entries(ctx.src) - before,
        }

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        wheel = Path(str(result.get("wheel", "")))
        return wheel.is_file() and sha256_of(wheel) == result.get("sha256")
