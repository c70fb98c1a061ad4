"""What `--prefer-wheel` does with an official wheel that lacks code for the target GPU: complete
it (build just the missing extension targets here), take it as it is (only when the user asks,
saying what will not run), or build everything from source. A pure decision with its reason,
made before anything is compiled, so `--dry-run`, summary.json and the tests read the same table.

Why a table of its own: vLLM 0.26.0 to 0.33.0 ship `_qutlass_C` for SM100 alone while sending
FP-Quant models to it on every GPU from 10.0 on, so every official wheel "fails" on a DGX Spark
for one extension of eight objects. Rebuilding those objects takes minutes; the full build that
replaced the wheel until now takes twenty-five.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from spark_build.compile.extension_targets import TargetsBuilt
from spark_build.errors import StepFailed
from spark_build.nightly.native import Outlook
from spark_build.wheel.complete import complete_wheel, completion_label
from spark_build.wheel.dispatch import VLLM_DISPATCH, dispatch_of
from spark_build.wheel.repatch import python_only

BuildTargets = Callable[[Sequence[str]], TargetsBuilt]  # extension targets → their stage and compile record
# The release's source configured with the changes applied: each extension target → the files it compiles
TargetSources = Callable[[], Mapping[str, Sequence[str]]]


class Scope(Enum):
    """How far a `--pr`/`--patch` change reaches into the build."""

    PYTHON = "python"  # the package's Python files: carried onto the wheel, nothing compiled
    EXTENSIONS = "extensions"  # the sources of named extension targets: those targets rebuilt
    EVERYTHING = "everything"  # CMake, setup.py, a shared header, the torch pins: every target


@dataclass(frozen=True)
class ChangeScope:
    label: str  # PR #12345, fix.patch
    scope: Scope
    targets: tuple[str, ...] = ()  # with Scope.EXTENSIONS: the targets whose sources it touches
    beyond: tuple[str, ...] = ()  # with Scope.EVERYTHING: the files no single target owns
    compiled_into: tuple[tuple[str, str], ...] = ()  # with Scope.EXTENSIONS: (file, target), per the configure

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "scope": self.scope.value,
            "targets": list(self.targets),
            "beyond": list(self.beyond),
            "compiled_into": {file: target for file, target in self.compiled_into},
        }

    def says(self) -> str:
        """One line for the terminal: where the change lands and how that is known."""
        if self.scope is Scope.PYTHON:
            return f"{self.label} touches the package's Python files only: carried onto the wheel"
        if self.scope is Scope.EVERYTHING:
            return f"{self.label} changes {', '.join(self.beyond)}, which no single extension target owns"
        into = "; ".join(f"{file} is compiled into {target}" for file, target in self.compiled_into)
        return f"{self.label}: {into} (the configure's compile commands)"


# Only a translation unit is listed in compile_commands.json, so only one can be owned by targets.
# Anything else a change compiles — a header, CMake, setup.py, the torch pins — reaches targets
# through includes and the configure, which the compile commands do not show.
TRANSLATION_UNITS = (".cu", ".cpp", ".cc", ".cxx", ".c")
# Files no build step reads (vLLM's docs, its CI definitions, Markdown): a kernel PR often carries
# them, and a changed sentence must not send it to the full build.
_UNBUILT = re.compile(r"^(docs/|\.github/|\.buildkite/)|\.(md|rst)$")


def _built(files: Sequence[str]) -> list[str]:
    return [f for f in files if not _UNBUILT.search(f)]


def scope_before_configure(label: str, files: Sequence[str]) -> ChangeScope | None:
    """The scope a change has whatever the configure says (Python only, or a file no target can
    own alone), None when only the release's compile commands can tell: the configure is skipped
    for a change the full build must take anyway."""
    built = _built(files)
    if not built or python_only(built):
        return ChangeScope(label, Scope.PYTHON)
    shared = tuple(f for f in built if not python_only([f]) and not f.endswith(TRANSLATION_UNITS))
    return ChangeScope(label, Scope.EVERYTHING, beyond=shared) if shared else None


def scope_of(label: str, files: Sequence[str], target_sources: Mapping[str, Sequence[str]]) -> ChangeScope:
    """Where a change lands: `target_sources` maps each extension target to the source files its
    compile commands name (paths relative to the source root; `arch.target_sources`). A compiled
    file no target names alone — CMake, setup.py, a header, a source the configure does not
    compile — is taken to reach every target: the configure, not this function, knows what
    includes it, and a wrong "only one target" would ship stale objects."""
    early = scope_before_configure(label, files)
    if early is not None:
        return early
    owners: dict[str, set[str]] = {}
    for target, sources in target_sources.items():
        for source in sources:
            owners.setdefault(source, set()).add(target)
    native = [f for f in _built(files) if not python_only([f])]
    beyond = tuple(f for f in native if f not in owners)
    if beyond:
        return ChangeScope(label, Scope.EVERYTHING, beyond=beyond)
    into = tuple((f, target) for f in native for target in sorted(owners[f]))
    return ChangeScope(label, Scope.EXTENSIONS, targets=tuple(sorted({t for _, t in into})), compiled_into=into)


class Choice(Enum):
    TAKE = "take"  # the wheel as it is: everything the target runs is there (Python changes carried)
    COMPLETE = "complete"  # the wheel with `targets` built here and swapped in
    TAKE_INCOMPLETE = "take incomplete"  # the wheel as it is, by the user's leave; `will_not_run` says what fails
    SOURCE = "source build"  # everything from source


@dataclass(frozen=True)
class CompletionDecision:
    choice: Choice
    why: str
    targets: tuple[str, ...] = ()  # COMPLETE: the extension targets to build
    will_not_run: tuple[str, ...] = ()  # TAKE_INCOMPLETE: the extensions the target cannot run, and where
    changes: tuple[ChangeScope, ...] = ()  # the --pr/--patch changes weighed, each with where it lands
    left_on_jit: tuple[str, ...] = ()  # families the target keeps running by PTX JIT: their bill, and why
    native: tuple[str, ...] = ()  # --native: the targets rebuilt to run natively instead of by PTX JIT

    def to_dict(self) -> dict[str, object]:
        found: dict[str, object] = {
            "choice": self.choice.value,
            "why": self.why,
            "targets": list(self.targets),
            "will_not_run": list(self.will_not_run),
            "left_on_jit": list(self.left_on_jit),
            "native": list(self.native),
        }
        if self.changes:
            found["changes"] = [c.to_dict() for c in self.changes]
        return found


def decide(
    missing: Mapping[str, str],
    changes: Sequence[ChangeScope],
    *,
    arch: str,
    no_compiler: str | None,
    accept_missing: bool,
    jit: Sequence[Outlook] = (),
    native: bool = False,
) -> CompletionDecision:
    """`missing`: each extension target vLLM dispatches on `arch` that cannot run there (from the
    arch audit of the official wheel) → why it is used there (vLLM's dispatch code). `no_compiler`:
    why no nvcc here can target `arch`, None when one can. `jit`: the families the target runs
    only by PTX JIT (`nightly.native.outlook`); with `native` (`--native`) the targets of those a
    rebuild makes native are built too, and every other one is named as left on JIT, with its bill."""
    weighed = tuple(changes)
    everything = [c for c in changes if c.scope is Scope.EVERYTHING]
    if everything:
        first = everything[0]
        return CompletionDecision(
            Choice.SOURCE,
            f"{first.label} changes {', '.join(first.beyond)}, which every extension target depends on",
            changes=weighed,
        )
    by_jit, left_on_jit = _jit_targets(jit, arch=arch, native=native, no_compiler=no_compiler)
    changed: dict[str, list[str]] = {}  # target → each change that touches its sources, with the files
    for change in (c for c in changes if c.scope is Scope.EXTENSIONS):
        for target in change.targets:
            files = [file for file, owner in change.compiled_into if owner == target]
            where = f" ({', '.join(files)})" if files else ""
            changed.setdefault(target, []).append(f"{change.label}{where}")
    targets = tuple(sorted({*missing, *changed, *by_jit}))
    if not targets:
        carried = [c.label for c in changes]
        suffix = f"; {', '.join(carried)} (Python only) carried onto it" if carried else ""
        why = f"every extension vLLM runs on {arch} has code for it{suffix}"
        return CompletionDecision(Choice.TAKE, why, changes=weighed, left_on_jit=left_on_jit)

    def reason(target: str) -> str:
        parts = [f"cannot run on {arch}"] if target in missing else []
        parts += [f"changed by {by}" for by in changed.get(target, [])]
        parts += by_jit.get(target, [])
        return f"{target}: {', '.join(parts)}"

    reasons = [reason(t) for t in targets]
    if no_compiler is None:
        return CompletionDecision(
            Choice.COMPLETE,
            f"building only {'; '.join(reasons)}",
            targets=targets,
            changes=weighed,
            left_on_jit=left_on_jit,
            native=tuple(sorted(by_jit)),
        )
    if changed:
        labels = sorted({c.label for c in changes if c.scope is Scope.EXTENSIONS})
        return CompletionDecision(Choice.SOURCE, changes_need_compiler(labels, no_compiler), changes=weighed)
    will_not_run = tuple(f"{t}: {missing[t]}" for t in targets)
    if accept_missing:
        return CompletionDecision(
            Choice.TAKE_INCOMPLETE,
            f"taken without code for {arch} in {', '.join(targets)} (--accept-missing); {no_compiler}",
            will_not_run=will_not_run,
            changes=weighed,
            left_on_jit=left_on_jit,
        )
    return CompletionDecision(
        Choice.SOURCE,
        f"{', '.join(targets)} cannot run on {arch} and {no_compiler} to complete the wheel; "
        "--accept-missing takes it without them",
        changes=weighed,
    )


def _jit_targets(
    jit: Sequence[Outlook], *, arch: str, native: bool, no_compiler: str | None
) -> tuple[dict[str, list[str]], tuple[str, ...]]:
    """The targets `--native` rebuilds (each with its families' bills), and a line for every JIT
    family left as it is: why a rebuild would not make it native, or that `--native` would."""
    built: dict[str, list[str]] = {}
    left = []
    for seen in jit:
        if not seen.rebuild:
            left.append(seen.line())
        elif not native:
            left.append(f"{seen.line()}; --native builds it for {arch}")
        elif no_compiler is not None:
            left.append(f"{seen.line()}; --native cannot build it: {no_compiler}")
        else:
            built.setdefault(seen.jit.target, []).append(f"{seen.jit.family} {seen.jit.bill()}")
    return built, tuple(left)


def changes_need_compiler(labels: Sequence[str], no_compiler: str) -> str:
    """Why a change to compiled code sends the user to the source build here."""
    return f"{', '.join(labels)} changes compiled code and {no_compiler}"


def before_configure(
    changes: Sequence[tuple[str, Sequence[str]]], *, arch: str, no_compiler: str | None
) -> CompletionDecision | None:
    """The source build, decided before anything is downloaded or configured, for changes (label,
    files) that reach every target or that no compiler here can build; None when the release's
    configure must say which targets they touch (or when they are Python only)."""
    scopes = [scope_before_configure(label, files) for label, files in changes]
    shared = [s for s in scopes if s is not None and s.scope is Scope.EVERYTHING]
    if shared:
        return decide({}, shared, arch=arch, no_compiler=no_compiler, accept_missing=False)
    native = [label for (label, _), s in zip(changes, scopes, strict=True) if s is None]
    if native and no_compiler is not None:
        return CompletionDecision(Choice.SOURCE, changes_need_compiler(native, no_compiler))
    return None


@dataclass(frozen=True)
class Missing:
    """An extension of the official wheel that the target GPU is sent to and cannot run."""

    target: str  # the CMake target, `_qutlass_C`
    path: str  # its file in the wheel, `vllm/_qutlass_C.abi3.so`
    why_used: str  # vLLM's dispatch that sends the target there, from `wheel.dispatch`


def missing_in(results: Mapping[str, Any], problems: Sequence[str]) -> tuple[Missing, ...] | None:
    """What a completion would have to build, read from the proof's arch audit; None when a
    problem is not GPU code (a failed import, a CUDA 12 library): building kernels cannot cure it."""
    if not problems or not all(p.startswith("GPU code for ") for p in problems):
        return None
    found: dict[str, Missing] = {}
    for report in results.get("arch", []):
        for family in report["families"]:
            if family.get("used", True) and family["verdict"] == "cannot run":
                path = family["extension"]
                row = dispatch_of(path, VLLM_DISPATCH)
                why = f"vLLM runs it on {row.describe()} ({row.where})" if row else "no dispatch row: used on every GPU"
                target = Path(path).name.split(".", 1)[0]
                found[target] = Missing(target, path, why)
    return tuple(found[t] for t in sorted(found)) or None


def completed_wheel(
    wheel: Path, missing: Sequence[Missing], targets: Sequence[str], arch_list: str, out_dir: Path, build: BuildTargets
) -> tuple[Path, TargetsBuilt]:
    """Build `targets` and swap them into `wheel`: the completed wheel (version `+sm121a`), and
    the compile's record for the run's summary. A target a change touched but the wheel does not
    lack is found by its file in the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.namelist()
    known = {m.target: m.path for m in missing}
    paths = {t: known.get(t) or extension_path(shipped, t, wheel.name) for t in targets}
    done = build(targets)
    built = {paths[t]: done.stage / paths[t] for t in targets}
    return complete_wheel(wheel, built, completion_label(arch_list.replace(";", " ").split()), out_dir), done


def extension_path(names: Sequence[str], target: str, wheel: str) -> str:
    """The file of extension target `target` among a wheel's `names` (`vllm/_moe_C.abi3.so`)."""
    found = [n for n in names if n.endswith(".so") and n.rsplit("/", 1)[-1].split(".", 1)[0] == target]
    if len(found) != 1:
        raise StepFailed(
            f"{wheel} ships {'no' if not found else 'more than one'} extension file of target {target}",
            step="prefer-wheel",
            hint="build from source without --prefer-wheel",
        )
    return found[0]
