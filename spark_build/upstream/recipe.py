"""What we know about an upstream's build interface, read from its source tree.

vLLM moved its build requirements between releases (`requirements/build.txt` in 0.13,
`requirements/build/*.txt` later), so the recipe is derived from the checked-out tree rather
than assumed; the patches that apply are chosen by the version (`patches.find_series`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import tomllib
from packaging.utils import canonicalize_name
from packaging.version import Version

from spark_build.errors import StepFailed
from spark_build.upstream.versions import build_requirement_files, version_from_tag

# Where vLLM keeps the script that strips its torch pins: the root up to 0.2x, `tools/` since.
USE_EXISTING_TORCH_PLACES = ("use_existing_torch.py", "tools/use_existing_torch.py")


@dataclass(frozen=True)
class Recipe:
    dist: str
    version: Version | None
    build_requirements: tuple[str, ...]
    use_existing_torch: str | None = None  # path in the tree, found by looking, not by version

    @property
    def is_vllm_release(self) -> bool:
        """Only a vLLM release tree has external projects to fetch and vLLM's CMake to plan."""
        return self.dist == "vllm" and self.version is not None


def project_name(source: Path) -> str:
    """The distribution name from pyproject.toml, else from setup.py's `name=`."""
    pyproject = source / "pyproject.toml"
    if pyproject.is_file():
        with pyproject.open("rb") as handle:
            name = tomllib.load(handle).get("project", {}).get("name")
        if name:
            return str(canonicalize_name(name))
    setup_py = source / "setup.py"
    if setup_py.is_file():
        found = re.search(r"""\bname\s*=\s*["']([A-Za-z0-9._-]+)["']""", setup_py.read_text())
        if found:
            return str(canonicalize_name(found.group(1)))
    raise StepFailed(
        f"cannot tell which project {source} holds (no name in pyproject.toml or setup.py)",
        hint="point --repo at a vLLM checkout",
    )


def recipe_for(source: Path, describe: str, version_of_ref: str | None = None) -> Recipe:
    """The recipe of a checked-out tree; its version from `git describe`, else the one the ref
    was resolved to (a branch: the next after the newest release)."""
    dist = project_name(source)
    version = version_from_tag(describe) or (Version(version_of_ref) if version_of_ref else None)
    requirements = build_requirement_files(source)
    script = next((rel for rel in USE_EXISTING_TORCH_PLACES if (source / rel).is_file()), None)
    return Recipe(dist=dist, version=version, build_requirements=requirements, use_existing_torch=script)


_TORCH_PIN = re.compile(r"""^\s*["']?torch\s*(?:\[[^\]]*\])?\s*(==|>=|<=|~=|!=|<|>|@)""")


def torch_pins(source: Path) -> list[str]:
    """Lines that still pin torch in the files pip installs from (`requirements/**/*.txt` and
    `pyproject.toml`); after `use_existing_torch.py` these must be empty, or build-deps would
    replace the torch we installed. `*.in` files are pip-compile inputs nothing installs from;
    vLLM 0.13.0's script leaves `requirements/test.in` pinned, and that is harmless."""
    files = sorted((source / "requirements").rglob("*.txt"))
    files.append(source / "pyproject.toml")
    found: list[str] = []
    for path in files:
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _TORCH_PIN.match(line):
                found.append(f"{path.relative_to(source)}:{number}: {line.strip()}")
    return found
