"""The C++ standard torch's headers demand, against the one the source compiles with.

torch 2.14 raised its headers' floor from C++17 to C++20 (`ATen/ATen.h`: `#error C++20 or
later compatible compiler is required to use ATen` under `__cplusplus < 202002L`), while vLLM
0.13.0 compiles its extensions as C++17 (`set(CMAKE_CXX_STANDARD 17)`). Unchecked, the two meet
at the first object that includes ATen, one `#error` among thousands of compile lines. Both facts
are on disk before the compile starts, so the compile step reads them and stops at once, naming
the torch the source itself pins (read from the commit, since use_existing_torch.py strips it).
The standard and the pins are read by `upstream.facts`, the reader `invoke recipe` and the source
plan use, so the compile never judges by a fact the recipe would print otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import git

from spark_build.errors import StepFailed
from spark_build.upstream.facts import CUDA_REQUIREMENTS, cxx_standard, torch_pins

_FLOOR = re.compile(r"__cplusplus\s*<\s*(\d{4})\d{2}L")
_USES_TORCH = re.compile(r"^\s*find_package\s*\(\s*Torch\b", re.MULTILINE | re.IGNORECASE)


def header_floor(aten_h: str) -> int | None:
    """The lowest standard `ATen/ATen.h` accepts: its `__cplusplus < 202002L` guard → 20."""
    found = _FLOOR.search(aten_h)
    return int(found.group(1)) % 100 if found else None


def torch_floor(torch_dir: Path) -> int | None:
    """The floor of the torch package at `torch_dir` (`…/site-packages/torch`: the build venv's,
    or with `--torch existing` the interpreter's own), or None when its headers state none."""
    header = torch_dir / "include" / "ATen" / "ATen.h"
    return header_floor(header.read_text(errors="replace")) if header.is_file() else None


def source_standard(cmakelists: str) -> int | None:
    """The standard a CMake project compiles torch's headers with (`set(CMAKE_CXX_STANDARD 17)`
    → 17); None when it sets none or never looks for torch (`find_package(Torch)`), since then
    no object includes them."""
    standard = cxx_standard(cmakelists)
    return int(standard) if standard and _USES_TORCH.search(cmakelists) else None


def committed_text(source: Path, rel: str) -> str:
    """A file as the checked-out commit has it (before any step rewrote it); '' if absent."""
    try:
        return str(git.Repo(source).git.show(f"HEAD:{rel}"))
    except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return ""


def conflict(
    torch_version: str, floor: int | None, standard: int | None, pins: Sequence[str], dist: str, step: str = "compile"
) -> StepFailed | None:
    """The error to stop with when the torch headers need a newer C++ than the source uses."""
    if floor is None or standard is None or floor <= standard:
        return None
    if any(p.startswith("torch==") for p in pins):
        hint = f"build against the torch {dist} pins: --torch-packages '{' '.join(pins)}', then --resume"
    else:
        hint = f"install a torch whose headers accept C++{standard} (--torch-packages 'torch==X.Y'), then --resume"
    return StepFailed(conflict_line(torch_version, floor, standard, dist), hint=hint, step=step)


def conflict_line(torch_version: str, floor: int, standard: int, dist: str) -> str:
    """What is wrong, in the words of both checks (before the first step and at the compile)."""
    return (
        f"torch {torch_version}'s headers need C++{floor}, but {dist} compiles as C++{standard} "
        f"(CMakeLists.txt: CMAKE_CXX_STANDARD {standard}); every object that includes torch would fail"
    )


def check_source_against_torch(source: Path, torch_dir: Path, torch_version: str, dist: str) -> None:
    """Raise the conflict for this source tree and the torch package at `torch_dir`, if any."""
    cmakelists = source / "CMakeLists.txt"
    standard = source_standard(cmakelists.read_text(errors="replace")) if cmakelists.is_file() else None
    pins = torch_pins(committed_text(source, CUDA_REQUIREMENTS))
    error = conflict(torch_version, torch_floor(torch_dir), standard, pins, dist)
    if error is not None:
        raise error
