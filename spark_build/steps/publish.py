"""publish: the validated wheel into the local wheelhouse, and the line that installs it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spark_build.durable import sha256_of
from spark_build.pipeline.step import Context, Step
from spark_build.wheel.wheelhouse import install_line, publish


class Publish(Step):
    name = "publish"
    summary = "copy the wheel into the local wheelhouse (PEP 503) with its sha256"

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {"wheelhouse": str(ctx.config.wheelhouse)}

    def run(self, ctx: Context) -> dict[str, Any]:
        wheel = Path(ctx.result("compile")["wheel"])
        target, sha = publish(wheel, ctx.config.wheelhouse)
        line = install_line(target, ctx.config.wheelhouse)
        ctx.notes.append(f"install with: {line}")
        return {"path": str(target), "sha256": sha, "install": line}

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        path = Path(str(result.get("path", "")))
        return path.is_file() and sha256_of(path) == result.get("sha256")
