"""Where the compile stands and when it will end: objects done, share of CPU work, ETA, slack.

One model of the remaining work for two users, so they never disagree: the live status line
(how long is left) and the governor (which job never to pause first: one with little *slack* —
the build's predicted remaining wall less the job's own remaining time).
A 953 s `scaled_mm_c2x.cu.o` held back for a minute delays the wheel by a minute; a 60 s object
held back while 1,000 s of work remains delays nothing.

`forecast` is pure: durations (`Estimates.seconds`), the objects `.ninja_log` says are finished
(with their measured seconds) and the running jobs come in; a `Forecast` goes out.
`FinishedObjects` is the one part that reads a file.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.compile.ninjalog import NinjaLine, is_build_object, object_matcher, parse_ninja_lines

# A finished object that took less than this share of its estimate was a compiler-cache hit:
# it says nothing about how fast this machine compiles, so it does not calibrate the speed.
CACHE_HIT_SHARE = 0.25
# Finished objects needed before measured durations replace the estimates' speed: one object
# on a loaded machine is noise.
CALIBRATION_OBJECTS = 3


@dataclass(frozen=True)
class RunningJob:
    """A compile job the governor sees now."""

    object: str
    ran_s: float  # seconds it has run so far; time held stopped does not count
    held: bool


@dataclass(frozen=True)
class Forecast:
    """The compile's progress and its predicted end (`pipeline.progress.forecast_line` words it)."""

    objects_done: int
    objects_total: int
    work_done: float  # share of the predicted CPU-s done, 0..1
    eta_s: float  # predicted seconds until the last object finishes
    speed: float  # measured / estimated seconds of the finished objects (1.0 until known)
    remaining_s: Mapping[str, float]  # per running or held job: predicted seconds left
    running: int
    held: int
    used_bytes: int | None = None  # the compile's process tree RSS
    budget_bytes: int | None = None

    def slack_s(self, obj: str) -> float:
        """How long `obj` could wait without moving the predicted end."""
        return max(0.0, self.eta_s - self.remaining_s.get(obj, 0.0))


def calibrated_speed(finished: Mapping[str, float], seconds: Mapping[str, float]) -> float:
    """How much longer this machine takes than the estimates say (the Spark's cores: ≈1.2×
    the profile's x86 server cores), from objects that really compiled."""
    pairs = [
        (measured, seconds[obj])
        for obj, measured in finished.items()
        if seconds.get(obj, 0.0) > 0 and measured >= CACHE_HIT_SHARE * seconds[obj]
    ]
    if len(pairs) < CALIBRATION_OBJECTS:
        return 1.0
    return sum(m for m, _ in pairs) / sum(e for _, e in pairs)


def schedule_end(
    running: Sequence[tuple[float, int]], queued: Sequence[tuple[float, int]], slots: int, budget: int | None
) -> float:
    """When the last of these (seconds, peak) jobs ends under Ninja and the governor.

    Ninja starts the queued jobs in the order given whenever one of its `slots` is free; with a
    budget the governor lets a started job run only when its peak fits beside the running jobs'
    peaks (it reserves them), holding it in its slot otherwise — so a later job in the slots may
    pass a held one, and a job larger than the budget runs alone. The running jobs' rests come
    first (Graham's list scheduling, with memory).
    """
    ends: list[tuple[float, int]] = []
    held, now, last = 0, 0.0, 0.0
    for seconds, peak in running:
        heapq.heappush(ends, (seconds, peak))
        held, last = held + peak, max(last, seconds)
    pending = deque(queued)
    waiting: list[tuple[float, int]] = []  # started by Ninja, held by the governor
    while pending or waiting:
        while pending and len(ends) + len(waiting) < max(1, slots):
            waiting.append(pending.popleft())
        for job in list(waiting):
            seconds, peak = job
            if budget is None or not ends or held + peak <= budget:
                waiting.remove(job)
                heapq.heappush(ends, (now + seconds, peak))
                held, last = held + peak, max(last, now + seconds)
        if ends and (pending or waiting):
            now, freed = heapq.heappop(ends)
            held -= freed
    return last


