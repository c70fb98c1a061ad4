"""A Python-only change on a prebuilt wheel: a fix that touches no kernel needs no 40-minute compile.

The wheel is unpacked, each change applied to the files it ships (`git apply --include` per
top-level package: a PR's tests and docs are not in the wheel), and the result repacked as a new
version with a local label (`0.15.0+cu130` → `0.15.0+cu130.pr12345`), so pip and the wheelhouse
tell it from the official one: the dist-info folder renamed to match, METADATA's `Version:`
rewritten and RECORD recomputed — pip checks those hashes when it installs the wheel.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.errors import StepFailed
from spark_build.wheel.relabel import rewrite_wheel

Run = Callable[[list[str | os.PathLike[str]]], int]

# Python files that still belong to the native build: vLLM's csrc/ and cmake/ helpers, setup.py.
_BUILD_PYTHON = re.compile(r"^(csrc/|cmake/|setup\.py$)")


def python_only(paths: Iterable[str]) -> bool:
    """True when every changed file is a Python file outside the native build (no compile needed)."""
    files = list(paths)
    return bool(files) and all(p.endswith(".py") and not _BUILD_PYTHON.search(p) for p in files)


def changed_files(diff: Path) -> tuple[str, ...]:
    """The files a unified diff changes: `+++ b/path`, or `--- a/path` for a deleted file."""
    found, removed = [], ""
    for line in diff.read_text(errors="replace").splitlines():
        if line.startswith("--- "):
            removed = line[4:].strip().removeprefix("a/")
        elif line.startswith("+++ "):
            added = line[4:].strip()
            found.append(removed if added == "/dev/null" else added.removeprefix("b/"))
    return tuple(found)


@dataclass(frozen=True)
class Change:
    """A `--pr` or `--patch` change to carry onto the official wheel: its diff, and whether it
    touches the package's Python alone (only then can a prebuilt wheel take it)."""

    label: str  # PR #12345, fix.patch
    diff: Path
    python_only: bool
    version_label: str  # pr12345, patch1a2b3c4d: the local version part it adds


def patch_wheel(wheel: Path, changes: Sequence[tuple[str, Path]], label: str, out_dir: Path, run: Run) -> Path:
    """Apply `changes` (name, diff file) to `wheel`'s files; the new wheel, in `out_dir`."""

    def apply(root: Path) -> None:
        packages = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".data")))
        includes = [f"--include={package}/*" for package in packages]
        for change, diff in changes:
            if run(["git", "-C", root, "apply", "-p1", *includes, diff.resolve()]) != 0:
                raise StepFailed(
                    f"{change} does not apply to the files of {wheel.name} (the log names file and hunk)",
                    hint="build from source without --prefer-wheel, where the change is applied to the tree",
                )

    return rewrite_wheel(wheel, label, out_dir, apply)
