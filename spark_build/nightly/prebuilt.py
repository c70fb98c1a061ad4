"""Prebuilt first (`invoke build-vllm --prefer-wheel`): vLLM's official wheel for the ref when it
exists, downloads whole with its published sha256, proves itself here and fits the user's torch;
the source build otherwise, saying why.

An official release wheel takes minutes where the source build takes 40; but it was built for a
list of GPUs chosen upstream and against the torch that release pins, so it is taken only after
the same proof a built wheel gets (`wheel.proof`: linkage, GPU code for the target, imports) and
never in exchange for the user's torch: a wheel that needs another torch than `--torch existing`
or `--torch-packages` names is refused, not installed over it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from spark_build.compile.extension_targets import TargetsBuilt
from spark_build.compile.governed import timing_detail
from spark_build.durable import atomic_copy, sha256_of
from spark_build.errors import HostProblem, Interrupted, SparkBuildError, StepFailed, UsageError
from spark_build.layout import LATEST, SUMMARY
from spark_build.nightly.completion import (
    BuildTargets,
    ChangeScope,
    Choice,
    CompletionDecision,
    Missing,
    Scope,
    TargetSources,
    before_configure,
    completed_wheel,
    decide,
    missing_in,
    scope_of,
)
from spark_build.nightly.fetch import mirror_wheel, sidecar_path, wheel_in_wheelhouse, write_sidecar
from spark_build.nightly.native import (
    Outlook,
    asked_for_target,
    jit_families,
    not_native_after,
    outlook,
    rebuilt_in,
)
from spark_build.nightly.official import (
    GITHUB_RELEASES,
    PACKAGE_INDEX,
    OfficialWheel,
    Place,
    Wanted,
    check_lookup_urls,
    find_in_folder,
    find_official,
    release_version,
)
from spark_build.nightly.transport import RETRY_POLICY, RetryPolicy, Say
from spark_build.pipeline.progress import StepOutcome, new_run_id, point_latest, summary_payload, write_summary
from spark_build.upstream.patches import ScopedPatch
from spark_build.wheel.audit import first_and_more
from spark_build.wheel.proof import Proof, render_proof, wheel_requirements
from spark_build.wheel.repatch import Change, Run, changed_files, patch_wheel
from spark_build.wheel.wheelhouse import install_line, publish

DOWNLOADS = ".official"  # under the wheelhouse: a dot folder, so no index lists an unproven wheel


@dataclass(frozen=True)
class PreferWheel:
    """What `--prefer-wheel` needs to know, resolved from the build's options."""

    ref: str
    arch: str  # the target as summary.json names it ("?" when read from the GPU later)
    cuda_major: int
    wheelhouse: Path
    logs_dir: Path  # the decision's run folder goes here, whether the wheel was taken or not
    torch_index: str  # the index the validation took torch from; the install line pins it
    torch_asked: tuple[str, ...]  # --torch-packages; empty with --torch existing
    torch_existing: Version | None  # the torch --python has, with --torch existing
    python: str = sys.executable  # the interpreter the proof's venv was made from, for the install line
    install_venv: Path | None = None  # the venv the install line makes; None: into `python` (--torch existing)
    index: str = PACKAGE_INDEX
    releases: str = GITHUB_RELEASES
    machine: str = platform.machine()
    changes: tuple[Change, ...] = ()
    wheels: Path | None = None  # --wheels: the official wheel is looked up there, never online
    offline: bool = False  # offline without --wheels: not looked up at all
    retry: RetryPolicy = RETRY_POLICY
    arch_list: str = ""  # TORCH_CUDA_ARCH_LIST a completion builds for (12.1a); empty: no completion
    no_compiler: str | None = None  # why no nvcc here can complete the wheel for arch_list; None: one can
    accept_missing: bool = False  # --accept-missing: take the wheel without what the target cannot run
    run_id: str = ""  # the run folder the decision goes into (a completion's logs are there first); "": a new one
    native: bool = False  # --native: also rebuild the targets the target GPU runs only by PTX JIT
    patches: tuple[ScopedPatch, ...] = ()  # the series' patches that compile families as 12.x (`Native:`)