def forecast(
    seconds: Mapping[str, float],
    finished: Mapping[str, float],
    jobs: Sequence[RunningJob],
    slots: int,
    *,
    peaks: Mapping[str, int] | None = None,
    budget_bytes: int | None = None,
    used_bytes: int | None = None,
) -> Forecast:
    """Predict the rest of the compile from per-object durations, `slots` jobs at a time (the
    lesser of the CPUs and Ninja's `-j`: a memory-planned `-j` below the CPUs sets the pace).

    The objects are the build objects (`ninjalog.is_build_object`) with a duration estimate:
    the targets setup.py builds, a fixed total. Finished and running ones are matched to them by
    `ninjalog.object_matcher`, so an object named after another machine's checkout still counts;
    a job that is none of them (a link, a CMake compiler check, an object without an estimate)
    takes time at the median duration but is no object to count. Queued objects are placed
    longest first — the order a critical-path Ninja starts them — and, with peaks and a budget,
    only as many run at once as fit: where memory binds, CPUs idle while the governor holds jobs
    back. With every object built and nothing running the ETA is 0.
    """
    objects = {obj: s for obj, s in seconds.items() if is_build_object(obj)}
    match = object_matcher(objects)
    built = {known: took for obj, took in finished.items() if (known := match(obj)) is not None}
    speed = calibrated_speed(built, objects)
    default = _median(list(objects.values())) if objects else 0.0
    running = {job.object: match(job.object) for job in jobs}
    own = {job.object: objects.get(running[job.object] or "", default) for job in jobs}
    started = {known for known in running.values() if known is not None}
    done = [obj for obj in objects if obj in built and obj not in started]
    remaining = {job.object: max(0.0, own[job.object] * speed - job.ran_s) for job in jobs}
    peak_of = (peaks or {}).get
    queued = sorted(
        ((objects[obj] * speed, peak_of(obj, 0)) for obj in objects if obj not in built and obj not in started),
        key=lambda job: -job[0],
    )
    live = [(remaining[j.object], peak_of(running[j.object] or j.object, 0)) for j in jobs if not j.held]
    waiting = [(remaining[j.object], peak_of(running[j.object] or j.object, 0)) for j in jobs if j.held]
    eta = schedule_end(live, [*waiting, *queued], slots, budget_bytes if peaks else None)
    total_work = sum(objects.values()) or 1.0
    work = sum(objects[obj] for obj in done) + sum(
        min(j.ran_s / speed, own[j.object]) for j in jobs if running[j.object] is not None
    )
    held = sum(1 for j in jobs if j.held)
    return Forecast(
        len(done),
        len(objects),
        min(1.0, work / total_work),
        eta,
        speed,
        remaining,
        len(jobs) - held,
        held,
        used_bytes,
        budget_bytes,
    )


def finished_in(lines: Iterable[NinjaLine]) -> dict[str, float]:
    """Objects `.ninja_log` records as built, with their measured seconds (the last line wins).

    A line without an mtime is not a build: Ninja records none for an output it did not write,
    and a `.ninja_log` seeded with expected durations before the first build carries none — so
    seeding never counts as progress.
    """
    out: dict[str, float] = {}
    for line in lines:
        out.pop(line.object, None)
        if line.mtime_s is not None:
            out[line.object] = (line.end_ms - line.start_ms) / 1000
    return out


class FinishedObjects:
    """Follows the build tree's `.ninja_log` for `forecast`: setup.py creates the tree during
    the compile, and CMake may leave a sub-build's log in it first, so the tree is searched
    again every `search_every_s`; a log is reread only when it grows."""

    def __init__(self, build_tree: Path, *, clock: Callable[[], float] = time.monotonic, search_every_s: float = 10.0):
        self.build_tree = build_tree
        self._clock = clock
        self._search_every_s = search_every_s
        self._searched = -search_every_s
        self._logs: list[Path] = []
        self._sizes: tuple[int, ...] = ()
        self._finished: dict[str, float] = {}

    def __call__(self) -> dict[str, float]:
        """Objects built so far; what was read last when the log cannot be read now (Ninja
        rewrites it on a recompaction), since a failed read must not stop the governor's sample."""
        now = self._clock()
        if now - self._searched >= self._search_every_s:
            self._searched = now
            self._logs = sorted(self.build_tree.glob("**/.ninja_log"))
        try:
            sizes = tuple(log.stat().st_size for log in self._logs)
            if sizes != self._sizes:
                texts = [log.read_text("utf-8", "replace") for log in self._logs]
                self._finished = finished_in(line for text in texts for line in parse_ninja_lines(text))
                self._sizes = sizes
        except OSError:
            pass
        return self._finished


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0
