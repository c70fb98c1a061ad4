"""Reading Ninja's `.ninja_log`: which objects finished, when, and how long each took.

The job planner learns per-object durations from it, the trace draws each Ninja run from it,
and the compile step counts the objects a run built. One reader, so a format quirk (the mtime
column's unit changed in Ninja 1.10) is handled once.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


def normalize_object(path: str) -> str:
    """The object's name independent of the build directory: `_C.dir/csrc/x.cu.o`.

    Ninja names outputs `CMakeFiles/_C.dir/csrc/x.cu.o` relative to its build dir, nvcc may get an
    absolute path; records and the profile must match across both and across build trees.
    """
    path = path.replace("\\", "/")
    marker = "CMakeFiles/"
    cut = path.rfind(marker)
    if cut >= 0:
        return path[cut + len(marker) :]
    return path[2:] if path.startswith("./") else path


class NinjaLogEntry(NamedTuple):
    object: str
    start_ms: int
    end_ms: int


class NinjaLine(NamedTuple):
    """One `.ninja_log` line, kept in file order (a resumed build lists an object twice)."""

    object: str
    start_ms: int
    end_ms: int
    mtime_s: float | None  # epoch seconds; None when Ninja recorded none (phony, missing output)


def _epoch_seconds(mtime: int) -> float | None:
    """Ninja's mtime column is nanoseconds since 1.10 (seconds before); 0 means none."""
    if mtime <= 0:
        return None
    for scale in (1e9, 1e6, 1e3, 1.0):
        if mtime >= 1e8 * scale:
            return mtime / scale
    return None


def parse_ninja_lines(text: str) -> list[NinjaLine]:
    """Every line of a `.ninja_log`, in file order (the trace needs to know which Ninja run built
    what; `parse_ninja_log` keeps only the last line per object)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        try:
            start, end, mtime = int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            continue
        out.append(NinjaLine(normalize_object(fields[3]), start, end, _epoch_seconds(mtime)))
    return out


def parse_ninja_log(path: Path) -> list[NinjaLogEntry]:
    """Finished edges from Ninja's `.ninja_log` (v5–v7: start, end, mtime, output, hash).

    Ninja appends a line per finished edge, so a resumed or OOM-retried build lists an object
    more than once: the last line wins. A killed job has no line, which is how a record tells a
    finished object from one whose peak is only a lower bound.
    """
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    entries: dict[str, NinjaLogEntry] = {}
    for line in parse_ninja_lines(text):
        entries.pop(line.object, None)
        entries[line.object] = NinjaLogEntry(line.object, line.start_ms, line.end_ms)
    return list(entries.values())
