"""Prove the wheel outside the build: a fresh venv, the wheel and the torch the build used,
then import the package and load every compiled extension.

A fresh venv matters: the build venv holds the source tree's build requirements and could
hide a dependency the wheel forgot to declare.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spark_build.compile import Compile
from spark_build.durable import sha256_of
from spark_build.errors import StepFailed
from spark_build.steps import Context, Step, index_args
from spark_build.wheelhouse import install_line, publish

_IMPORT_PROBE = """
import importlib, json, sys
modules = sys.argv[2:]
found = {}
for name in modules:
    try:
        found[name] = {"ok": True, "file": getattr(importlib.import_module(name), "__file__", None)}
    except Exception as exc:  # report every module, not just the first failure
        found[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
json.dump(found, open(sys.argv[1], "w"))
"""


class Validate(Step):
    name = "validate"
    summary = "install the wheel into a fresh venv and import the package and its extensions"

    @staticmethod
    def venv(ctx: Context) -> Path:
        return ctx.workdir / "validate-venv"

    def run(self, ctx: Context) -> dict[str, Any]:
        wheel = Path(ctx.result(Compile.name)["wheel"])
        torch = ctx.result("torch")
        recipe = ctx.recipe()
        venv = self.venv(ctx)
        python = venv / "bin" / "python"
        ctx.uv(self.name, "venv", "--clear", "--python", ctx.config.python, venv)
        # The torch the build compiled against, pinned: the wheel's own torch pin was removed
        # by use_existing_torch.py, so nothing else would bring the right one.
        torch_pin = f"torch=={torch['version']}"
        ctx.uv(self.name, "pip", "install", "--python", python, *index_args(ctx.config.torch_index), wheel, torch_pin)
        modules = [recipe.import_name, *recipe.extensions]
        out = ctx.log_dir / f"{self.name}.imports.json"
        ctx.run(self.name, [python, "-c", _IMPORT_PROBE, str(out), *modules], cwd=ctx.workdir)
        found = json.loads(out.read_text())
        failed = {m: r["error"] for m, r in found.items() if not r["ok"]}
        if failed:
            first = next(iter(failed))
            raise StepFailed(
                f"the installed wheel fails to import {first}: {failed[first]}",
                hint="read the validate log; a missing shared library usually means a CUDA version mismatch",
            )
        return {"wheel_sha256": sha256_of(wheel), "imports": sorted(found)}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        wheel = Path(str(ctx.state.steps[Compile.name].result.get("wheel", "")))
        return (
            (self.venv(ctx) / "bin" / "python").exists()
            and wheel.is_file()
            and (sha256_of(wheel) == result.get("wheel_sha256"))
        )


class Publish(Step):
    name = "publish"
    summary = "copy the wheel into the local wheelhouse (PEP 503) with its sha256"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"wheelhouse": str(ctx.config.wheelhouse)}

    def run(self, ctx: Context) -> dict[str, Any]:
        wheel = Path(ctx.result(Compile.name)["wheel"])
        target, sha = publish(wheel, ctx.config.wheelhouse)
        line = install_line(target, ctx.config.wheelhouse)
        ctx.notes.append(f"install with: {line}")
        return {"path": str(target), "sha256": sha, "install": line}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        path = Path(str(result.get("path", "")))
        return path.is_file() and sha256_of(path) == result.get("sha256")
