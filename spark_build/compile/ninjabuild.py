"""A Ninja that starts the slowest compile chains first, built once per machine.

Stock Ninja (1.12 on) starts the ready edge with the heaviest remaining path but weighs every
edge 1, so the objects of one CMake target start in manifest order, and vLLM's longest object
(`scaled_mm_c2x.cu.o`, about a quarter hour) may start last and set the wall time alone. Our
patch (`data/ninja-1.13.2-duration-weighted-critical-path.patch`, the change upstream made
after 1.13.2) weighs an edge by the milliseconds its last run took, read from `.ninja_log`;
`ninjalog.seed_ninja_log` puts measured durations there before the first build.

The source is the package index's ninja 1.13.2 source distribution (it carries Ninja's own
source in `ninja-upstream/`), so the build needs only what the compile needs anyway: Python
and a C++ compiler. It is bootstrapped with Ninja's own `configure.py --bootstrap` (no CMake).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from spark_build.errors import StepFailed

NINJA_VERSION = "1.13.2"
NINJA_REQUIREMENT = f"ninja=={NINJA_VERSION}"
PATCH = Path(__file__).parents[1] / "data" / f"ninja-{NINJA_VERSION}-duration-weighted-critical-path.patch"
# CMake looks for `ninja-build` before `ninja` in every PATH folder: both names point at ours.
NAMES = ("ninja", "ninja-build")

Run = Callable[[Sequence[str | os.PathLike[str]], Path], object]  # argv, cwd; raises on failure


def build_key() -> str:
    """Names a cached build: another patch is another binary, never a stale one."""
    return f"{NINJA_VERSION}-{hashlib.sha256(PATCH.read_bytes()).hexdigest()[:12]}"


def cached_binary(cache_root: Path) -> Path:
    return cache_root / "ninja" / build_key() / "ninja"


def version_of(binary: Path) -> str | None:
    """`ninja --version`, or None when it does not run (missing, wrong machine, truncated)."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def is_ours(binary: Path) -> bool:
    """The cached binary runs and is the version the patch was written for."""
    version = version_of(binary)
    return version is not None and version.startswith(NINJA_VERSION)


def find_sdist(folder: Path) -> Path | None:
    """The source distribution in a folder of packages (`--wheels`, or where pip downloaded it)."""
    found = folder / f"ninja-{NINJA_VERSION}.tar.gz"
    return found if found.is_file() else None


def build_from_sdist(sdist: Path, dest: Path, python: Path, run: Run) -> Path:
    """Unpack, patch and bootstrap Ninja from `sdist`; install it as `dest` (and `ninja-build`
    beside it) only once it runs, so a failed build leaves no binary to trust."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as scratch:
        with tarfile.open(sdist) as archive:
            archive.extractall(scratch, filter="data")
        upstream = Path(scratch) / f"ninja-{NINJA_VERSION}" / "ninja-upstream"
        if not (upstream / "configure.py").is_file():
            raise StepFailed(
                f"{sdist.name} has no ninja-upstream/configure.py",
                hint=f"use the package index's {NINJA_REQUIREMENT} source distribution",
            )
        # Its own repository, so `git apply` cannot resolve paths against an enclosing checkout.
        run(["git", "init", "-q"], upstream)
        run(["git", "apply", str(PATCH)], upstream)
        run([str(python), "configure.py", "--bootstrap"], upstream)
        built = upstream / "ninja"
        if not is_ours(built):
            raise StepFailed(f"the Ninja built from {sdist.name} does not run or is not {NINJA_VERSION}")
        os.replace(built, dest)
    for alias in NAMES[1:]:
        link = dest.parent / alias
        link.unlink(missing_ok=True)
        link.symlink_to(dest.name)
    return dest
