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


# CMake's compiler checks (`try_compile` during configure) build targets named `cmTC_<hash>`
# with their own Ninja; the governor sees their jobs like any other, but they are no part of
# the wheel.
CMAKE_PROBE_PREFIX = "cmTC_"


def is_build_object(name: str) -> bool:
    """Whether a normalized output is one of the build's objects: a translation unit compiled
    for a target (`_C.dir/csrc/x.cu.o`).

    The one definition every count uses (the live status, the timing table, the trace, the
    report, `jobs.json`), so they never disagree: a link (`_C.abi3.so`) is an edge but not an
    object, and CMake's compiler checks (`cmTC_*`) are neither. The real 0.13.0 build's status
    flipped between 165, 168 and 169 "objects" when these were counted in some places only.
    """
    target, sep, rest = name.partition(".dir/")
    return bool(sep and rest) and name.endswith((".o", ".obj")) and not target.startswith(CMAKE_PROBE_PREFIX)


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


def object_matcher(known: Iterable[str]) -> Callable[[str], str | None]:
    """Which of the `known` objects (normalized names) an object is: the same name, else the one
    with the same target and path tail when that is unique. A source fetched outside the tree
    (qutlass) is named after its absolute checkout path, which differs between the machine that
    measured it and this one (`_C.dir/tmp/fb/src/qutlass/…` in the profile, `_C.dir/tmp/w/work/
    cache/sources/qutlass/…` on the GPU machine): by name alone its 7 objects were never done."""
    names = set(known)
    tails: dict[tuple[str, str], list[str]] = {}
    for name in names:
        tails.setdefault(_tail(name), []).append(name)

    def match(name: str) -> str | None:
        if name in names:
            return name
        found = tails.get(_tail(name), [])
        return found[0] if len(found) == 1 else None

    return match


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
    match = object_matcher(seconds)
    for output in outputs:
        name = match(normalize_object(output))
        if output in known or name is None or output in seeded:
            continue
        seeded[output] = duration = seconds[name]
        lines.append(f"0\t{max(1, round(duration * 1000))}\t0\t{output}\t0\n")
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + ("" if text.endswith("\n") else "\n") + "".join(lines))
    return seeded
