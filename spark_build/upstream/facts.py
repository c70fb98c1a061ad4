"""A vLLM source tree's recipe facts, read from its files by rules rather than a table per release.

vLLM moves its build interface between releases (`use_existing_torch.py` went to `tools/` in
0.31, the build requirements became a folder in 0.20, the torch pin and the C++ standard move
with every torch bump, the set of fetched projects grew from five to ten). Reading each fact
where the tree keeps it makes a release nobody has looked at yet (or `main`) come out right, and
`invoke recipe` prints the same facts the build acts on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import Version

from spark_build.errors import UsageError
from spark_build.upstream.recipe import USE_EXISTING_TORCH_PLACES
from spark_build.upstream.versions import (
    ExternalProject,
    build_requirement_files,
    cmake_files,
    parse_external_projects,
    read_branches,
    rocm_only,
)

_COMMENT_LINE = re.compile(r"#[^\n]*")

TORCH_CU130_INDEX = "https://download.pytorch.org/whl/cu130"
PYPI_INDEX = "https://pypi.org/simple"
# From torch 2.11 the package index's default Linux wheels are built for CUDA 13; older
# releases put CUDA 12 there and CUDA 13 only on PyTorch's own cu130 index.
FIRST_TORCH_CUDA13_ON_PYPI = Version("2.11")
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")
# Where vLLM keeps the CUDA build's runtime pins (torch, torchvision, torchaudio) in every
# release from 0.13.0 to 0.33.0.
CUDA_REQUIREMENTS = "requirements/cuda.txt"


@dataclass(frozen=True)
class TorchPin:
    """The torch a release is built and tested against, and the index that serves it for CUDA 13."""

    packages: tuple[str, ...]  # torch==2.14.0, torchvision==0.29.0, torchaudio==2.11.0
    read_from: str  # the file the pins were read from
    index: str
    index_why: str


def torch_index_for(torch_version: Version) -> tuple[str, str]:
    """The index that has CUDA 13 Linux wheels of this torch, and why that one."""
    if torch_version >= FIRST_TORCH_CUDA13_ON_PYPI:
        return PYPI_INDEX, f"torch {torch_version} ≥ 2.11: the package index's Linux wheels are CUDA 13"
    return TORCH_CU130_INDEX, f"torch {torch_version} < 2.11: CUDA 13 wheels only on PyTorch's cu130 index"


def exact_torch(packages: tuple[str, ...]) -> Version | None:
    """The torch version a requirement list pins exactly (`torch==2.14.0`), else None."""
    for text in packages:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if requirement.name == "torch" and exact:
            return Version(exact[0])
    return None


def torch_pins(requirements: str) -> tuple[str, ...]:
    """The exact torch, torchvision and torchaudio pins of a requirements file's text, in that
    order; a text, not a path, because the compile step reads the file as committed
    (`compile.cxxstd`: use_existing_torch.py has stripped the pins from the tree by then)."""
    pins: dict[str, str] = {}
    for line in requirements.splitlines():
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if requirement.name in TORCH_PACKAGES and exact:
            pins.setdefault(requirement.name, exact[0])
    return tuple(f"{name}=={pins[name]}" for name in TORCH_PACKAGES if name in pins)


def read_torch_pin(source: Path) -> TorchPin | None:
    """The exact torch, torchvision and torchaudio pins of `requirements/cuda.txt`; None when the
    file or its torch pin is missing (then the build must be told which torch to use)."""
    path = source / CUDA_REQUIREMENTS
    packages = torch_pins(path.read_text(encoding="utf-8")) if path.is_file() else ()
    torch = exact_torch(packages)
    if torch is None:
        return None
    index, why = torch_index_for(torch)
    return TorchPin(packages, CUDA_REQUIREMENTS, index, why)


_FINDS_TORCH = re.compile(r"^\s*find_package\s*\(\s*Torch\b", re.IGNORECASE | re.MULTILINE)


def builds_against_torch(cmakelists: str) -> bool:
    """Whether the release's CMake compiles against torch (`find_package(Torch …)`, as vLLM's
    does): then its extensions must be built with the torch its wheel pins."""
    return _FINDS_TORCH.search(cmakelists) is not None


_CXX_STANDARD = re.compile(r"^\s*set\s*\(\s*CMAKE_CXX_STANDARD\s+(\d+)\s*\)", re.IGNORECASE | re.MULTILINE)


def cxx_standard(cmakelists: str) -> str | None:
    """`set(CMAKE_CXX_STANDARD 17)` → "17": torch ≥ 2.14's headers need C++20."""
    found = _CXX_STANDARD.search(cmakelists)
    return found[1] if found else None


def read_cxx_standard(source: Path) -> str | None:
    """`CMAKE_CXX_STANDARD` of the top CMakeLists.txt."""
    path = source / "CMakeLists.txt"
    return cxx_standard(path.read_text(encoding="utf-8")) if path.is_file() else None


