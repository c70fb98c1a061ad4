"""preflight: read the host once and judge it for this build, before anything is written."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from rich.text import Text

from spark_build.config import BuildConfig
from spark_build.durable import atomic_write_text
from spark_build.errors import UsageError
from spark_build.host.doctor import to_json
from spark_build.host.facts import TorchInfo, gather_host, nvcc_version, query_torch
from spark_build.host.needs import EXAMPLE_NEEDS, VLLM_NEEDS, BuildNeeds
from spark_build.host.query import run_command
from spark_build.host.rules import evaluate, existing_torch, judge_existing_torch
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.refs import ref_kind


def needs_for(example: bool, compiles: bool) -> BuildNeeds:
    """What the host must offer: the example's little, vLLM's disk, and vLLM's memory for one
    compile job only when something will be compiled (a configure-only arch plan needs none)."""
    if example:
        return EXAMPLE_NEEDS
    if not compiles:
        return dataclasses.replace(
            VLLM_NEEDS, one_job_bytes=EXAMPLE_NEEDS.one_job_bytes, heaviest_job_bytes=EXAMPLE_NEEDS.heaviest_job_bytes
        )
    return VLLM_NEEDS


def check_interpreter(python: str) -> None:
    """`--python` must run as Python 3: `/bin/false` passes every path check, and found only by
    the venv step it would already have wiped the finished build's venv."""
    status, output = run_command([python, "-c", "import sys; print(sys.version_info[0])"])
    if status != 0 or output.strip() != "3":
        answer = f"exit {status}" if status != 0 else f"answered {output.strip()[-80:]!r}"
        raise UsageError(
            f"--python {python} does not run as Python 3 ({answer})",
            hint="name a Python 3 interpreter, e.g. /usr/bin/python3",
        )


def refuse_bad_input(cfg: BuildConfig) -> TorchInfo | None:
    """What the options name but no path check can tell, refused before the workdir is made:
    `--cuda-home` without nvcc, a `--python` that is no Python 3, and with `--torch existing` an
    interpreter that has no torch, a CPU torch, or one for another CUDA major than `--torch-cuda`
    and nvcc (the preflight step judges the torch again, for `--resume` and the doctor). Returns
    that existing torch, for the source plan to judge against the source's C++ standard."""
    nvcc = cfg.cuda_home / "bin" / "nvcc"
    if not nvcc.is_file():
        raise UsageError(f"no nvcc at {nvcc}", hint="install CUDA 13.0, or point --cuda-home (or CUDA_HOME) at it")
    check_interpreter(cfg.python)
    return _refuse_unfit_existing_torch(cfg) if cfg.torch == "existing" else None


def _refuse_unfit_existing_torch(cfg: BuildConfig) -> TorchInfo | None:
    torch, error = query_torch(Path(cfg.python), run_command)
    nvcc = nvcc_version({**os.environ, "CUDA_HOME": str(cfg.cuda_home)}, run_command)
    problem = judge_existing_torch(torch, error, nvcc, cfg.torch_cuda, python=cfg.python)
    if problem.severity == "error":
        raise UsageError(f"{problem.check}: {problem.value}", hint=problem.fix)
    return torch


class Preflight(Step):
    name = "preflight"
    summary = "read the host (GPU, nvcc, memory, disk, torch) and check the repo has the ref"
    volatile = True

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        facts = gather_host(
            ctx.workdir,
            ctx.layout.cache,
            arch=ctx.target.arch_list,
            gpu_query=ctx.gpu_query,
            # --torch existing builds against the interpreter's own torch: judge that one.
            python=ctx.python if ctx.python.exists() and cfg.torch == "install" else Path(cfg.python),
            # The compile step sets TRITON_PTXAS_PATH itself; judge the host as the build sees it.
            env={
                **os.environ,
                "CUDA_HOME": str(cfg.cuda_home),
                "TRITON_PTXAS_PATH": str(cfg.cuda_home / "bin" / "ptxas"),
            },
        )
        ctx.host = facts
        problems = evaluate(
            facts,
            ctx.target.arch_list,
            needs_for(cfg.example, ctx.compiles),
            torch_cuda=cfg.torch_cuda,
            gcc_minimum=ctx.gcc_minimum,
        )
        atomic_write_text(ctx.run_folder.host, to_json(problems, facts))
        for problem in problems:
            if problem.severity != "ok":
                line = f"preflight {problem.severity}: {problem.check}: {problem.value} — {problem.fix}"
                # Shown now, not only in the notes after a 40-minute compile it may concern.
                ctx.show(Text(f"  {line}"))  # Text: a value like [sm_121a] is not rich markup
                ctx.notes.append(line)
        if cfg.torch == "existing":
            problems.append(existing_torch(facts, cfg.torch_cuda))
        errors = [p for p in problems if p.severity == "error"]
        if errors:
            first = errors[0]
            more = f" (+{len(errors) - 1} more: invoke doctor)" if len(errors) > 1 else ""
            raise UsageError(f"{first.check}: {first.value}{more}", hint=first.fix)
        # A wrong --ref is found here, at second zero, not after torch is installed.
        kind = ref_kind(cfg.repo, cfg.ref)
        return {
            "arch": ctx.target.arch_list,
            "ref_kind": kind,
            "warnings": [p.check for p in problems if p.severity == "warning"],
        }
