"""venv, torch and ninja: the build's interpreter, the torch every extension compiles against,
and the Ninja that schedules the compile."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spark_build.compile import ninjabuild
from spark_build.errors import SparkBuildError, StepFailed
from spark_build.layout import user_cache
from spark_build.pipeline.step import Context, Step


class Venv(Step):
    name = "venv"
    summary = "create the build venv with uv"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"python": ctx.config.python, "inherit_site": ctx.config.installer.inherit_site}

    def run(self, ctx: Context) -> dict[str, Any]:
        # --seed puts pip into the venv: the compile runs `pip wheel`, as vLLM's docs build.
        inherited_bin = ctx.make_venv(self.name, ctx.venv, seed=True)
        info = ctx.probe_json(
            self.name,
            ctx.python,
            "import json,sys,platform; json.dump({'version': platform.python_version()}, open(sys.argv[1],'w'))",
        )
        return {"python_version": info["version"], "inherited_bin": inherited_bin}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return ctx.python.exists()


_TORCH_PROBE = """
import json, sys
import torch
json.dump({"version": torch.__version__, "cuda": torch.version.cuda, "location": torch.__path__[0],
           "arch_list": torch.cuda.get_arch_list() if torch.version.cuda else []}, open(sys.argv[1], "w"))
"""


class Torch(Step):
    name = "torch"
    summary = "install torch (or take the interpreter's own) and check its CUDA version"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        cfg = ctx.config
        if cfg.torch == "existing":
            return {"existing": cfg.python, "cuda": cfg.torch_cuda}
        return {"index": cfg.torch_index, "packages": cfg.torch_packages, "cuda": cfg.torch_cuda, "wheels": cfg.wheels}

    def run(self, ctx: Context) -> dict[str, Any]:
        cfg = ctx.config
        if cfg.torch == "existing":
            ctx.notes.append(f"torch: {cfg.torch_choice}")
        else:
            ctx.install(self.name, *cfg.torch_packages, index=cfg.torch_index)
        found = ctx.probe_json(self.name, ctx.python, _TORCH_PROBE)
        cuda = found.get("cuda")
        if not torch_matches(cuda, cfg.torch_cuda):
            wanted = "a CPU build" if cfg.torch_cuda == "cpu" else f"CUDA {cfg.torch_cuda}.x"
            raise StepFailed(
                f"torch {found['version']} is built for CUDA {cuda or 'none (CPU)'}, wanted {wanted}",
                hint=f"check --torch-index ({cfg.torch_index}) serves the right build, or set --torch-cuda",
            )
        return {
            "version": found["version"],
            "cuda": cuda,
            "arch_list": found.get("arch_list", []),
            "existing": cfg.torch == "existing",
            "location": found.get("location"),
        }

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        if not ctx.python.exists():
            return False
        # Still the version the build compiled against, where it was found: the interpreter's own
        # site-packages (existing) or the build venv's.
        if result.get("existing"):
            dist_infos = Path(str(result.get("location", ""))).parent.glob("torch-*.dist-info")
        else:
            dist_infos = (ctx.venv / "lib").glob("python*/site-packages/torch-*.dist-info")
        version = str(result.get("version", "")).split("+")[0]
        return any(d.name.startswith(f"torch-{version}") for d in dist_infos)


def torch_matches(cuda: str | None, wanted: str) -> bool:
    """Does a torch whose `torch.version.cuda` is `cuda` fit `--torch-cuda` (a major or 'cpu')?
    A cu128 torch on a CUDA 13 Spark imports, then dies looking for `libcudart.so.12`."""
    if wanted == "cpu":
        return cuda is None
    return bool(cuda) and str(cuda).split(".")[0] == wanted


class Ninja(Step):
    name = "ninja"
    summary = "build the Ninja that starts the slowest compile chains first (ninja 1.13.2 + our patch; once a machine)"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"ninja": ninjabuild.build_key(), "choice": ctx.config.ninja}

    def run(self, ctx: Context) -> dict[str, Any]:
        if ctx.config.ninja == "stock":
            ctx.notes.append("ninja: the stock Ninja (--ninja stock), objects in manifest order")
            return {"ninja": None}
        if not ctx.recipe().is_vllm_release:
            ctx.notes.append("ninja: the stock Ninja (scheduling by duration pays off on vLLM's long compile only)")
            return {"ninja": None}
        binary = ninjabuild.cached_binary(user_cache())
        if ninjabuild.is_ours(binary):
            ctx.notes.append(f"ninja: {binary} (duration-weighted critical path; built before)")
            return {"ninja": str(binary)}
        try:
            self._build(ctx, binary)
        except SparkBuildError as exc:
            # A slower build, never a failed one: the stock Ninja compiles the same objects.
            ctx.notes.append(
                f"ninja: could not build the scheduling Ninja ({exc.message}); the compile uses the stock "
                f"Ninja, objects in manifest order (details in {ctx.log(self.name)})"
            )
            return {"ninja": None}
        ctx.notes.append(f"ninja: built {binary} (duration-weighted critical path)")
        return {"ninja": str(binary)}

    def _build(self, ctx: Context, binary: Path) -> None:
        cfg = ctx.config
        if cfg.wheels is not None and (sdist := ninjabuild.find_sdist(cfg.wheels)) is not None:
            ninjabuild.build_from_sdist(sdist, binary, ctx.python, self._runner(ctx))
            return
        if cfg.offline and cfg.wheels is None:
            raise StepFailed("offline, and no --wheels folder holds its source")
        with tempfile.TemporaryDirectory(prefix="spark-build-ninja-") as scratch:
            download: list[str | os.PathLike[str]] = [ctx.python, "-m", "pip", "download", "--no-deps"]
            download += ["--no-binary", ":all:", *cfg.installer.source_args(), "-d", scratch]
            ctx.run(self.name, [*download, ninjabuild.NINJA_REQUIREMENT], env=cfg.installer.env())
            sdist = ninjabuild.find_sdist(Path(scratch))
            if sdist is None:
                where = cfg.wheels or "the package index"
                raise StepFailed(f"{where} has no ninja-{ninjabuild.NINJA_VERSION}.tar.gz")
            ninjabuild.build_from_sdist(sdist, binary, ctx.python, self._runner(ctx))

    def _runner(self, ctx: Context) -> ninjabuild.Run:
        def run(argv: Sequence[str | os.PathLike[str]], cwd: Path) -> None:
            ctx.run(self.name, list(argv), cwd=cwd)

        return run

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        ninja = result.get("ninja")
        return ninja is None or ninjabuild.is_ours(Path(str(ninja)))

    def detail(self, result: Mapping[str, Any]) -> str:
        return "duration-weighted" if result.get("ninja") else "stock Ninja"
