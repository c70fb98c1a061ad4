"""Patch series scoped by release range: `patches/<dist>/series` lists the patches in order, and
each patch declares, in its header, the releases it applies to and why that range:

    Releases: >=0.13.0,<0.14.0
    Releases-why: written against 0.13's qutlass.cmake; 0.14.0 rewrote the lines it edits

A range ends for one of two reasons, and the header says which (`Releases-end:`):

- `final (why)`: upstream made the same change, or the lines it edits moved and a patch for the
  new text takes over — the patch is never tried past its bound;
- `untested` (the default): the bound only says how far it was tested. A newer release is
  *beyond* its range: the patch is applied when `git apply --check` says it applies cleanly and
  reported as "applied beyond its tested range (tested up to 0.33.x)"; when it does not apply it
  is skipped with that note and what its absence costs (`Without:`), and only a patch marked
  `Required: yes` stops the build. A new release is built the day it appears, and the product
  (the arch plan, setup.py's extension list) checks the patch's effect.

A series is applied idempotently with real `git apply`: a patch that reverse-applies cleanly is
already in the tree and is skipped; one inside its range that neither applies nor reverse-applies
has drifted, and the error names it and its range.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import git
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from spark_build.errors import StepFailed

_HEADER = re.compile(r"^(Releases|Releases-why|Releases-end|Without|Required|Native):\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ScopedPatch:
    path: Path
    releases: SpecifierSet
    why: str
    declared: str  # the range as the header writes it (SpecifierSet reorders its clauses)
    final: bool = False  # `Releases-end: final`: never tried past the range
    without: str = ""  # what a build without the patch costs (`Without:`)
    required: bool = False  # `Required: yes`: a build without it is no build
    native: tuple[str, ...] = ()  # `Native: FA2, Marlin`: kernel families it compiles as 12.x SASS (`wheel.jitbill`)

    @property
    def name(self) -> str:
        return self.path.name

    def covers(self, version: Version) -> bool:
        return self.releases.contains(version, prereleases=True)

    def beyond(self, version: Version) -> bool:
        """Whether `version` is newer than the releases this patch was tested on while its lower
        bounds still hold, and its range ends only where testing ended."""
        if self.final or self.covers(version):
            return False
        lower = [s for s in self.releases if s.operator in (">=", ">", "==", "~=")]
        upper = [s for s in self.releases if s.operator in ("<", "<=")]
        return bool(upper) and all(s.contains(version, prereleases=True) for s in lower)

    def tested_up_to(self) -> str:
        """`<0.34.0` → "0.33.x", `<=0.33.0` → "0.33.0": the newest releases the range names."""
        for spec in self.releases:
            if spec.operator == "<=":
                return spec.version
            if spec.operator == "<":
                bound = Version(spec.version)
                if bound.micro == 0 and bound.minor > 0:
                    return f"{bound.major}.{bound.minor - 1}.x"
                return f"releases before {bound}"
        return self.declared

    def beyond_note(self) -> str:
        return f"applied beyond its tested range (tested up to {self.tested_up_to()})"

    def label(self) -> str:
        """`0001-….patch (releases >=0.13.0,<0.14.0)` for messages and the plan."""
        return f"{self.name} (releases {self.declared})"


@dataclass(frozen=True)
class PatchSeries:
    """The patches of a series that apply to one version, in order, and those that do not."""

    folder: Path
    patches: tuple[ScopedPatch, ...]
    skipped: tuple[ScopedPatch, ...] = ()
    beyond: tuple[ScopedPatch, ...] = ()  # tried past their tested range (also in `skipped`)

    def to_try(self) -> tuple[ScopedPatch, ...]:
        """The patches whose range covers the version, then those beyond their range (each
        family's newest patch is the last of the series, so order within the series holds)."""
        return (*self.patches, *self.beyond)


def read_patch(path: Path) -> ScopedPatch:
    """A patch and the range its header declares; a patch without one is refused by name."""
    head = path.read_text(encoding="utf-8").split("\ndiff --git ", 1)[0]
    fields = dict(_HEADER.findall(head))
    try:
        releases = SpecifierSet(fields.get("Releases", ""))
    except InvalidSpecifier:
        releases = SpecifierSet()
    if not str(releases) or "Releases-why" not in fields:
        raise StepFailed(
            f"{path} declares no release range (a 'Releases: >=X,<Y' and a 'Releases-why: …' header line)",
            hint="add both lines above the diff: the releases the patch is written for, and why that range",
        )
    end = fields.get("Releases-end", "untested")
    if not end.startswith(("final", "untested")):
        raise StepFailed(
            f"{path}: 'Releases-end: {end}' is neither 'untested' nor 'final (why)'",
            hint="write 'Releases-end: untested' when the bound only marks how far the patch was tested, "
            "'Releases-end: final (why)' when upstream made the change or a newer patch takes over",
        )
    return ScopedPatch(
        path,
        releases,
        fields["Releases-why"],
        fields["Releases"],
        final=end.startswith("final"),
        without=fields.get("Without", ""),
        required=fields.get("Required", "no").lower() in ("yes", "true"),
        native=tuple(name.strip() for name in fields.get("Native", "").split(",") if name.strip()),
    )


def series_names(folder: Path) -> list[str]:
    """The file names the series file lists, in order (comments and blank lines left out)."""
    lines = (folder / "series").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def read_series(folder: Path) -> tuple[ScopedPatch, ...]:
    """Every patch the series file lists, in order."""
    series = folder / "series"
    names = series_names(folder)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise StepFailed(
            f"{series} lists {', '.join(missing)} but the file is not there",
            hint="restore the patch or remove its line from the series file",
        )
    return tuple(read_patch(folder / n) for n in names)


def find_series(patches_root: Path, dist: str, version: Version | None) -> PatchSeries | None:
    """The patches for this source's version, or None when the dist has no series; a tree
    without a release version (a bare commit) gets none of them."""
    folder = patches_root / dist
    if not (folder / "series").is_file():
        return None
    scoped = read_series(folder)
    applies = tuple(p for p in scoped if version is not None and p.covers(version))
    beyond = tuple(p for p in scoped if version is not None and p.beyond(version))
    return PatchSeries(folder, applies, tuple(p for p in scoped if p not in applies), beyond)


def patches_digest(patches_root: Path) -> str:
    """A fingerprint of what the patch step applies: each dist's series (the patches it lists,
    in order) and those patches' bytes. Editing a patch or its order reruns the patch step
    onward on `--resume`; editing `patches/README`, a comment of a series, or a file no series
    lists does not. A listed patch that is missing counts as such; the patch step names it."""
    digest = hashlib.sha256()
    folders = sorted(p.parent for p in patches_root.glob("*/series") if p.is_file()) if patches_root.is_dir() else []
    for folder in folders:
        digest.update(f"series {folder.name}\n".encode())
        for name in series_names(folder):
            path = folder / name
            digest.update(f"{name} {path.stat().st_size if path.is_file() else 'missing'}\n".encode())
            if path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/", re.MULTILINE)


def touched_files(patch: ScopedPatch) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_DIFF_FILE.findall(patch.path.read_text(encoding="utf-8"))))


