"""What spark-build knows about each vLLM release range, as data — and what it reads from the tree.

vLLM's build interface moves between releases. Each fact here was read from the released
source distributions on the package index (sdist layouts checked: 0.13.0, 0.14.0, 0.16.0,
0.19.0, 0.19.1, 0.20.0, 0.21.0, 0.22.0, 0.26.0, 0.33.0):

- build requirements: `requirements/build.txt` up to 0.19.x; from 0.20.0 a folder with one file
  per device (`requirements/build/cuda.txt`, `cpu.txt`, `rocm.txt`, `tpu.txt`…), of which a CUDA
  build installs `cuda.txt` only — installing them all would pull a CPU torch pin;
- from 0.22.0 the source carries a Rust crate (`rust/Cargo.toml`, `rust-toolchain.toml`), built
  through setuptools-rust, and `setup.py` reads `VLLM_USE_PRECOMPILED_RUST` and
  `VLLM_REQUIRE_RUST_FRONTEND`;
- the projects CMake fetches at configure time (CUTLASS, vllm-flash-attn, FlashMLA, qutlass,
  Triton's `triton_kernels`; more in later releases) are read from the tree itself by
  `external_projects()`: their repository, pinned `GIT_TAG`, and the `*_SRC_DIR` environment
  variable that points the build at a local copy instead of the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from spark_build.errors import UsageError

# Variables vLLM 0.13.0's setup.py (and vllm/envs.py, which it loads) reads to shape the build.
_SETUP_ENV_0_13 = (
    "VLLM_TARGET_DEVICE",
    "MAX_JOBS",
    "NVCC_THREADS",
    "CMAKE_BUILD_TYPE",
    "VERBOSE",
    "CMAKE_ARGS",
    "FETCHCONTENT_BASE_DIR",
    "VLLM_VERSION_OVERRIDE",
    "VLLM_USE_PRECOMPILED",
    "VLLM_MAIN_CUDA_VERSION",
    "VLLM_DISABLE_SCCACHE",
    "CUDA_HOME",
)


def version_from_tag(describe: str) -> Version | None:
    """`v0.13.0`, `v0.13.0-12-gabc` → 0.13.0; a bare commit → None (no version-scoped patches)."""
    # A dot is required: a bare commit id that starts with digits (`86f8f15…`) is no version.
    match = re.match(r"v?(\d+(?:\.\d+)+(?:rc\d+)?)(?:-|$)", describe.strip())
    if not match:
        return None
    try:
        return Version(match.group(1))
    except InvalidVersion:
        return None


@dataclass(frozen=True)
class VersionRules:
    """The build interface of one range of vLLM releases."""

    releases: SpecifierSet
    build_requirements: tuple[str, ...]
    setup_env: tuple[str, ...]
    needs_rust: bool = False
    # The `*_SRC_DIR` variables verified in this range's CMake files; `external_projects()`
    # cross-checks what it parses against them, so a renamed variable is caught, not ignored.
    src_dir_env: Mapping[str, str] = field(default_factory=dict)

    def covers(self, version: Version) -> bool:
        return self.releases.contains(version, prereleases=True)


_SRC_DIR_ENV_0_13 = {
    "cutlass": "VLLM_CUTLASS_SRC_DIR",
    "vllm-flash-attn": "VLLM_FLASH_ATTN_SRC_DIR",
    "flashmla": "FLASH_MLA_SRC_DIR",
    "qutlass": "QUTLASS_SRC_DIR",
    "triton_kernels": "TRITON_KERNELS_SRC_DIR",
}

RULES: tuple[VersionRules, ...] = (
    VersionRules(
        SpecifierSet(">=0.13.0,<0.20.0"),
        build_requirements=("requirements/build.txt",),
        setup_env=_SETUP_ENV_0_13,
        src_dir_env=_SRC_DIR_ENV_0_13,
    ),
    VersionRules(
        SpecifierSet(">=0.20.0,<0.22.0"),
        build_requirements=("requirements/build/cuda.txt",),
        setup_env=_SETUP_ENV_0_13,
        src_dir_env=_SRC_DIR_ENV_0_13,
    ),
    VersionRules(
        SpecifierSet(">=0.22.0"),
        build_requirements=("requirements/build/cuda.txt",),
        setup_env=(*_SETUP_ENV_0_13, "VLLM_USE_PRECOMPILED_RUST", "VLLM_REQUIRE_RUST_FRONTEND"),
        needs_rust=True,
        src_dir_env=_SRC_DIR_ENV_0_13,
    ),
)


# What `--torch-packages` falls back to when the source pins no torch (the built-in example).
NEWEST_TORCH = ("torch", "torchvision", "torchaudio")


def rules_for(version: Version) -> VersionRules:
    """The rules for a release; an older release than we have checked is refused by name."""
    for rules in RULES:
        if rules.covers(version):
            return rules
    raise UsageError(
        f"vLLM {version} is older than any release spark-build knows (0.13.0 and later)",
        hint="build v0.13.0 or newer: older releases cannot target sm_121 with CUDA 13",
    )


def build_requirement_files(source: Path, version: Version) -> tuple[str, ...]:
    """The requirement files a CUDA build installs, checked to exist in this tree."""
    wanted = rules_for(version).build_requirements
    missing = [rel for rel in wanted if not (source / rel).is_file()]
    if missing:
        raise UsageError(
            f"vLLM {version} should keep its build requirements in {', '.join(missing)}, but the tree has none there",
            hint="the source is not the release it claims to be, or its layout moved; report the version",
        )
    return wanted


# ---------------------------------------------------------------------------------------------
# External projects, read from CMakeLists.txt and cmake/external_projects/*.cmake


@dataclass(frozen=True)
class ExternalProject:
    """One project vLLM's CMake fetches with FetchContent, as its source pins it."""

    name: str  # FetchContent's name: cutlass, vllm-flash-attn, flashmla, qutlass, triton_kernels
    repository: str | None  # None when the file sets it in more than one way
    revision: str | None  # the pinned GIT_TAG; None when the file sets it in more than one way
    src_dir_env: str | None  # the variable that makes CMake use a local copy
    defined_in: str  # the file the pin lives in, relative to the source root
    source_subdir: str = ""  # where, inside the checkout, the local copy's variable must point
    candidates: tuple[str, ...] = ()  # every value an ambiguous GIT_TAG may take
    repository_candidates: tuple[str, ...] = ()  # likewise for GIT_REPOSITORY

    @property
    def pinned(self) -> bool:
        """Whether the tree names one repository and one revision (no CUDA- or ROCm-dependent choice)."""
        return self.repository is not None and self.revision is not None

    @property
    def is_commit(self) -> bool:
        return self.revision is not None and re.fullmatch(r"[0-9a-f]{40}", self.revision) is not None


