"""Patch series scoped by release range: `patches/<dist>/series` lists the patches in order, and
each patch declares, in its header, the releases it applies to and why that range:

    Releases: >=0.13.0,<0.14.0
    Releases-why: written against 0.13's qutlass.cmake; 0.14.0 rewrote the lines it edits

A patch stops applying where upstream made the same change (the range ends there) or where the
lines it edits moved (a patch for the new text takes over). A series is applied idempotently
with real `git apply`: a patch that reverse-applies cleanly is already in the tree and is
skipped; one that neither applies nor reverse-applies has drifted, and the error names it and
its range.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from spark_build.errors import StepFailed

_HEADER = re.compile(r"^(Releases|Releases-why):\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ScopedPatch:
    path: Path
    releases: SpecifierSet
    why: str
    declared: str  # the range as the header writes it (SpecifierSet reorders its clauses)

    @property
    def name(self) -> str:
        return self.path.name

    def covers(self, version: Version) -> bool:
        return self.releases.contains(version, prereleases=True)

    def label(self) -> str:
        """`0001-….patch (releases >=0.13.0,<0.14.0)` for messages and the plan."""
        return f"{self.name} (releases {self.declared})"


@dataclass(frozen=True)
class PatchSeries:
    """The patches of a series that apply to one version, in order, and those that do not."""

    folder: Path
    patches: tuple[ScopedPatch, ...]
    skipped: tuple[ScopedPatch, ...] = ()


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
    return ScopedPatch(path, releases, fields["Releases-why"], fields["Releases"])


def read_series(folder: Path) -> tuple[ScopedPatch, ...]:
    """Every patch the series file lists, in order."""
    series = folder / "series"
    names = [line.strip() for line in series.read_text().splitlines() if line.strip() and not line.startswith("#")]
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
    return PatchSeries(folder, applies, tuple(p for p in scoped if p not in applies))


def patches_digest(patches_root: Path) -> str:
    """A fingerprint of every patch we ship: editing any patch reruns the patch step onward."""
    digest = hashlib.sha256()
    if patches_root.is_dir():
        for path in sorted(p for p in patches_root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(patches_root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