# A host problem stops the run: a wheel that could not be judged is neither taken nor refused, and
# a 40-minute source build would not cure an unreachable index (it needs that index too).
HOST_HINT = (
    "a failure of this host, its tools or its network, not a verdict on the official wheel: fix it and run the "
    "same command again (nothing was built)"
)


def torch_conflict(wheel_requires: Sequence[str], asked: Sequence[str], existing: Version | None) -> str | None:
    """Why the wheel's torch is not the user's (None when it is): the wheel pins the torch it
    was built against, and taking the wheel would change the user's torch to that one."""
    pins = [r for r in _requirements(wheel_requires) if canonicalize_name(r.name) == "torch"]
    if not pins or not pins[0].specifier:
        return None
    needs = pins[0].specifier
    if existing is not None:
        if needs.contains(existing, prereleases=True):
            return None
        return f"it needs torch{needs}; your torch is {existing} (--torch existing), which spark-build does not change"
    exact = [Version(s.version) for s in needs if s.operator in ("==", "===") and "*" not in s.version]
    for wish in (r for r in _requirements(asked) if canonicalize_name(r.name) == "torch"):
        if exact and wish.specifier and not wish.specifier.contains(exact[0], prereleases=True):
            return f"it needs torch{needs}; --torch-packages asks for {wish}"
    return None


def _requirements(lines: Sequence[str]) -> list[Requirement]:
    found = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(requirement)
    return found


def wanted_for(options: PreferWheel) -> Wanted:
    """The release to look for; a ref that is not a release tag, or an index or release API that
    is not an http(s) URL, is bad input for `--prefer-wheel`."""
    check_lookup_urls(options.index, options.releases)
    version = release_version(options.ref)
    if version is None:
        raise UsageError(
            f"--prefer-wheel needs a release tag and {options.ref!r} is not one (vLLM publishes wheels of releases)",
            hint="give --ref v0.13.0 (or another release), or drop --prefer-wheel to build this ref from source",
        )
    return Wanted(version, options.cuda_major, options.machine)


