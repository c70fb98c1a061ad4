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

import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from spark_build.durable import atomic_copy, sha256_of
from spark_build.errors import SparkBuildError, StepFailed, UsageError
from spark_build.nightly.fetch import mirror_wheel, sidecar_path, wheel_in_wheelhouse, write_sidecar
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
from spark_build.nightly.transport import Say
from spark_build.pipeline.progress import StepOutcome, new_run_id, point_latest, summary_payload, write_summary
from spark_build.wheel.audit import first_and_more
from spark_build.wheel.proof import Proof, render_proof, wheel_requirements
from spark_build.wheel.repatch import Change, Run, patch_wheel
from spark_build.wheel.wheelhouse import install_line, publish

DOWNLOADS = ".official"  # under the wheelhouse: a dot folder, so no index lists an unproven wheel


@dataclass(frozen=True)
class PreferWheel:
    """What `--prefer-wheel` needs to know, resolved from the build's options."""

    ref: str
    cuda_major: int
    wheelhouse: Path
    torch_index: str  # the index the validation took torch from; the install line pins it
    torch_asked: tuple[str, ...]  # --torch-packages; empty with --torch existing
    torch_existing: Version | None  # the torch --python has, with --torch existing
    index: str = PACKAGE_INDEX
    releases: str = GITHUB_RELEASES
    machine: str = platform.machine()
    changes: tuple[Change, ...] = ()
    wheels: Path | None = None  # --wheels: the official wheel is looked up there, never online
    offline: bool = False  # offline without --wheels: not looked up at all


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
    `history`: in the run that took the official wheel, and in the source build that replaced it."""

    taken: bool
    why: str  # why it was not taken; for a taken wheel, what proved it
    found: str | None = None  # the official wheel's file name, when one was found
    found_in: str | None = None  # the place it was found in (package index, release assets, wheel folder)
    published: str | None = None  # the wheel published into the wheelhouse
    sha256: str | None = None
    install: str | None = None

    def to_dict(self) -> dict[str, str | bool | None]:
        return asdict(self)


def prefer_wheel(
    options: PreferWheel,
    wanted: Wanted,
    *,
    prove: Callable[[Path], Proof],
    build: Callable[[Decision], int],
    say: Say,
    run: Run,
    record: Callable[[Decision], None] = lambda decision: None,
) -> int:
    """Publish the official wheel when it proves itself, else build from source; the exit code.
    `wanted` is `wanted_for(options)`, checked before the workdir is touched; `run` runs the
    `git apply` that carries Python-only changes onto the wheel. `build` is given the decision
    for its summary; `record` is given it for a taken wheel, for which no build runs."""
    native = [c.label for c in options.changes if not c.python_only]
    if native:
        why = f"{', '.join(native)} changes native code, which a prebuilt wheel cannot take"
        say(f"prebuilt: {why}")
        say(f"prebuilt: building {options.ref} from source instead")
        return build(Decision(taken=False, why=why))
    found, taken = _official(options, wanted, prove, say, run)
    if isinstance(taken, str):
        say(f"prebuilt: {taken}")
        say(f"prebuilt: building {options.ref} from source instead")
        where = found.place.value if found else None
        return build(Decision(taken=False, why=taken, found=found.filename if found else None, found_in=where))
    assert found is not None
    wheel, proof = taken
    for line in render_proof(proof.results):
        say(line)
    target, sha = publish(wheel, options.wheelhouse)
    say(f"prebuilt: published {target.name} (sha256 {sha[:12]}…) into {options.wheelhouse}")
    torch = _torch_in(proof)
    pins = [f"torch=={torch}"] if torch else []
    line = install_line(target, options.wheelhouse, index=options.torch_index, pins=pins)
    say(f"install with: {line}")
    proven = f"validated here{f' with torch {torch}' if torch else ''}"
    record(Decision(True, proven, found.filename, found.place.value, str(target), sha, line))
    return 0


def _official(
    options: PreferWheel, wanted: Wanted, prove: Callable[[Path], Proof], say: Say, run: Run
) -> tuple[OfficialWheel | None, tuple[Path, Proof] | str]:
    """The official wheel found (None when none was), and the proven wheel or why there is none to take (a str)."""
    if options.wheels is not None:
        found = find_in_folder(wanted, options.wheels)
    elif options.offline:
        return (
            None,
            "offline without --wheels, the official wheel is not looked up (--wheels DIR: it and its NAME.sha256)",
        )
    else:
        try:
            found = find_official(wanted, index=options.index, releases=options.releases, on_retry=say)
        except UsageError:
            raise
        except SparkBuildError as err:  # the index or GitHub unreachable after the retries
            return None, f"cannot look up the official wheel: {err.message}"
    if isinstance(found, str):
        return None, f"no official wheel for {options.ref}: {found}"
    say(f"prebuilt: found {found.filename} in the {found.place.value} ({found.url})")
    return found, _take(found, options, prove, say, run)


def _take(
    found: OfficialWheel, options: PreferWheel, prove: Callable[[Path], Proof], say: Say, run: Run
) -> tuple[Path, Proof] | str:
    """The found wheel downloaded, fitting the user's torch, carrying the changes and proven; or why not."""
    try:
        wheel = _download(found, options.wheelhouse / DOWNLOADS, say)
    except SparkBuildError as err:
        return f"{found.filename} not taken: {err.message}"
    conflict = torch_conflict(wheel_requirements(wheel), options.torch_asked, options.torch_existing)
    if conflict:
        return f"{found.filename} not taken: {conflict}"
    if options.changes:
        label = ".".join(c.version_label for c in options.changes)
        try:
            wheel = patch_wheel(
                wheel, [(c.label, c.diff) for c in options.changes], label, wheel.parent / "patched", run
            )
        except StepFailed as err:
            return f"{found.filename} not taken: {err.message}"
        say(f"prebuilt: {', '.join(c.label for c in options.changes)} (Python only) carried onto it: {wheel.name}")
    try:
        proof = prove(wheel)
    except StepFailed as err:  # it did not even install (a requirement nowhere to be had): not taken
        return f"{found.filename} failed validation: {err.message}"
    if proof.problems:
        return f"{found.filename} failed validation: {first_and_more(proof.problems)}"
    return wheel, proof


