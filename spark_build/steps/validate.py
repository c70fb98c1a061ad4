"""validate: prove the wheel outside the build, in a fresh venv with the torch it compiled against
(the checks themselves are `wheel.proof`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spark_build.config import BuildConfig
from spark_build.durable import atomic_write_text, sha256_of
from spark_build.host.archprobe import parse_nvcc_version
from spark_build.host.facts import query_gpus
from spark_build.host.query import run_command
from spark_build.host.target import resolve_target
from spark_build.pipeline.step import Context, Step
from spark_build.upstream.facts import PYPI_INDEX, exact_torch, torch_index_for
from spark_build.wheel.proof import (
    WheelProof,
    cuda_major,
    modules_of,
    prove_wheel,
    render_proof,
    serve_decision,
    wheel_requirements,
)


class Validate(Step):
    name = "validate"
    summary = "fresh venv: install the wheel, import it, audit its linkage and GPU code"

    def run(self, ctx: Context) -> dict[str, Any]:
        recipe = ctx.recipe()
        gpu_caps = [gpu.compute_cap for gpu in ctx.gpus]
        caps = ctx.target.compute_capabilities
        serve, why = serve_decision(recipe.dist, gpu_caps, caps, not ctx.config.no_serve)
        if not serve:
            ctx.notes.append(f"validate: {why}")
        wheel = Path(ctx.result("compile")["wheel"])
        # The torch the build compiled against: use_existing_torch.py removed the wheel's pin;
        # an existing torch is inherited by the fresh venv, as by the build venv.
        torch = ctx.result("torch")
        proof = WheelProof(
            wheel=wheel,
            venv=ctx.layout.validate_venv,
            python=ctx.config.python,
            requirements=() if torch["existing"] else (f"torch=={torch['version']}",),
            index=extra_index(ctx.config.torch_index),
            installer=ctx.config.installer,
            modules=modules_of(wheel),
            cuda_home=ctx.config.cuda_home,
            cuda_major=cuda_major(ctx.config.torch_cuda, ctx.host.nvcc_version if ctx.host else None),
            targets=ctx.target.compute_capabilities,
            driver=bool(ctx.gpus),
            serve=serve,
            serve_model=ctx.config.serve_model,
            unmet_list=ctx.run_folder.missing_requirements,
        )
        outcome = prove_wheel(proof, ctx.runner, ctx.log(self.name))
        atomic_write_text(ctx.run_folder.validate, json.dumps(outcome.results, indent=2, default=str))
        outcome.raise_if_failed(step=self.name, log=ctx.log(self.name))
        ctx.notes.extend(render_proof(outcome.results))
        return outcome.results

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        wheel = Path(str(ctx.state.steps["compile"].result.get("wheel", "")))
        return (
            (ctx.layout.validate_venv / "bin" / "python").exists()
            and wheel.is_file()
            and (sha256_of(wheel) == result.get("wheel_sha256"))
        )


def extra_index(index: str) -> str | None:
    """The index the validate venv adds for torch: none when it is the package index, which
    every install reads already (named again, it would bypass a mirror configured for it)."""
    return None if index.rstrip("/") == PYPI_INDEX else index


def validate_index(cfg: BuildConfig, wheel_requires: Sequence[str], requirements: Sequence[str]) -> str | None:
    """Where the validate venv takes torch from, for a wheel outside a build: `--torch-index`
    when given; else the index `invoke recipe` names for the torch the wheel (or --with-package)
    pins — the package index from torch 2.11 (vLLM 0.20.0 on), PyTorch's cu130 index before —
    so a release whose torch is on the package index never needs PyTorch's host."""
    pinned = exact_torch((*requirements, *wheel_requires))
    if "torch_index" in cfg.from_source and pinned is not None:
        return extra_index(torch_index_for(pinned)[0])
    return extra_index(cfg.torch_index)


def wheel_proof(
    cfg: BuildConfig, path: Path, *, requirements: Sequence[str], serve: bool | None, unmet_list: Path | None = None
) -> WheelProof:
    """The proof `invoke validate` and `--prefer-wheel` run on a wheel outside a build: the target
    and driver read from this host; `serve` None: serve where the step would (vLLM, on a GPU the
    target includes, unless --no-serve)."""
    nvcc_version = None
    if not cfg.torch_cuda.isdigit():
        nvcc_version = parse_nvcc_version(run_command([str(cfg.cuda_home / "bin" / "nvcc"), "--version"])[1])[0]
    gpus = query_gpus()
    target = resolve_target(cfg.arch, gpus.gpus)
    if serve is None:
        caps = [gpu.compute_cap for gpu in gpus.gpus]
        serve = serve_decision("vllm", caps, target.compute_capabilities, not cfg.no_serve)[0]
    return WheelProof(
        wheel=path,
        venv=cfg.layout.validate_venv_for(path),
        python=cfg.python,
        requirements=tuple(requirements),
        index=validate_index(cfg, wheel_requirements(path), requirements),
        installer=cfg.installer,
        modules=modules_of(path),
        cuda_home=cfg.cuda_home,
        cuda_major=cuda_major(cfg.torch_cuda, nvcc_version),
        targets=target.compute_capabilities,
        driver=bool(gpus.gpus),
        serve=serve,
        serve_model=cfg.serve_model,
        unmet_list=unmet_list,
    )
