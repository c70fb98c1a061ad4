"""The step model: what a step is (name, inputs, run, check) and what it may use (`Context`).

Steps never import each other: what one step needs from another is the checkpointed result,
read by name through `Context.result`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from spark_build.arch.target import Target
from spark_build.config import BuildConfig
from spark_build.errors import StepFailed
from spark_build.host.facts import Gpu, GpuQuery, HostFacts
from spark_build.layout import RunFolder, Workdir
from spark_build.pipeline.state import BuildState
from spark_build.proc import Runner
from spark_build.upstream.recipe import Recipe, recipe_for
from spark_build.venv import make_venv

# What the messages tell the user to run when the real command line is not known (library use).
RESUME_COMMAND = "invoke build-vllm --resume"


@dataclass
class Context:
    """What a step may use: the config, the runner, the run's log folder, earlier results."""

    config: BuildConfig
    target: Target
    runner: Runner
    log_dir: Path
    state: BuildState
    notes: list[str] = field(default_factory=list)
    gpu_query: GpuQuery | None = None  # nvidia-smi, asked once per run, before the target is resolved
    host: HostFacts | None = None  # read by preflight on every run
    console: Console | None = None
    compiles: bool = True  # False for `invoke arch-plan`: no compile job will need memory
    resume_command: str = RESUME_COMMAND  # the user's own command line, with --resume
    gcc_minimum: str | None = None  # the oldest GCC the source's configure accepts (its recipe)

    def show(self, renderable: Any) -> None:
        """Put a table in front of the user (the arch plan), not only in the logs."""
        if self.console is not None:
            self.console.print(renderable)

    @property
    def workdir(self) -> Path:
        return self.config.workdir

    @property
    def layout(self) -> Workdir:
        return self.config.layout

    @property
    def run_folder(self) -> RunFolder:
        return RunFolder(self.log_dir)

    @property
    def venv(self) -> Path:
        return self.layout.venv

    @property
    def python(self) -> Path:
        return self.layout.python

    @property
    def src(self) -> Path:
        return self.layout.src

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        return self.gpu_query.gpus if self.gpu_query is not None else ()

    def log(self, step: str) -> Path:
        return self.run_folder.log(step)

    def optional_result(self, step: str) -> dict[str, Any]:
        """A step's result when it has completed, else empty (the arch-plan command stops early)."""
        record = self.state.record(step)
        return dict(record.result) if record is not None and record.status == "done" else {}

    def result(self, step: str) -> dict[str, Any]:
        record = self.state.record(step)
        if record is None or record.status != "done":
            raise StepFailed(f"needs the result of '{step}', which has not completed", step=step)
        return record.result

    def run(self, step: str, argv: list[str | os.PathLike[str]], **kwargs: Any) -> int:
        return self.runner.run(argv, log=self.log(step), step=step, **kwargs)

    def install(self, step: str, *args: str | os.PathLike[str], index: str | None = None, **kwargs: Any) -> int:
        """Install into the build venv the way this build installs (uv or pip, index or wheels)."""
        installer = self.config.installer
        return self.run(step, installer.install_argv(self.python, *args, index=index), env=installer.env(), **kwargs)

    def make_venv(self, step: str, dest: Path, *, seed: bool) -> list[str]:
        """A fresh venv from `--python`; with `--torch existing` it also sees that interpreter's
        packages (its torch), whether they are system packages or another venv's. Returns the
        inherited scripts folders (where that interpreter's cmake and ninja are)."""
        installer = self.config.installer
        return make_venv(
            installer,
            self.config.python,
            dest,
            seed=seed,
            run=lambda argv: self.run(step, argv, env=installer.env()),
            probe=lambda python, code: self.probe_json(step, python, code),
        )

    @property
    def bin_dirs(self) -> list[Path]:
        """Where the build's tools are: the build venv's bin/, then any inherited scripts folder."""
        inherited = self.optional_result("venv").get("inherited_bin", [])
        return [self.venv / "bin", *map(Path, inherited)]

    def probe_json(self, step: str, python: Path, code: str) -> dict[str, Any]:
        """Run a probe in a venv's interpreter; the probe writes JSON to a file we read back, so
        its answer never mixes with the warnings it may print."""
        out = self.run_folder.probe(step)
        self.run(step, [python, "-c", code, str(out)])
        return dict(json.loads(out.read_text()))

    def recipe(self) -> Recipe:
        clone = self.result("clone")
        return recipe_for(self.src, str(clone.get("describe", "")), clone.get("version"))


class Step:
    name = ""
    summary = ""
    volatile = False

    def inputs(self, ctx: Context) -> Mapping[str, Any]:
        return {}

    def run(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, ctx: Context, result: Mapping[str, Any]) -> bool:
        return True

    def detail(self, result: Mapping[str, Any]) -> str:
        """A short fact for the timing table's last column (the compile's jobs and cache)."""
        return ""

    def skipped_notes(self, result: Mapping[str, Any]) -> list[str]:
        """Notes a resumed run repeats from a skipped step's recorded result (the install line)."""
        return []
