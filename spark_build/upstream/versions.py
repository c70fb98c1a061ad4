"""The rules that read a vLLM tree's build interface, which moves between releases.

Each rule reads the fact where the tree keeps it, so a release nobody has looked at (or `main`)
is read the same way; `docs/recipes.md` is what they read from every release's sdist:

- build requirements: `requirements/build.txt` up to 0.19.x; from 0.20.0 a folder with one file
  per device (`requirements/build/cuda.txt`, `cpu.txt`, `rocm.txt`, `tpu.txt`…), of which a CUDA
  build installs `cuda.txt` only — installing them all would pull a CPU torch pin;
- the projects CMake fetches at configure time (CUTLASS, vllm-flash-attn, FlashMLA, qutlass,
  Triton's `triton_kernels`; ten in 0.33.0) are read from `CMakeLists.txt` and
  `cmake/external_projects/*.cmake` by `external_projects()`: their repository, pinned `GIT_TAG`
  (through CMake variables), and the `*_SRC_DIR` environment variable that points the build at a
  local copy instead of the network.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from spark_build.errors import UsageError

# Older releases cannot target sm_121 with CUDA 13.
OLDEST_RELEASE = Version("0.13.0")
# The CUDA build's requirement files, in the order the rule looks for them.
BUILD_REQUIREMENT_PLACES = ("requirements/build/cuda.txt", "requirements/build.txt")
# What `--torch-packages` falls back to when the source pins no torch (the built-in example).
NEWEST_TORCH = ("torch", "torchvision", "torchaudio")


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


def check_supported(version: Version) -> None:
    """A release older than spark-build can build is refused by name, before anything runs."""
    if version < OLDEST_RELEASE:
        raise UsageError(
            f"vLLM {version} is older than any release spark-build builds ({OLDEST_RELEASE} and later)",
            hint=f"build v{OLDEST_RELEASE} or newer: older releases cannot target sm_121 with CUDA 13",
        )


def build_requirement_files(source: Path) -> tuple[str, ...]:
    """The one requirement file a CUDA build installs: `requirements/build/cuda.txt` where the
    tree has a file per device (the others pin a CPU or ROCm torch), else `requirements/build.txt`."""
    for rel in BUILD_REQUIREMENT_PLACES:
        if (source / rel).is_file():
            return (rel,)
    raise UsageError(
        f"no build requirements in {source} (looked for {' and '.join(BUILD_REQUIREMENT_PLACES)})",
        hint="the requirement files moved in this tree; report the version you are building",
    )


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


def read_branches(text: str, judge: Callable[[str], bool | None], *, keep_conditions: bool) -> str:
    """CMake text with the branches of `if()`/`elseif()`/`else()` chains that are not read blanked.

    `judge(condition)` is True or False where it can tell, None where it cannot: a branch is read
    unless its condition is False or an earlier branch of its chain was surely taken, so an
    unknown condition keeps its branch and the ones after it. `keep_conditions` leaves the
    `if (…)` lines themselves in the text, for a reader that looks inside conditions."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # per open if(): (this branch is read, an earlier one surely taken)
    pos = 0
    for match in _IF_WORD.finditer(text):
        word = match.group(1).lower()
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        out.append(text[pos : match.start()] if all(read for read, _ in stack) else "")
        if keep_conditions:
            out.append(text[match.start() : end])
        pos = end
        value = judge(text[match.end() : end - 1])
        if word == "if":
            stack.append((value is not False, value is True))
        elif word in ("elseif", "else") and stack:
            taken = stack[-1][1]
            value = True if word == "else" else value
            stack[-1] = (not taken and value is not False, taken or value is True)
        elif word == "endif" and stack:
            stack.pop()
    out.append(text[pos:] if all(read for read, _ in stack) else "")
    return "".join(out)


def _rocm_only(condition: str) -> bool | None:
    """False for a branch that applies only to ROCm (`VLLM_TARGET_DEVICE STREQUAL "rocm"`,
    `VLLM_GPU_LANG STREQUAL "HIP"`): vLLM 0.33 pins triton_kernels to a ROCm fork's commit in one
    branch and to a Triton tag in the other, and this is a CUDA build. None for anything else."""
    upper = condition.upper()
    rocm = bool(_ROCM_ONLY.search(condition)) and "NOT" not in upper and "CUDA" not in upper
    return False if rocm else None


def parse_external_projects(files: Mapping[str, str]) -> list[ExternalProject]:
    """Pure: the git-fetched projects in CMake files given as {relative path: text}.

    A `${VAR}` in GIT_REPOSITORY or GIT_TAG is resolved from `set(VAR value)` in the same file;
    when the file sets it to several values (a pin that depends on the device, say), the value is
    None and the alternatives are listed, so the caller must decide rather than guess.
    The `*_SRC_DIR` variable is the nearest `ENV{…_SRC_DIR}` before the declaration.
    """
    found: list[ExternalProject] = []
    for rel, raw in sorted(files.items()):
        text = read_branches(_COMMENT.sub("", raw), _rocm_only, keep_conditions=True)
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
    """The projects this tree fetches; one without a `*_SRC_DIR` variable is refused by name:
    the build could not point CMake at a local copy, and it would go to the network."""
    check_supported(version)
    projects = parse_external_projects(cmake_files(source))
    blind = [f"{p.name} ({p.defined_in})" for p in projects if p.src_dir_env is None]
    if blind:
        raise UsageError(
            f"vLLM {version} fetches {', '.join(blind)} without a *_SRC_DIR variable to point it at a local copy",
            hint="the source's CMake changed how it reads local copies; report the version",
        )
    return projects