def applies_cleanly(tree: Path, patch: ScopedPatch) -> bool | None:
    """`git apply --check` of the patch on a tree that may hold only some files (a plan's recipe
    files); None when a file it edits is not there to ask."""
    if not all((tree / rel).is_file() for rel in touched_files(patch)):
        return None
    try:
        git.Git(str(tree)).apply("--check", str(patch.path))
    except git.GitCommandError:
        return False
    return True


_EXTENSION = re.compile(r"\b(_\w+_C)\b")


def removers(folder: Path, version: Version | None) -> dict[str, ScopedPatch]:
    """Extension target → the patch of the series whose diff names it, the one for `version`
    where there is one (0002 for 0.13.x … 0006 from 0.17.0 name `_vllm_fa3_C`), else the newest."""
    if not (folder / "series").is_file():
        return {}
    found: dict[str, ScopedPatch] = {}
    for patch in read_series(folder):
        diff = patch.path.read_text(encoding="utf-8").split("\ndiff --git ", 1)[-1]
        changed = "\n".join(line for line in diff.splitlines() if line.startswith(("+", "-")))
        for target in _EXTENSION.findall(changed):
            current = found.get(target)
            if current is None or not _for(current, version):
                found[target] = patch
    return found


def _for(patch: ScopedPatch, version: Version | None) -> bool:
    return version is not None and (patch.covers(version) or patch.beyond(version))


GitApply = Callable[..., int]  # (patch, *flags, check=False) → git apply's exit status in the tree


@dataclass(frozen=True)
class SeriesOutcome:
    """What applying a series did: every patch now in the tree, those this run applied, those
    tried past their tested range (applied or skipped, with what the absence costs)."""

    applied: tuple[str, ...]
    new: tuple[str, ...]
    beyond: tuple[dict[str, str], ...]
    notes: tuple[str, ...]


def apply_series(series: PatchSeries, release: str, git_apply: GitApply) -> SeriesOutcome:
    """Apply `series` idempotently (a patch that reverse-applies is already in); one inside its
    range that no longer applies stops with its name and range, one past it is skipped unless
    `Required: yes`. The source build's patch step and the completion's source share this."""
    applied: list[str] = []
    new: list[str] = []
    beyond: list[dict[str, str]] = []
    notes: list[str] = []
    for patch in series.to_try():
        past = patch in series.beyond
        if git_apply(patch.path, "--reverse", "--check") != 0:
            if git_apply(patch.path, "--check") != 0:
                if not past or patch.required:
                    raise StepFailed(
                        f"{patch.name} declares releases {patch.declared}"
                        + (" (required)" if past else "")
                        + f" but no longer applies to {release} (the log names file and hunk)",
                        hint="refresh the patch for this release and narrow its 'Releases:' range, "
                        "or build pristine source with --no-patches",
                    )
                note = f"tested up to {patch.tested_up_to()}, no longer applies: skipped"
                beyond.append({"patch": patch.name, "outcome": note, "without": patch.without})
                notes.append(f"patch: {patch.name} {note} — {patch.without or 'its change is missing'}")
                continue
            git_apply(patch.path, check=True)
            new.append(patch.name)
        applied.append(patch.name)
        if past:
            beyond.append({"patch": patch.name, "outcome": patch.beyond_note(), "without": patch.without})
            notes.append(f"patch: {patch.name} {patch.beyond_note()} on {release}")
    return SeriesOutcome(tuple(applied), tuple(new), tuple(beyond), tuple(notes))
