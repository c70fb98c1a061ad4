"""Reading Ninja's `.ninja_log`: which objects finished, when, and how long each took.

The job planner learns per-object durations from it, the trace draws each Ninja run from it,
and the compile step counts the objects a run built. One reader, so a format quirk (the mtime
column's unit changed in Ninja 1.10) is handled once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from spark_build.durable import atomic_write_text


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


def _tail(name: str) -> tuple[str, str]:
    """An object's target and its last three path parts: `qutlass/csrc/gemm.cu.o` under `_C`."""
    target, _, rest = name.partition(".dir/")
    return target, "/".join(rest.split("/")[-3:])


def _durations_by_name(seconds: Mapping[str, float]) -> Callable[[str], float | None]:
    """Look an object up by its normalized name, else by target and path tail when that is
    unique: a source fetched outside the tree (qutlass) is named after its absolute checkout
    path, which differs between the machine that measured it and this one."""
    tails: dict[tuple[str, str], list[float]] = {}
    for name, value in seconds.items():
        tails.setdefault(_tail(name), []).append(value)

    def lookup(name: str) -> float | None:
        if name in seconds:
            return seconds[name]
        found = tails.get(_tail(name), [])
        return found[0] if len(found) == 1 else None

    return lookup


# The log format Ninja 1.13 reads and writes; an older header makes it discard the whole log.
SEED_HEADER = "# ninja log v7\n"


def seed_ninja_log(path: Path, outputs: Iterable[str], seconds: Mapping[str, float]) -> dict[str, float]:
    """Add a line with a measured duration for each output Ninja has no record of yet.

    A duration-weighted Ninja (`ninjabuild`) orders the first build by these, so the longest
    objects start first. An output already in the log keeps its line: Ninja compares the command
    hash there to decide what is up to date, and a made-up hash would rebuild a finished object.
    Seeded lines carry hash 0 and mtime 0, so they can never mark an object up to date. `outputs`
    are paths as Ninja spells them in this build tree; `seconds` are keyed by `normalize_object`.
    Returns the outputs seeded with the seconds written for each (found by the fallbacks too).
    """
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        text = ""
    if not text.startswith("# ninja log v"):
        text = SEED_HEADER
    known = {line.split("\t")[3] for line in text.splitlines() if not line.startswith("#") and line.count("\t") >= 4}
    seeded: dict[str, float] = {}
    lines: list[str] = []
    duration_of = _durations_by_name(seconds)
    for output in outputs:
        duration = duration_of(normalize_object(output))
        if output in known or duration is None or output in seeded:
            continue
        seeded[output] = duration
        lines.append(f"0\t{max(1, round(duration * 1000))}\t0\t{output}\t0\n")
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + ("" if text.endswith("\n") else "\n") + "".join(lines))
    return seeded
