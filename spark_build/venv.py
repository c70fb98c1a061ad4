"""Python environments: the one way spark-build makes venvs and installs into them.

Resolved once per build into an `Installer` from `--torch` and `--wheels`:
- uv by default: fast, and its progress bars are off so a 30-minute log stays readable;
- `--torch existing`: the venvs inherit the interpreter's site-packages (its torch, as in
  NVIDIA's PyTorch container), and installs go through that venv's pip, because uv resolves
  without looking at inherited packages and would ask the index for torch again;
- `--wheels DIR`: every install reads that folder and no index (a machine without a registry).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_sdist_filename, parse_wheel_filename
from uv import find_uv_bin

Argv = list[str | os.PathLike[str]]
# Runs `code` in an interpreter; the code writes JSON to the file named by its first argument,
# and the probe returns it (the caller owns the runner, its log and the scratch file).
Probe = Callable[[Path, str], dict[str, Any]]


def uv_bin() -> str:
    return find_uv_bin()


def uv_env(cache_dir: Path | None) -> dict[str, str]:
    """uv's environment: our cache when one is configured, and no progress bars in logs."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["UV_CACHE_DIR"] = str(cache_dir)
    env.setdefault("UV_NO_PROGRESS", "1")
    return env


def index_args(index: str) -> list[str]:
    """A local folder of wheels is a find-links source; anything else an extra index, so
    torch's own dependencies still come from the default index."""
    if "://" not in index:
        return ["--find-links", index]
    return ["--extra-index-url", index]


@dataclass(frozen=True)
class Installer:
    """How a build makes its venvs and installs packages into them."""

    inherit_site: bool = False  # --torch existing: the venvs see the interpreter's packages
    wheels: Path | None = None  # --wheels DIR: the only source of packages
    uv_cache_dir: Path | None = None

    def env(self) -> dict[str, str]:
        env = uv_env(self.uv_cache_dir)
        env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        return env

    def venv_argv(self, python: str | Path, dest: Path, *, seed: bool) -> Argv:
        """A fresh venv (`--clear`); `seed` puts pip in it (the compile runs `pip wheel`).

        Inheriting, the interpreter's own `venv` makes it: its pip comes from ensurepip, on
        disk, where `uv venv --seed` would ask the index for pip (no index: no venv)."""
        if self.inherit_site:
            return [python, "-m", "venv", "--clear", "--system-site-packages", dest]
        argv: Argv = [uv_bin(), "venv", "--clear"]
        if seed:
            argv += ["--seed", *self.source_args()]
        return [*argv, "--python", str(python), dest]

    def source_args(self, index: str | None = None) -> list[str]:
        """Where packages come from: the wheel folder alone, else the index (and `index`)."""
        if self.wheels is not None:
            extra = ["--find-links", index] if index is not None and "://" not in index else []
            return ["--no-index", "--find-links", str(self.wheels), *extra]
        return index_args(index) if index is not None else []

    def install_argv(self, python: Path, *args: str | os.PathLike[str], index: str | None = None) -> Argv:
        """Install `args` (requirements, `-r FILE`, `--constraint FILE`, wheels) into `python`'s venv."""
        if self.inherit_site:
            return [python, "-m", "pip", "install", "--no-input", *self.source_args(index), *args]
        return [uv_bin(), "pip", "install", "--python", python, *self.source_args(index), *args]


# The site-packages folders an interpreter reads; for a venv's interpreter (/opt/torch/.venv)
# these are the venv's own, which `--system-site-packages` alone would not pass on.
# Its scripts folder too: the build's cmake and ninja may be the ones installed there.
SITE_PROBE = (
    "import json, site, sys, sysconfig; "
    "json.dump({'sites': site.getsitepackages(), 'scripts': sysconfig.get_path('scripts')}, open(sys.argv[1], 'w'))"
)
INHERIT_PTH = "spark_build_inherit.pth"


