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
_KEYWORDS = {
    "GIT_REPOSITORY",
    "GIT_TAG",
    "URL",
    "URL_HASH",
    "DOWNLOAD_EXTRACT_TIMESTAMP",
    "SOURCE_DIR",
    "SOURCE_SUBDIR",
    "BINARY_DIR",
    "GIT_PROGRESS",
    "GIT_SHALLOW",
}
# `string(REPLACE <match> <with> <out> <in>)` and `string(REGEX REPLACE …)`: vLLM 0.34 derives
# triton_kernels' archive URL from its git URL this way (cmake/external_projects/triton_kernels.cmake).
_STRING_REPLACE = re.compile(
    r'\bstring\s*\(\s*(REGEX\s+REPLACE|REPLACE)\s+"([^"]*)"\s+"([^"]*)"\s+(\w+)\s+"?([^")\s]+)"?\s*\)',
    re.IGNORECASE,
)
# A GitHub source archive of one revision: codeload.github.com/OWNER/REPO/tar.gz/REV or
# github.com/OWNER/REPO/archive/REV.tar.gz — the same tree as the repository at REV.
_GITHUB_ARCHIVE = re.compile(
    r"https://(?:codeload\.github\.com/([^/]+)/([^/]+)/(?:tar\.gz|zip)/(.+)"
    r"|github\.com/([^/]+)/([^/]+)/archive/(?:refs/tags/)?(.+?)\.(?:tar\.gz|zip))$"
)


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


def rocm_only(condition: str) -> bool | None:
    """False for a branch that applies only to ROCm (`VLLM_TARGET_DEVICE STREQUAL "rocm"`,
    `VLLM_GPU_LANG STREQUAL "HIP"`): vLLM 0.33 pins triton_kernels to a ROCm fork's commit in one
    branch and to a Triton tag in the other, and this is a CUDA build. None for anything else."""
    upper = condition.upper()
    rocm = bool(_ROCM_ONLY.search(condition)) and "NOT" not in upper and "CUDA" not in upper
    return False if rocm else None


_VARIABLE = re.compile(r"\$\{(\w+)\}")
_MOST_CANDIDATES = 8  # a pin with more alternatives than this is read as "depends on the build"


def _expand(value: str, env: Mapping[str, list[str]]) -> list[str]:
    """Every value `value` may take with its `${VAR}`s replaced by what the file sets them to;
    a variable the file does not set is left as written."""
    values = [value]
    for name in dict.fromkeys(_VARIABLE.findall(value)):
        if name in env:
            values = [v.replace(f"${{{name}}}", sub) for v in values for sub in env[name]][:_MOST_CANDIDATES]
    return values


def _variables(text: str) -> dict[str, list[str]]:
    """The values each variable may take, in file order: `set(VAR value)` adds one (both arms of
    an unknown `if` stay), `string([REGEX] REPLACE … OUT IN)` derives OUT from IN."""
    env: dict[str, list[str]] = {}
    commands = [*_SET.finditer(text), *_STRING_REPLACE.finditer(text)]
    for match in sorted(commands, key=lambda m: m.start()):
        if match.re is _SET:
            for value in _expand(match[2], env):
                if value not in env.setdefault(match[1], []):
                    env[match[1]].append(value)
            continue
        kind, pattern, replacement, out, source = match.groups()
        # CMake unescapes the quoted argument first ("\\.git$" is the regex \.git$).
        pattern, replacement = pattern.replace("\\\\", "\\"), replacement.replace("\\\\", "\\")
        regex = kind.upper().startswith("REGEX")
        try:
            env[out] = list(
                dict.fromkeys(
                    re.sub(pattern, replacement, value) if regex else value.replace(pattern, replacement)
                    for value in _expand(source, env)
                )
            )
        except re.error:
            env.pop(out, None)  # a CMake regex Python reads otherwise: the value is unknown, not guessed
    return env


def _resolved(values: list[str]) -> tuple[str, ...]:
    """The values with every variable resolved; one still naming a `${VAR}` is not a pin."""
    return tuple(dict.fromkeys(v for v in values if "${" not in v))


def _archive_pin(url: str) -> tuple[str, str] | None:
    """(repository, revision) of a GitHub source-archive URL; None for any other URL."""
    found = _GITHUB_ARCHIVE.fullmatch(url)
    if found is None:
        return None
    owner, repo, revision = found[1] or found[4], found[2] or found[5], found[3] or found[6]
    return f"https://github.com/{owner}/{repo.removesuffix('.git')}.git", revision


def _pins(values: Mapping[str, str], env: Mapping[str, list[str]]) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(repositories, revisions) a declaration may fetch: from GIT_REPOSITORY/GIT_TAG, or from a
    GitHub archive URL (vLLM 0.34 fetches triton_kernels as codeload's tarball of its tag); None
    for a declaration that fetches nothing (the local-copy branch, SOURCE_DIR only)."""
    if "GIT_REPOSITORY" in values:
        tags = _resolved(_expand(values.get("GIT_TAG", ""), env))
        return _resolved(_expand(values["GIT_REPOSITORY"], env)), tuple(t for t in tags if t)
    if "URL" in values:
        pins = [_archive_pin(url) for url in _resolved(_expand(values["URL"], env))]
        known = [pin for pin in pins if pin is not None]
        if known:
            return tuple(dict.fromkeys(r for r, _ in known)), tuple(dict.fromkeys(t for _, t in known))
    return None


def parse_external_projects(files: Mapping[str, str]) -> list[ExternalProject]:
    """Pure: the projects in CMake files given as {relative path: text} that are fetched from git
    or as a GitHub source archive (the same tree, so the sources step fetches both alike).

    A `${VAR}` in GIT_REPOSITORY, GIT_TAG or URL is resolved from `set()`/`string(REPLACE)` in the
    same file; when the file sets it to several values (a pin that depends on the device, say),
    the value is None and the alternatives are listed, so the caller must decide rather than
    guess. ROCm-only branches are not read: this is a CUDA build. The `*_SRC_DIR` variable is
    the nearest `ENV{…_SRC_DIR}` before the declaration.
    """
    found: list[ExternalProject] = []
    for rel, raw in sorted(files.items()):
        text = read_branches(_COMMENT.sub("", raw), rocm_only, keep_conditions=True)
        env = _variables(text)
        for offset, args in _declare_blocks(text):
            values = _keyword_values(args)
            pins = _pins(values, env) if args else None
            if pins is None:
                continue
            repos, tags = pins
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
