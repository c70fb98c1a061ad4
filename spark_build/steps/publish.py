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
        # The torch validate installed beside the wheel, from where it came, into a venv of its
        # own; an existing torch is the interpreter's own, so the wheel goes into that interpreter.
        torch = ctx.result("torch")
        cfg = ctx.config
        index = None if torch["existing"] else str(cfg.wheels) if cfg.wheels else cfg.torch_index
        pins = () if torch["existing"] else (f"torch=={torch['version']}",)
        venv = None if torch["existing"] else ctx.layout.install_venv
        line = install_line(target, cfg.wheelhouse, python=cfg.python, venv=venv, index=index, pins=pins)
        ctx.notes.append(f"install with: {line}")
        return {"path": str(target), "sha256": sha, "install": line}

    def skipped_notes(self, result: Mapping[str, Any]) -> list[str]:
        return [f"install with: {result['install']}"] if result.get("install") else []

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        path = Path(str(result.get("path", "")))
        return path.is_file() and sha256_of(path) == result.get("sha256")