def make_venv(
    installer: Installer, python: str, dest: Path, *, seed: bool, run: Callable[[Argv], object], probe: Probe
) -> list[str]:
    """A fresh venv from `python`; inheriting, it also sees that interpreter's packages (its
    torch), whether they are system packages or another venv's. Returns the inherited scripts
    folders (where that interpreter's cmake and ninja are)."""
    run(installer.venv_argv(python, dest, seed=seed))
    if not installer.inherit_site:
        return []
    found = probe(Path(python), SITE_PROBE)
    inherit_sites(dest, found["sites"])
    return [found["scripts"]]


def find_tool(name: str, bin_dirs: Sequence[Path]) -> Path | None:
    """The first `name` in the build's tool folders (the venv's bin/, then inherited ones)."""
    return next((folder / name for folder in bin_dirs if (folder / name).exists()), None)


def inherit_sites(venv: Path, sites: Iterable[str]) -> Path:
    """Let `venv` see the packages of another interpreter's site-packages, after its own: a
    `.pth` file, which `site` reads at start-up, so pip counts them as installed."""
    (own,) = venv.glob("lib/python*/site-packages")
    pth = own / INHERIT_PTH
    pth.write_text("".join(f"{site}\n" for site in sites))
    return pth


def installed_packages(venv: Path) -> list[str]:
    """What a venv holds, read from its dist-info folders (name-version), no process needed."""
    return sorted(p.name.removesuffix(".dist-info") for p in venv.glob("lib/python*/site-packages/*.dist-info"))


def wheel_folder_index(folder: Path) -> dict[str, list[str]]:
    """Package name → versions a folder of wheels (and sdists) offers."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            if path.name.endswith(".whl"):
                name, version, _build, _tags = parse_wheel_filename(path.name)
            elif path.name.endswith((".tar.gz", ".zip")):
                name, version = parse_sdist_filename(path.name)
            else:
                continue
        except (InvalidWheelFilename, ValueError):
            continue
        found.setdefault(str(name), []).append(str(version))
    return found


# Every distribution an interpreter sees, inherited site-packages included: name → version.
INSTALLED_PROBE = """
import importlib.metadata as md, json, re, sys
seen = {}
for dist in md.distributions():
    name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "")).lower()
    if name and name not in seen:
        seen[name] = dist.version
json.dump(seen, open(sys.argv[1], "w"))
"""

_INCLUDE = re.compile(r"^\s*(?:-r|--requirement)\s*=?\s*(\S+)")


def read_requirements(path: Path) -> list[str]:
    """The requirement specifiers of a requirements file, following `-r` includes; options
    (`--extra-index-url`, `-c`) and comments are left out."""
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        include = _INCLUDE.match(line)
        if include:
            lines += read_requirements(path.parent / include.group(1))
        elif line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def missing_offline(installer: Installer, wanted: Iterable[str], python: Path, probe: Probe) -> list[str]:
    """With `--wheels`: the requirements that neither `python`'s environment (inherited packages
    included) nor the wheel folder satisfies; without it, none (the index has them)."""
    if installer.wheels is None:
        return []
    installed = probe(python, INSTALLED_PROBE)
    return missing_from_wheels(wanted, wheel_folder_index(installer.wheels), installed)


def missing_from_wheels(
    requirements: Iterable[str],
    offered: Mapping[str, list[str]],
    installed: Mapping[str, str],
    environment: Mapping[str, str] | None = None,
) -> list[str]:
    """The requirements neither `installed` (name → version, inherited packages included) nor
    the wheel folder satisfies — every one at once, so the user fills the folder in one go.
    Only the requirements named here are checked; their own dependencies are pip's to name."""
    missing = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": "", **(environment or {})}):
            continue
        name = canonicalize_name(req.name)
        have = installed.get(name)
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if any(req.specifier.contains(v, prereleases=True) for v in offered.get(name, [])):
            continue
        missing.append(str(req))
    return missing
