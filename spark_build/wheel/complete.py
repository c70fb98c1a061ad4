"""A prebuilt wheel completed for the target GPU: extensions built here put in place of the ones
it ships, everything else left as the release published it.

vLLM's official wheels run on a DGX Spark except for what upstream never compiles for it (0.26.0
to 0.33.0: `_qutlass_C`, SM100 only). Rebuilding those few targets takes minutes where the whole
build takes twenty-five; the completed wheel is the official one with only those files swapped,
so what it was proven by upstream still holds for the rest. The version says what was added
(`0.26.0+cu130` → `0.26.0+cu130.sm120`), so pip, the wheelhouse and a bug report tell the two apart.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from spark_build.errors import UsageError
from spark_build.wheel.relabel import rewrite_wheel

_ARCH_ENTRY = re.compile(r"^(\d+)\.(\d+)([af]?)$")


def completion_label(arch_entries: Sequence[str]) -> str:
    """The local label for extensions built for `12.1a` → `sm121a`, `12.0f` → `sm120` (the family:
    every 12.x GPU), several entries joined: `sm120.sm121a`."""
    parts = []
    for entry in arch_entries:
        match = _ARCH_ENTRY.match(entry)
        if match is None:
            raise UsageError(f"arch {entry!r} is not like 12.1a, 12.0f or 9.0", hint="give --arch 12.1a")
        major, minor, suffix = match.groups()
        parts.append(f"sm{major}{minor}{'' if suffix == 'f' else suffix}")
    if not parts:
        raise UsageError("no arch to complete the wheel for", hint="give --arch 12.1a")
    return ".".join(parts)


def complete_wheel(wheel: Path, built: Mapping[str, Path], label: str, out_dir: Path) -> Path:
    """`wheel` with each file named in `built` (its path in the wheel → the file built here)
    replaced, as version `+label`, in `out_dir`. Only files the wheel ships can be replaced: a
    name it lacks means the build and the wheel disagree on the layout, and adding a file the
    release never had would be a different package, not a completed one."""
    if not built:
        raise UsageError(f"nothing to put into {wheel.name}", hint="name the extensions that were built")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    absent = sorted(name for name in built if name not in shipped)
    if absent:
        raise UsageError(
            f"{wheel.name} ships no {', '.join(absent)}: the built extensions must replace files the wheel has",
            hint="check the extension's install path in the release's CMake against the wheel's files",
        )
    missing = sorted(str(path) for path in built.values() if not path.is_file())
    if missing:
        raise UsageError(f"built extension not found: {', '.join(missing)}", hint="run the completion build again")

    def swap(root: Path) -> None:
        for name, path in built.items():
            target = root / name
            mode = target.stat().st_mode  # the shipped file's mode, not the build folder's
            shutil.copyfile(path, target)
            target.chmod(mode)

    return rewrite_wheel(wheel, label, out_dir, swap)