_GNU_BELOW = re.compile(
    r'CMAKE_CXX_COMPILER_ID\s+STREQUAL\s+"?GNU"?\s+AND\s+CMAKE_CXX_COMPILER_VERSION\s+VERSION_LESS\s+"?([\d.]+)"?',
    re.IGNORECASE,
)
_FATAL = re.compile(r"message\s*\(\s*FATAL_ERROR", re.IGNORECASE)


def gcc_minimum(cmakelists: str) -> str | None:
    """The oldest GCC the CUDA build's configure accepts: the highest `X` of the
    `if(… CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS "X")`
    blocks that stop with `message(FATAL_ERROR …)` in a branch a CUDA build reads. vLLM asks 11.3
    for torch's C++20 headers and, from 0.33, 13 for DeepGEMM's and DeepSelect's `<format>`:
    Ubuntu 22.04's GCC 11 fails the configure minutes into a build."""
    text = read_branches(_COMMENT_LINE.sub("", cmakelists), rocm_only, keep_conditions=True)
    floors = []
    for found in _GNU_BELOW.finditer(text):
        body = text[found.end() : found.end() + 400]
        endif = re.search(r"\bendif\s*\(", body, re.IGNORECASE)
        if _FATAL.search(body[: endif.start()] if endif else body):
            floors.append(Version(found[1]))
    return str(max(floors)) if floors else None