@dataclass(frozen=True)
class Decision:
    """What `--prefer-wheel` decided and why, as summary.json keeps it for `invoke report` and
    `history`: in the run that took the official wheel, in the source build that replaced it, and
    in the run a host problem stopped before any verdict."""

    taken: bool
    why: str  # why it was not taken; for a taken wheel, what proved it
    found: str | None = None  # the official wheel's file name, when one was found
    found_in: str | None = None  # the place it was found in (package index, release assets, wheel folder)
    published: str | None = None  # the wheel published into the wheelhouse
    sha256: str | None = None
    install: str | None = None
    stopped_by: str | None = None  # the host problem that left the wheel unjudged (no source build ran)
    completion: dict[str, Any] | None = None  # what the completion decided (`nightly.completion`), when asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefer_wheel(
    options: PreferWheel,
    wanted: Wanted,
    *,
    prove: Callable[[Path], Proof],
    build: Callable[[Decision], int],
    say: Say,
    run: Run,
    complete: BuildTargets | None = None,
    target_sources: TargetSources | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Publish the official wheel when it proves itself, else build from source; the exit code.
    `wanted` is `wanted_for(options)`, checked before the workdir is touched; `run` runs the
    `git apply` that carries Python-only changes onto the wheel; `build` is the source build,
    given the decision for its summary; `complete` builds extension targets of the release for
    `options.arch_list` (a wheel that lacks only those is completed, not refused); `target_sources`
    configures the release's source with the changes applied and says which files each target
    compiles (a change to compiled code rebuilds only the targets it touches).

    Only a verdict on the wheel (not found, gone, another torch, a sha256 that does not match, the
    proof's findings) sends the user to the source build. A `HostProblem` — the index unreachable,
    a tool that cannot start, a probe that crashed — stops the run with exit 1 and its own name.
    Every ending leaves a run folder whose summary.json holds the decision."""
    started = clock()
    files = [(c.label, changed_files(c.diff)) for c in options.changes]
    native = any(not c.python_only for c in options.changes)
    setup = None if target_sources else "nothing was set up to configure the release's source"
    early = before_configure(files, arch=options.arch_list, no_compiler=_no_compiler(options, complete) or setup)
    if early is not None:  # CMake, setup.py, a header, or no compiler: no wheel is downloaded for it
        return _from_source(options, Decision(taken=False, why=early.why, completion=early.to_dict()), build, say)
    found: OfficialWheel | None = None
    try:
        looked = _lookup(options, wanted, say)
        if isinstance(looked, str):
            return _from_source(options, Decision(taken=False, why=looked), build, say)
        found = looked
        say(f"prebuilt: found {found.filename} in the {found.place.value} ({found.url})")
        scopes = _scopes(files, target_sources if native else None, say)
        if isinstance(scopes, CompletionDecision):
            decision = Decision(False, scopes.why, found.filename, found.place.value, completion=scopes.to_dict())
            return _from_source(options, decision, build, say)
        taken = _take(found, wanted, options, prove, say, run, complete, clock, scopes)
    except HostProblem as err:
        _stopped(options, err, found, clock() - started)
        raise
    if isinstance(taken, _Refused):
        decision = Decision(False, taken.why, found.filename, found.place.value, completion=taken.completion)
        return _from_source(options, decision, build, say)
    wheel, proof, validate_seconds, completion, built = taken
    for line in render_proof(proof.results):
        say(line)
    target, sha = publish(wheel, options.wheelhouse)
    say(f"prebuilt: published {target.name} (sha256 {sha[:12]}…) into {options.wheelhouse}")
    torch = _torch_in(proof)
    pins = [f"torch=={torch}"] if torch and options.torch_existing is None else []
    line = install_line(
        target,
        options.wheelhouse,
        python=options.python,
        venv=options.install_venv,
        index=options.torch_index,
        pins=pins,
    )
    say(f"install with: {line}")
    proven = f"validated here{f' with torch {torch}' if torch else ''}"
    if completion is not None and completion.choice is Choice.COMPLETE:
        labels = [c.label for c in completion.changes if c.scope is Scope.EXTENSIONS]
        with_changes = f" with {', '.join(labels)}" if labels else ""
        what = f"{', '.join(completion.targets)} built for {options.arch_list}{with_changes}"
        proven = f"completed here ({what}), {proven}"
    elif completion is not None and completion.choice is Choice.TAKE_INCOMPLETE:
        proven = f"{completion.why}; will not run: {'; '.join(completion.will_not_run)}"
    if completion is not None and completion.left_on_jit:
        proven += f"; {len(completion.left_on_jit)} left on PTX JIT"
    done = completion.to_dict() if completion is not None else None
    decision = Decision(True, proven, found.filename, found.place.value, str(target), sha, line, completion=done)
    write_taken_run(
        options.logs_dir,
        options.ref,
        options.arch,
        decision,
        proof,
        seconds=clock() - started,
        validate_seconds=validate_seconds,
        completed=built.result if built is not None else None,
        run_id=options.run_id,
    )
    return 0


def _from_source(options: PreferWheel, decision: Decision, build: Callable[[Decision], int], say: Say) -> int:
    """The source build in place of a refused wheel. When it fails, its error also names why the
    wheel was refused — the user reads the last message, and it must not be an nvcc error alone —
    and a build that stopped before its own run folder (preflight, bad input) still leaves one."""
    say(f"prebuilt: {decision.why}")
    say(f"prebuilt: building {options.ref} from source instead")
    before = _latest_summary(options.logs_dir)
    try:
        return build(decision)
    except SparkBuildError as err:
        err.details.append(f"--prefer-wheel did not take the official wheel: {decision.why}")
        err.details.append("the source build that replaced it stopped as above")
        after = _latest_summary(options.logs_dir)
        if after is None or after == before:
            outcomes = [
                StepOutcome("prefer-wheel", "done", 0.0, "the official wheel was not taken", detail=decision.why),
                StepOutcome("source build", "failed", 0.0, "it stopped before its first step", err.exit_code),
            ]
            _write_run(options, decision, outcomes, {}, err)
        raise


def _latest_summary(logs_dir: Path) -> Path | None:
    """The newest run's summary.json (`logs/latest`), None when it has none (yet)."""
    summary = (logs_dir / LATEST).resolve() / SUMMARY
    return summary if summary.is_file() else None


def _stopped(options: PreferWheel, err: HostProblem, found: OfficialWheel | None, seconds: float) -> None:
    """A host problem ends the run before any verdict: kept in a run folder for `report` and
    `history`, and said as such in the error the user reads last."""
    err.step = err.step or "prefer-wheel"
    err.hint = HOST_HINT
    why = f"no verdict on the official wheel: {err.message}"
    decision = Decision(
        taken=False,
        why=why,
        found=found.filename if found else None,
        found_in=found.place.value if found else None,
        stopped_by=err.message,
    )
    outcome = StepOutcome("prefer-wheel", "failed", round(seconds, 3), "a host problem", err.exit_code, err.message)
    _write_run(options, decision, [outcome], {}, err)


def _lookup(options: PreferWheel, wanted: Wanted, say: Say) -> OfficialWheel | str:
    """The official wheel found, or why there is none (a str); a host that cannot be asked is a
    `HostProblem`, not "no wheel"."""
    if options.wheels is not None:
        found = find_in_folder(wanted, options.wheels)
    elif options.offline:
        return "offline without --wheels, the official wheel is not looked up (--wheels DIR: it and its NAME.sha256)"
    else:
        try:
            found = find_official(
                wanted, index=options.index, releases=options.releases, policy=options.retry, on_retry=say
            )
        except HostProblem as err:  # the index or GitHub unreachable after the retries, or a 5xx
            raise HostProblem(f"cannot look up the official wheel: {err.message}") from err
    if isinstance(found, str):
        return f"no official wheel for {options.ref}: {found}"
    return found


def _no_compiler(options: PreferWheel, complete: BuildTargets | None) -> str | None:
    """Why no extension target can be built here for `options.arch_list`; None when one can."""
    if options.no_compiler:
        return options.no_compiler
    if complete is None:
        return "no compiler was set up to complete it"
    return None if options.arch_list else "no --arch was given to build for"


def _scopes(
    files: Sequence[tuple[str, Sequence[str]]], target_sources: TargetSources | None, say: Say
) -> tuple[ChangeScope, ...] | CompletionDecision:
    """Where each change lands, from the compile commands of the release's own configure (run
    only for a change to compiled code); the source build's decision when one reaches every
    target, or when the changed source does not even configure."""
    sources: Mapping[str, Sequence[str]] = {}
    if target_sources is not None:
        try:
            sources = target_sources()
        except StepFailed as err:
            where = f" (log: {err.log})" if err.log else ""
            return CompletionDecision(
                Choice.SOURCE, f"the release's source with the changes could not be configured: {err.message}{where}"
            )
    scopes = tuple(scope_of(label, changed, sources) for label, changed in files)
    for scope in scopes:
        say(f"prebuilt: {scope.says()}")
    if any(s.scope is Scope.EVERYTHING for s in scopes):
        return decide({}, scopes, arch="", no_compiler=None, accept_missing=False)
    return scopes


@dataclass(frozen=True)
class _Refused:
    why: str
    completion: dict[str, Any] | None = None  # why a completion did not save it, when one was weighed


def _take(
    found: OfficialWheel,
    wanted: Wanted,
    options: PreferWheel,
    prove: Callable[[Path], Proof],
    say: Say,
    run: Run,
    complete: BuildTargets | None,
    clock: Callable[[], float],
    scopes: Sequence[ChangeScope],
) -> tuple[Path, Proof, float, CompletionDecision | None, TargetsBuilt | None] | _Refused:
    """The found wheel downloaded, fitting the user's torch, carrying the changes' Python files,
    completed where it lacks code for the target, a change touches a target's sources or
    `--native` rebuilds what runs by PTX JIT (with the compile's record), and proven (with the
    seconds its proofs took, the completion's compile not counted); or why not."""
    try:
        wheel = _download(found, options.wheelhouse / DOWNLOADS, options.retry, say)
    except HostProblem as err:
        raise HostProblem(f"cannot download {found.filename}: {err.message}") from err
    except SparkBuildError as err:  # gone (404/410), or not the bytes its host published
        return _Refused(f"{found.filename} not taken: {err.message}")
    if options.changes:
        label = ".".join(c.version_label for c in options.changes)
        try:
            wheel = patch_wheel(
                wheel, [(c.label, c.diff) for c in options.changes], label, wheel.parent / "patched", run
            )
        except StepFailed as err:
            return _Refused(f"{found.filename} not taken: {err.message}")
        say(f"prebuilt: {', '.join(_carried(c) for c in options.changes)} carried onto it: {wheel.name}")
    began = clock()
    proof = proven(wheel, options, prove)
    if isinstance(proof, str):
        return _Refused(f"{found.filename} {proof}")
    changed = any(s.scope is Scope.EXTENSIONS for s in scopes)
    jit = _jit_outlook(proof, wanted.version, options)
    if not proof.problems and not changed and not jit:
        return wheel, proof, clock() - began, None, None
    compiled = [s.label for s in scopes if s.scope is Scope.EXTENSIONS]
    refused = (
        f"{found.filename} failed validation: {first_and_more(proof.problems)}"
        if proof.problems
        else f"{found.filename} lacks the compiled code of {', '.join(compiled)}"
    )
    missing = missing_in(proof.results, proof.problems) if proof.problems else ()
    if missing is None or not options.arch_list:
        return _Refused(refused)
    why_used = {m.target: m.why_used for m in missing}
    completion = decide(
        why_used,
        scopes,
        arch=options.arch_list,
        no_compiler=_no_compiler(options, complete),
        accept_missing=options.accept_missing,
        jit=jit,
        native=options.native,
    )
    for line in completion.left_on_jit:
        say(f"prebuilt: left on PTX JIT: {line}")
    if completion.choice is Choice.TAKE:
        return wheel, proof, clock() - began, completion, None
    say(f"prebuilt: {completion.choice.value}: {completion.why}")
    if completion.choice is Choice.TAKE_INCOMPLETE:
        return wheel, proof, clock() - began, completion, None
    if completion.choice is not Choice.COMPLETE or complete is None:
        return _Refused(f"{refused}; {completion.why}", completion.to_dict())
    rebuilt = rebuilt_in(jit, completion.native)
    wanted_built = [*missing, *(Missing(o.jit.target, o.jit.extension, o.jit.bill()) for o in rebuilt)]
    only_native = not proof.problems and not changed  # the official wheel runs as it is, by JIT
    try:
        completed, built = completed_wheel(
            wheel, wanted_built, completion.targets, options.arch_list, wheel.parent / "completed", complete
        )
    except StepFailed as err:  # the source or a compile of the targets: the full build is what is left
        where = f" (log: {err.log})" if err.log else ""
        if only_native:
            failed = _native_failed(completion, rebuilt, f"{err.message}{where}", say)
            return wheel, proof, clock() - began, failed, None
        return _Refused(f"{refused}; completing it failed: {err.message}{where}", completion.to_dict())
    say(f"prebuilt: completed {completed.name}; validating it as any wheel")
    again = judge(completed, options, prove)
    if isinstance(again, str):
        if only_native:
            return (
                wheel,
                proof,
                clock() - began,
                _native_failed(completion, rebuilt, f"{completed.name} {again}", say),
                None,
            )
        return _Refused(f"{completed.name} (completed here) {again}", completion.to_dict())
    checked = _checked_native(completion, rebuilt, again, options.arch_list, say)
    return completed, again, clock() - began - float(built.result.get("seconds", 0.0)), checked, built


def _carried(change: Change) -> str:
    """What of a change the official wheel's files take: all of it, its Python files, or only
    its label (a change to compiled code alone: its targets are built, not patched)."""
    if change.python_only:
        return f"{change.label} (Python only)"
    python = any(f.endswith(".py") for f in changed_files(change.diff))
    return f"{change.label} ({'its Python files' if python else 'its label only'}; its compiled code is built)"


def _native_failed(
    completion: CompletionDecision, rebuilt: Sequence[Outlook], why: str, say: Say
) -> CompletionDecision:
    """A `--native` rebuild of an official wheel that proved itself failed: the official wheel is
    taken as it is (it runs those families by PTX JIT, as without --native), saying why."""
    say(f"prebuilt: --native could not rebuild {', '.join(completion.native)}: {why}; taking the official wheel")
    return dataclasses.replace(
        completion,
        choice=Choice.TAKE,
        why=f"--native could not rebuild {', '.join(completion.native)}: {why}",
        targets=(),
        native=(),
        left_on_jit=(*completion.left_on_jit, *(f"{o.line()}; --native could not rebuild it" for o in rebuilt)),
    )


def _jit_outlook(proof: Proof, version: Version, options: PreferWheel) -> tuple[Outlook, ...]:
    """The families the target runs only by PTX JIT in the official wheel, each with whether a
    rebuild here would make it native; none without a target to complete for."""
    families = jit_families(proof.results)
    if not options.arch_list or not families:
        return ()
    return outlook(
        families,
        version=version,
        arch=options.arch_list,
        patches=options.patches,
        official_native=asked_for_target(proof.results),
    )


def _checked_native(
    completion: CompletionDecision, rebuilt: Sequence[Outlook], proof: Proof, arch: str, say: Say
) -> CompletionDecision:
    """What `--native` promised, checked against the completed wheel's own arch table and JIT
    bill: a rebuilt target still on PTX JIT is named (the wheel runs, as the official one did),
    and only the targets that turned native stay native in the decision."""
    if not rebuilt:
        return completion
    still = not_native_after(rebuilt, proof.results)
    for target, found in sorted(still.items()):
        say(f"prebuilt: --native did not make {target} native: {found}")
    native = tuple(t for t in completion.native if t not in still)
    if native:
        say(f"prebuilt: --native: {', '.join(native)} native on {arch} (the completed wheel's arch table)")
    return dataclasses.replace(
        completion,
        native=native,
        left_on_jit=(*completion.left_on_jit, *(f"{t} after the rebuild: {f}" for t, f in sorted(still.items()))),
    )


def judge(wheel: Path, options: PreferWheel, prove: Callable[[Path], Proof]) -> Proof | str:
    """The proof of a downloaded official wheel, or why it is refused (a str): another torch than
    the user's, or the proof's findings. What `--prefer-wheel` takes and what the nightly mirrors
    are judged by this one function. A proof that could not finish is no verdict: `HostProblem`."""
    proof = proven(wheel, options, prove)
    if isinstance(proof, str):
        return proof
    if proof.problems:
        return f"failed validation: {first_and_more(proof.problems)}"
    return proof


def proven(wheel: Path, options: PreferWheel, prove: Callable[[Path], Proof]) -> Proof | str:
    """The proof, findings and all (a completion reads which extensions failed), or why the wheel
    is not even tried (a str: another torch than the user's)."""
    conflict = torch_conflict(wheel_requirements(wheel), options.torch_asked, options.torch_existing)
    if conflict:
        return f"not taken: {conflict}"
    try:
        proof = prove(wheel)
    except (HostProblem, Interrupted):
        raise
    except SparkBuildError as err:  # a tool that failed (an install, a probe): the wheel was not judged
        raise HostProblem(f"validating {wheel.name} could not finish: {cause_of(err)}", log=err.log) from err
    return proof


def cause_of(err: SparkBuildError) -> str:
    """What went wrong, not which command: the diagnosis or the log's decisive line when the
    error carries one (`insight.diagnose.explain` puts them into `details`), else its message."""
    for detail in err.details:
        for prefix in ("cause: ", "log says: "):
            if detail.startswith(prefix):
                return detail.removeprefix(prefix)
    return err.message


def _download(found: OfficialWheel, folder: Path, retry: RetryPolicy, say: Say) -> Path:
    """Whole and checked against the published sha256, or not at all (`mirror_wheel`); a copy
    already there with that hash is reused, so a rerun does not fetch 300 MB again."""
    if wheel_in_wheelhouse(folder, found.filename, found.sha256):
        say(f"prebuilt: {found.filename} already downloaded, sha256 matches")
        return folder / found.filename
    if found.place is Place.FOLDER:  # copied, so that patching it never writes into the user's --wheels
        source = Path(found.url)
        actual = sha256_of(source)
        if actual != found.sha256:
            raise SparkBuildError(
                f"sha256 mismatch for {source}: {sidecar_path(source).name} says {found.sha256}, the file has {actual}",
                hint="copy the wheel again, or fix its .sha256",
            )
        atomic_copy(source, folder / found.filename)
        write_sidecar(folder / found.filename, actual)
        return folder / found.filename
    return mirror_wheel(found.url, folder, found.sha256, policy=retry, on_retry=say)


def _torch_in(proof: Proof) -> str | None:
    """The torch the wheel was validated with, read from the validation venv's own record."""
    for dist in proof.results.get("installed", []):
        name, _, version = str(dist).partition("-")
        if canonicalize_name(name) == "torch":
            return version
    return None


def write_taken_run(
    logs_dir: Path,
    ref: str,
    arch: str,
    decision: Decision,
    proof: Proof,
    *,
    seconds: float,
    validate_seconds: float,
    completed: dict[str, Any] | None = None,
    run_id: str = "",
) -> Path:
    """A run folder for a taken official wheel, as a build leaves one (summary.json, `logs/latest`):
    no source build ran, yet `invoke report` and `history` must show what was published and why.
    A completion is a step of its own in the timing table, with its objects, jobs and cache, as
    the compile step's row has them (`completed`: its record)."""
    compiled = float(completed.get("seconds", 0.0)) if completed else 0.0
    outcomes = [
        StepOutcome(
            "prefer-wheel", "done", round(seconds - validate_seconds - compiled, 3), f"the official {decision.found}"
        ),
        *(
            [StepOutcome("complete", "done", compiled, "the extensions it lacks", detail=timing_detail(completed))]
            if completed
            else []
        ),
        StepOutcome("validate", "done", round(validate_seconds, 3), "the official wheel, in a fresh venv"),
        StepOutcome("publish", "done", 0.0, "by the prefer-wheel step"),
    ]
    results = {"validate": dict(proof.results), "publish": {"path": decision.published, "install": decision.install}}
    if completed:
        results["complete"] = completed
    return write_decision_run(logs_dir, ref, arch, decision, outcomes, results, None, run_id=run_id)


def _write_run(
    options: PreferWheel,
    decision: Decision,
    outcomes: Sequence[StepOutcome],
    results: dict[str, dict[str, Any]],
    error: SparkBuildError,
) -> None:
    path = write_decision_run(
        options.logs_dir, options.ref, options.arch, decision, outcomes, results, error, run_id=options.run_id
    )
    error.details.append(f"summary: {path}")


def write_decision_run(
    logs_dir: Path,
    ref: str,
    arch: str,
    decision: Decision,
    outcomes: Sequence[StepOutcome],
    results: dict[str, dict[str, Any]],
    error: SparkBuildError | None,
    *,
    run_id: str = "",
) -> Path:
    """A run folder of `--prefer-wheel`'s own (summary.json, `logs/latest` pointing at it): for the
    wheel taken, and for the runs that ended before a source build wrote one."""
    run_id = run_id or new_run_id(time.time(), os.getpid())
    folder = logs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    summary = summary_payload(
        run_id=run_id,
        exit_code=error.exit_code if error else 0,
        ref=ref,
        arch=arch,
        outcomes=list(outcomes),
        results=results,
        error=error.message if error else None,
        prebuilt=decision.to_dict(),
    )
    path = write_summary(folder, summary)
    point_latest(logs_dir, folder)
    return path