_COMMENT = re.compile(r"#[^\n]*")
_SET = re.compile(r"\bset\s*\(\s*(\w+)\s+\"?([^\s\")]+)\"?[^)]*\)", re.IGNORECASE)
# Declare is the usual form; later releases also call Populate with the git details inline.
_DECLARE = re.compile(r"\bFetchContent_(?:Declare|Populate)\s*\(", re.IGNORECASE)
_ENV_SRC = re.compile(r"ENV\{(\w+_SRC_DIR)\}")
_KEYWORDS = {"GIT_REPOSITORY", "GIT_TAG", "SOURCE_DIR", "SOURCE_SUBDIR", "BINARY_DIR", "GIT_PROGRESS", "GIT_SHALLOW"}


def _declare_blocks(text: str) -> Iterable[tuple[int, list[str]]]:
    """Each `FetchContent_Declare(...)` call: its offset and its whitespace-split arguments."""
    for match in _DECLARE.finditer(text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        yield match.start(), text[match.end() : end - 1].split()


def _keyword_values(args: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in zip(args, args[1:], strict=False):
        if key in _KEYWORDS and value not in _KEYWORDS:
            values.setdefault(key, value.strip('"'))
    return values


_IF_WORD = re.compile(r"\b(if|elseif|else|endif)\s*\(", re.IGNORECASE)
_ROCM_ONLY = re.compile(r"""STREQUAL\s+"?(rocm|hip)"?""", re.IGNORECASE)


def _cuda_branches(text: str) -> str:
    """The text with every branch that applies only to ROCm (`if (VLLM_TARGET_DEVICE STREQUAL
    "rocm")`, `VLLM_GPU_LANG STREQUAL "HIP"`) blanked out: vLLM 0.33 pins triton_kernels to a
    ROCm fork's commit in one branch and to a Triton tag in the other, and this is a CUDA build."""
    out: list[str] = []
    stack: list[bool] = []  # per open if(): whether its current branch is ROCm-only
    pos = 0
    for match in _IF_WORD.finditer(text):
        word = match.group(1).lower()
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        condition = text[match.end() : end - 1]
        dropping = any(stack)
        out.append("" if dropping else text[pos : match.start()])
        out.append(text[match.start() : end])
        pos = end
        upper = condition.upper()
        rocm_only = bool(_ROCM_ONLY.search(condition)) and "NOT" not in upper and "CUDA" not in upper
        if word == "if":
            stack.append(rocm_only)
        elif word in ("elseif", "else") and stack:
            stack[-1] = word == "elseif" and rocm_only
        elif word == "endif" and stack:
            stack.pop()
    out.append("" if any(stack) else text[pos:])
    return "".join(out)


def parse_external_projects(files: Mapping[str, str]) -> list[ExternalProject]:
    """Pure: the git-fetched projects in CMake files given as {relative path: text}.

    A `${VAR}` in GIT_REPOSITORY or GIT_TAG is resolved from `set(VAR value)` in the same file;
    when the file sets it to several values (a pin that depends on the device, say), the value is
    None and the alternatives are listed, so the caller must decide rather than guess.
    The `*_SRC_DIR` variable is the nearest `ENV{…_SRC_DIR}` before the declaration.
    """
    found: list[ExternalProject] = []
    for rel, raw in sorted(files.items()):
        text = _cuda_branches(_COMMENT.sub("", raw))
        sets: dict[str, list[str]] = {}
        for name, value in _SET.findall(text):
            if value not in sets.setdefault(name, []):
                sets[name].append(value)

        def resolve(value: str, sets: dict[str, list[str]] = sets) -> tuple[str, ...]:
            ref = re.fullmatch(r"\$\{(\w+)\}", value)
            return tuple(sets.get(ref[1], [])) if ref else (value,)

        for offset, args in _declare_blocks(text):
            values = _keyword_values(args)
            if "GIT_REPOSITORY" not in values or not args:
                continue  # the local-copy branch (SOURCE_DIR only)
            repos = resolve(values["GIT_REPOSITORY"])
            tags = resolve(values.get("GIT_TAG", ""))
            envs = _ENV_SRC.findall(text[:offset])
            found.append(
                ExternalProject(
                    name=args[0],
                    repository=repos[0] if len(repos) == 1 else None,
                    revision=tags[0] if len(tags) == 1 else None,
                    src_dir_env=envs[-1] if envs else None,
                    defined_in=rel,
                    source_subdir=values.get("SOURCE_SUBDIR", ""),
                    candidates=tags if len(tags) > 1 else (),
                    repository_candidates=repos if len(repos) > 1 else (),
                )
            )
    return found


def cmake_files(source: Path) -> dict[str, str]:
    """The files that declare vLLM's fetched projects, read from a source tree."""
    paths = [source / "CMakeLists.txt", *sorted((source / "cmake" / "external_projects").glob("*.cmake"))]
    return {str(p.relative_to(source)): p.read_text(encoding="utf-8") for p in paths if p.is_file()}


def external_projects(source: Path, version: Version) -> list[ExternalProject]:
    """The projects this tree fetches, checked against what we verified for its release range.

    A project whose local-copy variable differs from the verified one is refused: pointing the
    build at a cache through a variable CMake no longer reads would silently go to the network.
    """
    projects = parse_external_projects(cmake_files(source))
    known = rules_for(version).src_dir_env
    for project in projects:
        expected = known.get(project.name)
        if expected is not None and project.src_dir_env != expected:
            raise UsageError(
                f"{project.defined_in} reads {project.src_dir_env or 'no *_SRC_DIR variable'} for "
                f"{project.name}, not {expected} as vLLM {version} should",
                hint="the source's CMake changed; update spark_build/versions.py for this release",
            )
    return projects
