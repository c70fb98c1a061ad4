"""Which source files each extension target compiles, read from the compile_commands.json of the
release's own CMake configure: what a `--pr`/`--patch` on a prebuilt wheel must rebuild.

The release's CMakeLists.txt, not a list of ours, says which `csrc/` file goes into `_C`, `_moe_C`
or `_qutlass_C` (vLLM moves files between targets from release to release). CMake names every
object `CMakeFiles/<target>.dir/<source>.o`, so the object's path names its target. Only files of
the release's own tree count: an external project's sources (CUTLASS, qutlass) and files the
configure generated cannot be touched by a change to the release.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TARGET_DIR = re.compile(r"(?:^|/)CMakeFiles/([^/]+)\.dir/")


def target_of(output: str) -> str | None:
    """The CMake target an object belongs to (`CMakeFiles/_C.dir/csrc/x.cu.o` → `_C`); None when
    the path is not one CMake's Ninja generator writes for a target's object."""
    found = _TARGET_DIR.search(output.replace("\\", "/"))
    return found[1] if found else None


def _output_of(entry: Mapping[str, Any]) -> str:
    """The object an entry compiles: `output` (CMake ≥ 3.20 writes it), else the command's `-o`."""
    if entry.get("output"):
        return str(entry["output"])
    argv = list(entry["arguments"]) if "arguments" in entry else shlex.split(str(entry.get("command", "")))
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-o":
            return value
    return ""


def _inside(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (as a change names it, `csrc/x.cu`), None when outside it."""
    for candidate, base in ((path, root), (path.resolve(), root.resolve())):
        if candidate.is_relative_to(base):
            return candidate.relative_to(base).as_posix()
    return None


def target_sources(entries: str | Sequence[Mapping[str, Any]], source_root: Path) -> dict[str, tuple[str, ...]]:
    """Each target → the release's files it compiles, relative to `source_root` and sorted.
    `entries` is compile_commands.json, as text or parsed. Files below an entry's build folder
    (generated during the configure) and outside `source_root` are left out."""
    data = json.loads(entries) if isinstance(entries, str) else entries
    found: dict[str, set[str]] = {}
    for entry in data:
        directory = Path(str(entry.get("directory", ".")))
        target = target_of(_output_of(entry))
        source = Path(os.path.normpath(directory / str(entry["file"])))  # an absolute `file` replaces `directory`
        if target is None or _inside(source, directory) is not None:
            continue
        relative = _inside(source, source_root)
        if relative is not None:
            found.setdefault(target, set()).add(relative)
    return {target: tuple(sorted(files)) for target, files in sorted(found.items())}