def read_gcc_minimum(source: Path) -> str | None:
    """`gcc_minimum` of the top CMakeLists.txt."""
    path = source / "CMakeLists.txt"
    return gcc_minimum(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_requires_python(source: Path) -> str | None:
    """`[project] requires-python` of pyproject.toml: the interpreters the build venv may use."""
    path = source / "pyproject.toml"
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        value = tomllib.load(handle).get("project", {}).get("requires-python")
    return str(value) if value else None


def read_build_requirements(source: Path) -> tuple[str, ...]:
    """The CUDA build's requirement file (`versions.build_requirement_files`); none is a fact too."""
    try:
        return build_requirement_files(source)
    except UsageError:
        return ()


def read_version(source: Path) -> Version | None:
    """The release an sdist says it is (`PKG-INFO`); a git checkout has none (its tag says)."""
    path = source / "PKG-INFO"
    found = re.search(r"^Version:\s*(\S+)", path.read_text(encoding="utf-8"), re.M) if path.is_file() else None
    return Version(found[1]) if found else None


# ---------------------------------------------------------------------------------------------
# Which fetched projects compile kernels for the target GPU. Every project is still fetched:
# vLLM's CMake populates them before it intersects architectures.

_CUDA_COMPARE = re.compile(
    r"^(?:DEFINED\s+CMAKE_CUDA_COMPILER_VERSION\s+AND\s+)?\$?\{?CMAKE_CUDA_COMPILER_VERSION\}?\s+"
    r"(VERSION_GREATER_EQUAL|VERSION_GREATER|VERSION_LESS_EQUAL|VERSION_LESS|VERSION_EQUAL)\s+([\d.]+)$"
)
_OPS = {
    "VERSION_GREATER_EQUAL": lambda a, b: a >= b,
    "VERSION_GREATER": lambda a, b: a > b,
    "VERSION_LESS_EQUAL": lambda a, b: a <= b,
    "VERSION_LESS": lambda a, b: a < b,
    "VERSION_EQUAL": lambda a, b: a == b,
}


def _condition_at(condition: str, cuda: Version) -> bool | None:
    """A condition that compares only the CUDA compiler version, evaluated; None for anything else."""
    found = _CUDA_COMPARE.match(" ".join(condition.split()))
    return _OPS[found[1]](cuda, Version(found[2])) if found else None


def text_for_cuda(text: str, cuda: Version) -> str:
    """The CMake text a CUDA `cuda` compiler reads: branches of `if(CMAKE_CUDA_COMPILER_VERSION …)`
    chains that are false at `cuda` are blanked; branches on anything else are all kept."""
    return read_branches(text, lambda condition: _condition_at(condition, cuda), keep_conditions=False)


_INTERSECT = re.compile(r"cuda_archs_loose_intersection\s*\(\s*\w+\s+\"([^\"]*)\"", re.IGNORECASE)
_LIST_VALUES = re.compile(r"\b(?:set|list\s*\(\s*APPEND)\s*\(?\s*(\w+)\s+([^)]*)\)", re.IGNORECASE)
_ARCH = re.compile(r"\d+\.\d+[af]?")
_SUPPORTED = re.compile(r"set\s*\(\s*CUDA_SUPPORTED_ARCHS\s+\"([^\"]*)\"", re.IGNORECASE)


def requested_archs(text: str) -> tuple[str, ...]:
    """Every architecture the file hands `cuda_archs_loose_intersection`, variables followed."""
    values: dict[str, list[str]] = {}
    for name, args in _LIST_VALUES.findall(text):
        for item in args.replace('"', " ").replace(";", " ").split():
            if _ARCH.fullmatch(item):
                values.setdefault(name, []).append(item)
    archs: list[str] = []
    for arg in _INTERSECT.findall(text):
        ref = re.fullmatch(r"\$\{(\w+)\}", arg)
        archs += values.get(ref[1], []) if ref else [a for a in arg.split(";") if a]
    return tuple(dict.fromkeys(archs))


def cmake_target(source_cmake: str, arch: str, cuda: Version) -> str:
    """What a `TORCH_CUDA_ARCH_LIST` entry becomes in vLLM's `CUDA_ARCHS`: kept when the CUDA
    branch's `CUDA_SUPPORTED_ARCHS` lists it (12.1a under CUDA 13 in 0.19.x), else the
    family's base (12.0, which 12.1a meets in 0.13–0.18 and again from 0.20: docs/recipes.md)."""
    found = _SUPPORTED.search(text_for_cuda(source_cmake, cuda))
    supported = found[1].split(";") if found else []
    base = arch.rstrip("af")
    if base in supported:
        return arch
    family = [s for s in supported if s.split(".")[0] == base.split(".")[0] and Version(s) <= Version(base)]
    return max(family, key=Version) if family else base


def build_for(requested: tuple[str, ...], target: str) -> str | None:
    """The arch a project compiles for `target` (a `CUDA_ARCHS` entry), as vLLM's
    `cuda_archs_loose_intersection` picks it: the exact base, then the target's suffix, then a
    family (`f`) entry of the same major; None when nothing matches."""
    base = target.rstrip("af")
    for arch in requested:
        if arch.rstrip("af") == base:
            return arch
    for arch in requested:
        if arch.endswith("f") and arch.split(".")[0] == base.split(".")[0]:
            return target
    return None


def target_use(project: ExternalProject, files: Mapping[str, str], target: str, gpu_arch: str) -> str:
    """Whether the target GPU gets kernels from the project: 'runs (12.0f)', 'cannot run
    (12.0a)', 'not built (…)', or 'no arch gate' (headers, Python, or its own CMake decides)."""
    # CMakeLists.txt's own intersections are vLLM's kernels, not the project's (CUTLASS is headers).
    own = project.defined_in.startswith("cmake/external_projects/")
    requested = requested_archs(files.get(project.defined_in, "")) if own else ()
    if not requested:
        return "no arch gate"
    built = build_for(requested, target)
    if built is None:
        return f"not built (asks {';'.join(requested)})"
    gpu = gpu_arch.rstrip("af")
    runs = (
        built == gpu_arch
        or (built.endswith("f") and built.split(".")[0] == gpu.split(".")[0])
        or (
            not built.endswith(("a", "f"))
            and built.split(".")[0] == gpu.split(".")[0]
            and Version(built) <= Version(gpu)
        )
    )
    return f"runs ({built})" if runs else f"cannot run ({built})"


@dataclass(frozen=True)
class ProjectFacts:
    name: str
    repository: str | None
    revision: str | None
    src_dir_env: str | None
    defined_in: str
    target_use: str


@dataclass(frozen=True)
class SourceFacts:
    """What a build of this tree needs, each fact read where the tree keeps it."""

    version: str | None
    use_existing_torch: str | None
    build_requirements: tuple[str, ...]
    torch: TorchPin | None
    cxx_standard: str | None
    requires_python: str | None
    cutlass_revision: str | None
    arch: str  # the target, e.g. 12.1a
    cmake_arch: str  # what the target becomes in CUDA_ARCHS under CUDA 13
    projects: tuple[ProjectFacts, ...]
    gcc_minimum: str | None = None  # the oldest GCC the configure accepts (its FATAL_ERROR)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_facts(source: Path, version: Version | None = None, *, arch: str = "12.1a", cuda: str = "13.0") -> SourceFacts:
    """Every recipe fact of a vLLM tree, for a target arch under CUDA `cuda`."""
    version = version or read_version(source)
    files = cmake_files(source)
    target = cmake_target(files.get("CMakeLists.txt", ""), arch, Version(cuda))
    cuda_files = {rel: text_for_cuda(text, Version(cuda)) for rel, text in files.items()}
    projects = parse_external_projects(files)
    script = next((rel for rel in USE_EXISTING_TORCH_PLACES if (source / rel).is_file()), None)
    cutlass = next((p.revision for p in projects if p.name == "cutlass"), None)
    return SourceFacts(
        version=str(version) if version else None,
        use_existing_torch=script,
        build_requirements=read_build_requirements(source),
        torch=read_torch_pin(source),
        cxx_standard=read_cxx_standard(source),
        gcc_minimum=read_gcc_minimum(source),
        requires_python=read_requires_python(source),
        cutlass_revision=cutlass,
        arch=arch,
        cmake_arch=target,
        projects=tuple(
            ProjectFacts(
                p.name, p.repository, p.revision, p.src_dir_env, p.defined_in, target_use(p, cuda_files, target, arch)
            )
            for p in projects
        ),
    )
