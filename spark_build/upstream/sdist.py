"""The recipe files of a source distribution, unpacked without the rest of it.

A vLLM sdist is 20–50 MB of sources; its recipe facts live in a handful of files (the CMake
files, the requirement files, pyproject.toml, PKG-INFO, use_existing_torch.py), so only those
are unpacked: the table of every release reads thirty sdists in seconds.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from spark_build.errors import UsageError
from spark_build.upstream.refs import RECIPE_PATHS


def _wanted(relative: str) -> bool:
    return relative == "PKG-INFO" or any(relative == p or relative.startswith(p + "/") for p in RECIPE_PATHS)


def unpack_recipe_files(sdist: Path, dest: Path) -> Path:
    """Unpack the recipe files of `sdist` under `dest`; returns the tree's root folder."""
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/" in m.name]
            roots = {m.name.split("/", 1)[0] for m in members}
            if len(roots) != 1:
                raise UsageError(f"{sdist} is not a source distribution (one top folder)", hint="give a vllm-X.tar.gz")
            picked = [m for m in members if _wanted(m.name.split("/", 1)[1])]
            tar.extractall(dest, members=picked, filter="data")
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(
            f"cannot read {sdist}: {exc}", hint="give a source distribution (.tar.gz) or a folder"
        ) from exc
    return dest / roots.pop()
