"""Version-scoped patch series: `patches/<dist>-<major>.<minor>/series` lists patches in order.

A series is applied idempotently with real `git apply`: a patch that reverse-applies cleanly
is already in the tree and is skipped; one that neither applies nor reverse-applies has
drifted from the source, and the error names it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from spark_build.errors import StepFailed


@dataclass(frozen=True)
class PatchSeries:
    folder: Path
    patches: tuple[Path, ...]


def find_series(patches_root: Path, series_name: str | None) -> PatchSeries | None:
    """The series for this source, or None when there is none (a pristine build)."""
    if series_name is None:
        return None
    folder = patches_root / series_name
    series = folder / "series"
    if not series.is_file():
        return None
    names = [line.strip() for line in series.read_text().splitlines() if line.strip() and not line.startswith("#")]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise StepFailed(
            f"{series} lists {', '.join(missing)} but the file is not there",
            hint="restore the patch or remove its line from the series file",
        )
    return PatchSeries(folder, tuple(folder / n for n in names))


def patches_digest(patches_root: Path) -> str:
    """A fingerprint of every patch we ship: editing any patch reruns the patch step onward."""
    digest = hashlib.sha256()
    if patches_root.is_dir():
        for path in sorted(p for p in patches_root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(patches_root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
