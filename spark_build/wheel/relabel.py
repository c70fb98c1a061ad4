"""A wheel rewritten as a new local version of itself: the one writer behind every change
spark-build makes to a finished wheel (a Python-only PR carried onto it, extensions completed
for the target GPU).

pip and the wheelhouse must tell the rewritten wheel from the original, and pip checks every
file against RECORD when it installs: so the version gets a local label (`0.15.0+cu130` →
`0.15.0+cu130.pr12345`), the .dist-info folder and the file name follow it, METADATA's
`Version:` is rewritten and RECORD recomputed. Every file the edit did not touch keeps its
bytes and its mode (vLLM 0.33 ships an executable, `vllm/vllm-rs`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from spark_build.errors import UsageError

Edit = Callable[[Path], None]  # changes the unpacked wheel's files, given its root
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip member can carry, for members the wheel did not ship


def labelled(version: Version, label: str) -> Version:
    """`0.15.0+cu130` with `pr12345` → `0.15.0+cu130.pr12345`; `0.22.0` → `0.22.0+pr12345`."""
    if not re.fullmatch(r"[a-z0-9]+(\.[a-z0-9]+)*", label):
        raise UsageError(f"local version label {label!r} is not letters and digits", hint="e.g. pr12345")
    return Version(f"{version}.{label}" if version.local else f"{version}+{label}")


def record_row(root: Path, path: Path) -> list[str]:
    """RECORD's row for one file: its path, urlsafe-base64 sha256 without padding, its size."""
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [path.relative_to(root).as_posix(), f"sha256={digest}", str(len(data))]


def record_text(rows: Iterable[Sequence[str]]) -> str:
    """RECORD is CSV: vLLM ships files whose names hold commas (`E=128,N=384,….json` MoE configs),
    which must be quoted or pip reads the row as six fields."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def relabelled_name(wheel_name: str, label: str) -> str:
    """The file name the rewritten wheel gets: `vllm-0.26.0+cu130-cp38-…` → `vllm-0.26.0+cu130.sm120-cp38-…`."""
    _name, version, _build, _tags = parse_wheel_filename(wheel_name)
    distribution, _version, rest = wheel_name.split("-", 2)  # a wheel's name and version hold no '-'
    return f"{distribution}-{labelled(version, label)}-{rest}"


def rewrite_wheel(wheel: Path, label: str, out_dir: Path, edit: Edit) -> Path:
    """`wheel` unpacked, `edit` run on its files, repacked into `out_dir` as version `+label`."""
    name, version, _build, _tags = parse_wheel_filename(wheel.name)
    new_version = labelled(version, label)
    with tempfile.TemporaryDirectory(prefix="spark-relabel-") as scratch, zipfile.ZipFile(wheel) as archive:
        root = Path(scratch)
        archive.extractall(root)  # zipfile drops absolute and '..' components of member names
        for info in archive.infolist():  # extractall drops modes: vLLM's vllm-rs must stay executable
            mode = info.external_attr >> 16 & 0o777
            if mode and not info.is_dir():
                (root / info.filename).chmod(mode)
        (old_info,) = [p for p in root.glob("*.dist-info") if canonicalize_name(p.name.split("-")[0]) == name]
        edit(root)
        new_info = root / f"{old_info.name.split('-')[0]}-{new_version}.dist-info"
        old_info.rename(new_info)
        metadata = new_info / "METADATA"
        text = re.sub(r"(?m)^Version: .*$", f"Version: {new_version}", metadata.read_text(encoding="utf-8"), count=1)
        metadata.write_text(text, encoding="utf-8")
        record = new_info / "RECORD"
        files = sorted(p for p in root.rglob("*") if p.is_file() and p != record)
        rows = [*(record_row(root, p) for p in files), [record.relative_to(root).as_posix(), "", ""]]
        record.write_text(record_text(rows), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / relabelled_name(wheel.name, label)
        shipped = {info.filename: info for info in archive.infolist()}
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as repacked:
            for path in [*files, record]:
                member = path.relative_to(root).as_posix()
                renamed = member.startswith(f"{new_info.name}/")
                was = shipped.get(member.replace(new_info.name, old_info.name, 1) if renamed else member)
                repacked.writestr(_entry(member, path, was), path.read_bytes())
    return target


def _entry(name: str, path: Path, was: zipfile.ZipInfo | None) -> zipfile.ZipInfo:
    """The member's header: the shipped member's date, so the same edit gives the same bytes (a
    rerun republishes an identical wheel); the mode of the file as it now is."""
    entry = zipfile.ZipInfo(name, date_time=was.date_time if was is not None else _EPOCH)
    entry.external_attr = (path.stat().st_mode & 0xFFFF) << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    return entry
