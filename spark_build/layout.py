"""Where a build's files live: the workdir's folders and one run's log folder, named once.

Resume, the lock, the report and the history all find files by these names; spelling one in
two modules is how a rename breaks `--resume` or `invoke report` without a test noticing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

LATEST = "latest"  # logs/latest → the newest run folder
SUMMARY = "summary.json"  # a run folder is a run once it holds this
NIGHTLY_HISTORY = "nightly-history.jsonl"


def user_cache() -> Path:
    """What one machine builds once for all of a user's workdirs (`$XDG_CACHE_HOME/spark-build`)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spark-build"


def shared_compiler_cache() -> Path:
    """ccache's cache for every workdir of this user: a new workdir starts with the objects the
    others compiled (ccache is made for concurrent builds sharing one cache)."""
    return user_cache() / "compiler-cache" / "ccache"


@dataclass(frozen=True)
class Workdir:
    """One build's working folder: checkpoint, lock, venvs, source, caches and outputs."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def build_tree(self) -> Path:
        """setup.py's CMake build folder; it persists so an interrupted compile resumes."""
        return self.src / "build"

    @property
    def dist(self) -> Path:
        return self.root / "dist"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def sources_cache(self) -> Path:
        return self.cache / "sources"

    @property
    def arch_plan(self) -> Path:
        return self.root / "arch-plan"

    @property
    def arch_plan_compile_commands(self) -> Path:
        """The arch plan's configure lists every object as Ninja spells it in a build tree."""
        return self.arch_plan / "compile_commands.json"

    @property
    def validate_venv(self) -> Path:
        return self.root / "validate-venv"

    def validate_venv_for(self, wheel: Path) -> Path:
        """`invoke validate WHEEL`'s own venv, so it never disturbs the build's."""
        return self.root / f"validate-{wheel.stem}"

    @property
    def install_venv(self) -> Path:
        """The venv the printed install line makes for the published wheel: the user's next shell
        has no venv active and may have no uv, so the line names one of its own."""
        return self.root / "vllm-venv"

    @property
    def example_upstream(self) -> Path:
        return self.root / "example-upstream"

    @property
    def wheelhouse(self) -> Path:
        return self.root / "wheelhouse"

    @property
    def logs(self) -> Path:
        """Run logs and history live with the build they describe, not in whatever folder the
        command was started from."""
        return self.root / "logs"

    def compiler_cache(self, tool: Literal["ccache", "sccache"]) -> Path:
        return self.root / "compiler-cache" / tool

    @property
    def sccache_dist(self) -> Path:
        return self.root / "sccache-dist"


@dataclass(frozen=True)
class RunFolder:
    """`logs/<run-id>/`: one log per step and the files the report and the next plan read."""

    path: Path

    def log(self, step: str) -> Path:
        return self.path / f"{step}.log"

    def probe(self, step: str) -> Path:
        return self.path / f"{step}.probe.json"

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def trace(self) -> Path:
        return self.path / "trace.json"

    @property
    def jobs(self) -> Path:
        """Per-object peak memory and duration: the next build's job plan reads it."""
        return self.path / "jobs.json"

    @property
    def governor_journal(self) -> Path:
        """One JSON object a line: a memory sample, or {"event": …}."""
        return self.path / "governor.jsonl"

    @property
    def host(self) -> Path:
        return self.path / "host.json"

    @property
    def validate(self) -> Path:
        return self.path / "validate.json"

    @property
    def missing_requirements(self) -> Path:
        """With --wheels: the runtime requirements the folder lacks, one a line (`pip download -r`)."""
        return self.path / "missing-requirements.txt"

    @property
    def arch_plan_table(self) -> Path:
        return self.path / "arch-plan.txt"

    @property
    def arch_plan_json(self) -> Path:
        return self.path / "arch-plan.json"

    @property
    def torch_constraint(self) -> Path:
        return self.path / "torch-constraint.txt"