def _download(found: OfficialWheel, folder: Path, say: Say) -> Path:
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
    return mirror_wheel(found.url, folder, found.sha256, on_retry=say)


def _torch_in(proof: Proof) -> str | None:
    """The torch the wheel was validated with, read from the validation venv's own record."""
    for dist in proof.results.get("installed", []):
        name, _, version = str(dist).partition("-")
        if canonicalize_name(name) == "torch":
            return version
    return None


def write_taken_run(
    logs_dir: Path, ref: str, arch: str, decision: Decision, proof: Proof, *, seconds: float, validate_seconds: float
) -> Path:
    """A run folder for a taken official wheel, as a build leaves one (summary.json, `logs/latest`):
    no build ran, yet `invoke report` and `history` must show what was published and why."""
    run_id = new_run_id(time.time(), os.getpid())
    folder = logs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = [
        StepOutcome("prefer-wheel", "done", round(seconds - validate_seconds, 3), f"the official {decision.found}"),
        StepOutcome("validate", "done", round(validate_seconds, 3), "the official wheel, in a fresh venv"),
        StepOutcome("publish", "done", 0.0, "by the prefer-wheel step"),
    ]
    results = {"validate": dict(proof.results), "publish": {"path": decision.published, "install": decision.install}}
    summary = summary_payload(
        run_id=run_id,
        exit_code=0,
        ref=ref,
        arch=arch,
        outcomes=outcomes,
        results=results,
        error=None,
        prebuilt=decision.to_dict(),
    )
    path = write_summary(folder, summary)
    point_latest(logs_dir, folder)
    return path
