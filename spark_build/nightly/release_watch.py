"""The release watch: the vLLM releases on the package index newer than the patch series was
tested on, each read the day it appears as a build would meet it.

vLLM releases every few weeks and each moves its build interface a little (0.34.0 fetched
triton_kernels as an archive, kept the GCC 13 gate, moved nothing the FA3 gate edits). A user
finding that out with a 40-minute build is what this prevents: for every newer release it reads
the recipe from the sdist (`upstream.facts`), tries each patch of the series on the sdist's own
files (`git apply --check`: covered, applied beyond its tested range, or skipped and what that
costs) and audits the GPU code of vLLM's official wheel for the configured arch with the
validate step's own audit (`wheel.archaudit.arch_audit`, static: no install, so a wheel whose
requirements the index lacks still gets its table).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from spark_build.arch.compat import ComputeCapability, Verdict
from spark_build.nightly.fetch import mirror_file, mirror_wheel, wheel_in_wheelhouse
from spark_build.nightly.official import OfficialWheel, Wanted, expected_wheel, index_files, pick
from spark_build.upstream.facts import SourceFacts, read_facts
from spark_build.upstream.patches import ScopedPatch, applies_cleanly, read_series
from spark_build.upstream.sdist import unpack_recipe_files
from spark_build.wheel.archaudit import ArchReport, arch_audit
from spark_build.wheel.dispatch import VLLM_DISPATCH

Say = Callable[[str], None]


def series_tested_below(series: Sequence[ScopedPatch]) -> Version | None:
    """The first release newer than the series was tested on: the highest `<X` bound among the
    ranges that end only where testing ended (0006's `<0.34.0`); None when no range is open."""
    bounds = [Version(s.version) for p in series if not p.final for s in p.releases if s.operator == "<"]
    return max(bounds, default=None)


def sdist_releases(files: Sequence[OfficialWheel], project: str = "vllm") -> dict[Version, OfficialWheel]:
    """Final releases on the index that have a source distribution (`vllm-0.34.0.tar.gz`)."""
    found: dict[Version, OfficialWheel] = {}
    for entry in files:
        stem = entry.filename.removesuffix(".tar.gz")
        if stem == entry.filename or not stem.startswith(f"{project}-"):
            continue
        try:
            version = Version(stem.removeprefix(f"{project}-"))
        except InvalidVersion:
            continue
        if not (version.is_prerelease or version.is_devrelease or version.local):
            found[version] = entry
    return found


@dataclass(frozen=True)
class PatchOutlook:
    name: str
    outcome: str  # "covers 0.33.0", "applied beyond its tested range (…) — applies cleanly", "… skipped; without it: …"


def patch_outlook(tree: Path, series: Sequence[ScopedPatch], version: Version) -> tuple[PatchOutlook, ...]:
    """What the patch step would do with each patch of the series on this release's files."""
    out = []
    for patch in series:
        if patch.covers(version):
            out.append(PatchOutlook(patch.name, f"covers {version}"))
        elif patch.beyond(version):
            clean = applies_cleanly(tree, patch)
            if clean is False:
                cost = "required: the build stops" if patch.required else f"without it: {patch.without or '?'}"
                note = f"tested up to {patch.tested_up_to()}, does not apply: skipped; {cost}"
            else:
                note = patch.beyond_note() + (" — applies cleanly" if clean else " — if it applies cleanly")
            out.append(PatchOutlook(patch.name, note))
    return tuple(out)


@dataclass(frozen=True)
class WheelOutlook:
    filename: str | None
    summary: str
    report: ArchReport | None = None


def audit_summary(report: ArchReport) -> str:
    """One line of the GPU-code audit: which extensions run natively, by PTX JIT, not at all,
    and which vLLM never dispatches on the target."""
    by_verdict: dict[Verdict, list[str]] = {}
    for family in report.used:
        by_verdict.setdefault(family.verdict, []).append(family.extension.rsplit("/", 1)[-1])
    words = {Verdict.NATIVE: "native SASS", Verdict.JIT: "PTX JIT only", Verdict.CANNOT_RUN: "cannot run"}
    parts = [
        f"{words[v]}: {', '.join(sorted(set(names)))}"
        for v, names in sorted(by_verdict.items(), key=lambda i: -i[0].rank)
    ]
    unused = sorted({f.extension.rsplit("/", 1)[-1] for f in report.unused})
    if unused:
        parts.append(f"never dispatched on {report.target}: {', '.join(unused)}")
    return "; ".join(parts) + (" — OK" if report.ok else f" — FAILS: {'; '.join(report.problems)}")


def wheel_outlook(
    version: Version,
    files: Sequence[OfficialWheel],
    machine: str,
    target: ComputeCapability,
    cache: Path,
    cuobjdump: Path | None,
    say: Say,
) -> WheelOutlook:
    """The official CUDA 13 wheel of the release for this CPU, downloaded once (sha256-checked)
    into `cache` and audited for `target`; `cuobjdump` None skips the audit (`--no-wheel-audit`)."""
    wanted = Wanted(version, 13, machine)
    expected = expected_wheel(wanted)
    if isinstance(expected, str):
        return WheelOutlook(None, expected)
    found = pick(expected, wanted, files)
    if found is None:
        return WheelOutlook(None, f"no {expected.filename} on the index")
    if cuobjdump is None:
        return WheelOutlook(found.filename, "not audited (--no-wheel-audit)")
    if wheel_in_wheelhouse(cache, found.filename, found.sha256):
        wheel = cache / found.filename
    else:
        say(f"release watch: downloading {found.filename} for its GPU-code audit")
        wheel = mirror_wheel(found.url, cache, found.sha256, on_retry=say)
    report = arch_audit(wheel, target, cuobjdump, dispatch=VLLM_DISPATCH)
    return WheelOutlook(found.filename, audit_summary(report), report)


@dataclass(frozen=True)
class NewRelease:
    version: Version
    facts: SourceFacts
    patches: tuple[PatchOutlook, ...]
    wheel: WheelOutlook

    def lines(self) -> list[str]:
        lines = [f"vLLM {self.version}:"]
        for patch in self.patches or (PatchOutlook("patches", "none of the series concerns this release"),):
            lines.append(f"  patch {patch.name}: {patch.outcome}")
        arch = self.facts.arch
        lines.append(f"  official wheel for {arch}: {self.wheel.filename or '-'}: {self.wheel.summary}")
        return lines


@dataclass(frozen=True)
class ReleaseWatch:
    """The answer: the bound the series was tested up to and every newer release on the index."""

    index: str
    tested_below: Version | None
    releases: tuple[NewRelease, ...]

    def headline(self) -> str:
        if self.tested_below is None:
            return "release watch: every patch range of the series ends for good; nothing to watch"
        if not self.releases:
            return (
                f"release watch: no release on {self.index} from {self.tested_below} on (the series is tested below it)"
            )
        names = ", ".join(str(r.version) for r in self.releases)
        count = len(self.releases)
        return f"release watch: {count} release(s) on {self.index} newer than the series was tested on ({names})"


def check_new(
    index: str,
    patches: Path,
    cache: Path,
    *,
    arch: str,
    target: ComputeCapability,
    machine: str,
    cuobjdump: Path | None,
    say: Say,
) -> ReleaseWatch:
    """Every release on `index` at or above the series' tested bound, read from its sdist
    (downloaded once into `cache`, sha256-checked) and its official wheel."""
    series = read_series(patches)
    bound = series_tested_below(series)
    files = index_files(index, on_retry=say)
    releases = sdist_releases(files)
    found: list[NewRelease] = []
    for version in sorted(v for v in releases if bound is not None and v >= bound):
        entry = releases[version]
        name = f"vllm-{version}.tar.gz"
        sdist = cache / name
        if not wheel_in_wheelhouse(cache, name, entry.sha256):
            say(f"release watch: downloading {name}")
            sdist = mirror_file(entry.url, cache, name, entry.sha256, on_retry=say)
        tree = _recipe_tree(sdist, cache / f"vllm-{version}-recipe")
        facts = read_facts(tree, version, arch=arch)
        wheel = wheel_outlook(version, files, machine, target, cache, cuobjdump, say)
        found.append(NewRelease(version, facts, patch_outlook(tree, series, version), wheel))
    return ReleaseWatch(index, bound, tuple(found))


def _recipe_tree(sdist: Path, dest: Path) -> Path:
    """The sdist's recipe files, unpacked once beside it."""
    with tarfile.open(sdist) as tar:
        top = next((m.name.split("/", 1)[0] for m in tar if "/" in m.name), None)
    if top is not None and (dest / top / "CMakeLists.txt").is_file():
        return dest / top
    return unpack_recipe_files(sdist, dest)
