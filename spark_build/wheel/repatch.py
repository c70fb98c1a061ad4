"""A Python-only change on a prebuilt wheel: a fix that touches no kernel needs no 40-minute compile.

The wheel is unpacked, each change applied to the files it ships (`git apply --include` per
top-level package: a PR's tests and docs are not in the wheel), and the result repacked as a new
version with a local label (`0.15.0+cu130` → `0.15.0+cu130.pr12345`), so pip and the wheelhouse
tell it from the official one: the dist-info folder renamed to match, METADATA's `Version:`
rewritten and RECORD recomputed — pip checks those hashes when it installs the wheel.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from spark_build.errors import StepFailed, UsageError

Run = Callable[[list[str | os.PathLike[str]]], int]

# Python files that still belong to the native build: vLLM's csrc/ and cmake/ helpers, setup.py.
_BUILD_PYTHON = re.compile(r"^(csrc/|cmake/|setup\.py$)")


def python_only(paths: Iterable[str]) -> bool:
    """True when every changed file is a Python file outside the native build (no compile needed)."""
    files = list(paths)
    return bool(files) and all(p.endswith(".py") and not _BUILD_PYTHON.search(p) for p in files)


def changed_files(diff: Path) -> tuple[str, ...]:
    """The files a unified diff changes: `+++ b/path`, or `--- a/path` for a deleted file."""
    found, removed = [], ""
    for line in diff.read_text(errors="replace").splitlines():
        if line.startswith("--- "):
            removed = line[4:].strip().removeprefix("a/")
        elif line.startswith("+++ "):
            added = line[4:].strip()
            found.append(removed if added == "/dev/null" else added.removeprefix("b/"))
    return tuple(found)


@dataclass(frozen=True)
class Change:
    """A `--pr` or `--patch` change to carry onto the official wheel: its diff, and whether it
    touches the package's Python alone (only then can a prebuilt wheel take it)."""

    label: str  # PR #12345, fix.patch
    diff: Path
    python_only: bool
    version_label: str  # pr12345, patch1a2b3c4d: the local version part it adds


def labelled(version: Version, label: str) -> Version:
    """`0.15.0+cu130` with `pr12345` → `0.15.0+cu130.pr12345`; `0.22.0` → `0.22.0+pr12345`."""
    if not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", label):
        raise UsageError(f"local version label {label!r} is not letters and digits", hint="e.g. pr12345")
    return Version(f"{version}.{label}" if version.local else f"{version}+{label}")


def _record_row(root: Path, path: Path) -> list[str]:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path.relative_to(root).as_posix(), f"sha256={digest}", str(len(data))]


def _record_text(rows: Iterable[Sequence[str]]) -> str:
    """RECORD is CSV: vLLM ships files whose names hold commas (`E=128,N=384,….json` MoE configs),
    which must be quoted or pip reads the row as six fields."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def patch_wheel(wheel: Path, changes: Sequence[tuple[str, Path]], label: str, out_dir: Path, run: Run) -> Path:
    """Apply `changes` (name, diff file) to `wheel`'s files; the new wheel, in `out_dir`."""
    name, version, _build, _tags = parse_wheel_filename(wheel.name)
    new_version = labelled(version, label)
    with tempfile.TemporaryDirectory(prefix="spark-repatch-") as scratch, zipfile.ZipFile(wheel) as archive:
        root = Path(scratch)
        archive.extractall(root)  # zipfile drops absolute and '..' components of member names
        for info in archive.infolist():  # extractall drops modes: vLLM's vllm-rs must stay executable
            mode = info.external_attr >> 16 & 0o777
            if mode and not info.is_dir():
                (root / info.filename).chmod(mode)
        (old_info,) = [p for p in root.glob("*.dist-info") if canonicalize_name(p.name.split("-")[0]) == name]
        packages = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith((".dist-info", ".data")))
        includes = [f"--include={package}/*" for package in packages]
        for change, diff in changes:
            if run(["git", "-C", root, "apply", "-p1", *includes, diff.resolve()]) != 0:
                raise StepFailed(
                    f"{change} does not apply to the files of {wheel.name} (the log names file and hunk)",
                    hint="build from source without --prefer-wheel, where the change is applied to the tree",
                )
        new_info = root / f"{old_info.name.split('-')[0]}-{new_version}.dist-info"
        old_info.rename(new_info)
        metadata = new_info / "METADATA"
        text = re.sub(r"(?m)^Version: .*$", f"Version: {new_version}", metadata.read_text(encoding="utf-8"), count=1)
        metadata.write_text(text, encoding="utf-8")
        record = new_info / "RECORD"
        files = sorted(p for p in root.rglob("*") if p.is_file() and p != record)
        rows = [*(_record_row(root, p) for p in files), [record.relative_to(root).as_posix(), "", ""]]
        record.write_text(_record_text(rows), encoding="utf-8")
        rest = wheel.name.split("-", 2)[2]  # the tags: a wheel's name and version hold no '-'
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{wheel.name.split('-')[0]}-{new_version}-{rest}"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as repacked:
            for path in [*files, record]:
                repacked.write(path, path.relative_to(root).as_posix())
    return target
