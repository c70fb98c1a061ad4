"""A release's own CMakeLists.txt, configured for some extension targets only.

A full configure of vLLM needs every external project its CMake includes (0.26.0: DeepGEMM,
FlashMLA, tml-fa4, MSA's fmha_sm100, flash-attention, Triton, qutlass), and offline some of
them cannot be had. Completing a wheel builds one or two targets, so the `include()` lines of
external-project files that define none of them are left out of the configure: every other
line — the arch logic (`cuda_archs_loose_intersection`), `VLLM_GPU_FLAGS`, the targets in
CMakeLists.txt itself — stays the release's, so the kept targets get the compile commands a
full configure gives them (`tests/integration/test_archplan.py` compares them on vLLM 0.13.0's `_C`).

Only whole files are dropped, never lines inside one; a file that hands a project's own CMake
to the build (`FetchContent_MakeAvailable`, `add_subdirectory`) is kept whenever an asked
target is named nowhere we can read, because that project may define it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.errors import StepFailed
from spark_build.upstream.versions import ExternalProject

_INCLUDE = re.compile(
    r"^(?P<indent>[ \t]*)include\(\s*(?:\$\{CMAKE_CURRENT_LIST_DIR\}/)?"
    r"(?P<file>cmake/external_projects/[\w.-]+\.cmake)\s*\)[ \t]*$",
    re.MULTILINE,
)
_HANDS_OVER = re.compile(r"\b(?:FetchContent_MakeAvailable|add_subdirectory)\s*\(")
_MARK = "# spark-build: left out of a configure for"


@dataclass(frozen=True)
class TargetedCmake:
    """Which external-project files a configure for `targets` keeps, and the CMakeLists.txt text."""

    targets: tuple[str, ...]
    kept: tuple[str, ...]  # cmake/external_projects/qutlass.cmake
    dropped: tuple[str, ...]
    text: str  # CMakeLists.txt with the dropped include() lines commented out
    unseen: tuple[str, ...] = ()  # asked targets no file we can read names (a kept project may define them)

    def describe(self) -> str:
        left = ", ".join(Path(f).stem for f in self.dropped) or "nothing"
        kept = ", ".join(Path(f).stem for f in self.kept) or "none"
        scope = ", ".join(self.targets) or "CMakeLists.txt's own targets"
        return f"configure for {scope}: external projects kept: {kept}; left out: {left}"

    def projects(self, projects: Iterable[ExternalProject]) -> tuple[ExternalProject, ...]:
        """The external projects this configure fetches: CMakeLists.txt's own (CUTLASS) and the kept files'."""
        wanted = {"CMakeLists.txt", *self.kept}
        return tuple(p for p in projects if p.defined_in in wanted)


def _code(text: str) -> str:
    """CMake text without comments and without sentences in quotes (`message`, `COMMENT`): a
    target named only in prose keeps no file, while a quoted name (`"_C"`) still counts."""
    return re.sub(r'"[^"\n]*\s[^"\n]*"', '""', re.sub(r"#[^\n]*", "", text))


def _names(text: str, target: str) -> bool:
    return re.search(rf"(?<![\w./-]){re.escape(target)}(?![\w.-])", text) is not None


def plan_targeted(cmakelists: str, files: Mapping[str, str], targets: Sequence[str]) -> TargetedCmake:
    """Pure: `files` maps each `cmake/external_projects/*.cmake` path to its text."""
    code = {path: _code(text) for path, text in files.items()}
    main = _code(cmakelists)
    included = [m["file"] for m in _INCLUDE.finditer(cmakelists)]
    seen = {t for t in targets if _names(main, t) or any(_names(code.get(f, ""), t) for f in included)}
    unseen = [t for t in targets if t not in seen]
    kept = []
    for path in included:
        text = code.get(path, "")
        if any(_names(text, t) for t in targets) or (unseen and _HANDS_OVER.search(text)):
            kept.append(path)
    dropped = [f for f in included if f not in kept]
    label = ", ".join(targets) or "CMakeLists.txt's own targets"

    def comment(match: re.Match[str]) -> str:
        if match["file"] in kept:
            return match[0]
        return f"{match['indent']}{_MARK} {label}: include({match['file']})"

    text = _INCLUDE.sub(comment, cmakelists)
    return TargetedCmake(tuple(targets), tuple(kept), tuple(dropped), text, tuple(unseen))


def target_cmake(source: Path, targets: Sequence[str]) -> TargetedCmake:
    """Rewrite `source`'s CMakeLists.txt (a copy the completion owns) for `targets`; idempotent:
    a tree already rewritten for the same targets is left as it is."""
    path = source / "CMakeLists.txt"
    original = path.with_name("CMakeLists.txt.release")
    if not original.is_file():
        original.write_bytes(path.read_bytes())
    text = original.read_text(encoding="utf-8")
    files = {
        str(p.relative_to(source)): p.read_text(encoding="utf-8")
        for p in sorted((source / "cmake" / "external_projects").glob("*.cmake"))
    }
    plan = plan_targeted(text, files, targets)
    if plan.unseen and not plan.kept:
        raise StepFailed(
            f"the release's CMake defines no target {', '.join(plan.unseen)}",
            step="complete",
            hint="the wheel's extensions are not this release's: check the wheel and the source are one release",
        )
    if path.read_text(encoding="utf-8") != plan.text:
        path.write_text(plan.text, encoding="utf-8")
    return plan
