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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from spark_build.wheel.repatch import python_only


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


def scope_of(label: str, files: Sequence[str], target_sources: Mapping[str, Sequence[str]]) -> ChangeScope:
    """Where a change lands: `target_sources` maps each extension target to the source files its
    compile commands name (paths relative to the source root). A compiled file no target names
    alone — CMake, setup.py, a header — is taken to reach every target: the configure, not this
    function, knows what includes it, and a wrong "only one target" would ship stale objects."""
    if python_only(files):
        return ChangeScope(label, Scope.PYTHON)
    owners = {source: target for target, sources in target_sources.items() for source in sources}
    native = [f for f in files if not python_only([f])]
    beyond = tuple(f for f in native if f not in owners)
    if beyond:
        return ChangeScope(label, Scope.EVERYTHING, beyond=beyond)
    return ChangeScope(label, Scope.EXTENSIONS, targets=tuple(sorted({owners[f] for f in native})))


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

    def to_dict(self) -> dict[str, object]:
        return {
            "choice": self.choice.value,
            "why": self.why,
            "targets": list(self.targets),
            "will_not_run": list(self.will_not_run),
        }


def decide(
    missing: Mapping[str, str],
    changes: Sequence[ChangeScope],
    *,
    arch: str,
    no_compiler: str | None,
    accept_missing: bool,
) -> CompletionDecision:
    """`missing`: each extension target vLLM dispatches on `arch` that cannot run there (from the
    arch audit of the official wheel) → why it is used there (vLLM's dispatch code). `no_compiler`:
    why no nvcc here can target `arch`, None when one can."""
    everything = [c for c in changes if c.scope is Scope.EVERYTHING]
    if everything:
        first = everything[0]
        return CompletionDecision(
            Choice.SOURCE,
            f"{first.label} changes {', '.join(first.beyond)}, which every extension target depends on",
        )
    changed = {t: c.label for c in changes if c.scope is Scope.EXTENSIONS for t in c.targets}
    targets = tuple(sorted({*missing, *changed}))
    if not targets:
        carried = [c.label for c in changes]
        suffix = f"; {', '.join(carried)} (Python only) carried onto it" if carried else ""
        return CompletionDecision(Choice.TAKE, f"every extension vLLM runs on {arch} has code for it{suffix}")
    reasons = [
        f"{t}: {'cannot run on ' + arch if t in missing else 'changed by ' + changed[t]}"
        + (f", changed by {changed[t]}" if t in missing and t in changed else "")
        for t in targets
    ]
    if no_compiler is None:
        return CompletionDecision(Choice.COMPLETE, f"building only {'; '.join(reasons)}", targets=targets)
    if changed:
        return CompletionDecision(
            Choice.SOURCE,
            f"{', '.join(sorted(set(changed.values())))} changes compiled code and {no_compiler}",
        )
    will_not_run = tuple(f"{t}: {missing[t]}" for t in targets)
    if accept_missing:
        return CompletionDecision(
            Choice.TAKE_INCOMPLETE,
            f"taken without code for {arch} in {', '.join(targets)} (--accept-missing); {no_compiler}",
            will_not_run=will_not_run,
        )
    return CompletionDecision(
        Choice.SOURCE,
        f"{', '.join(targets)} cannot run on {arch} and {no_compiler} to complete the wheel; "
        "--accept-missing takes it without them",
    )
