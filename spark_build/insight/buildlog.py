"""What one build recorded, read into typed values: the objects Ninja built (from `.ninja_log`),
the steps (from `state.json`), and the governor's samples and events (from `governor.jsonl`).

Apart from `insight.trace`, which draws these as Chrome trace events, because reading the
records is where the quirks are. `.ninja_log` times are milliseconds from each Ninja start, and
a resumed or OOM-retried build appends several Ninja runs to one file. The absolute time of each
run comes from the log's mtime column, which means two things (both seen here): the Ninja 1.13
that vLLM's build requirements install writes the edge's *start* time (log v7), the system
Ninja 1.11 the output's mtime, ≈ its *end* (log v5). Which one a file holds is told by which
reading makes each run's clock origin agree across its lines.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from spark_build.compile.ninjalog import NinjaLine, normalize_object
from spark_build.layout import RunFolder

_ORIGIN_TOLERANCE_S = 1.0  # lines whose clock origins differ less belong to one Ninja run


class NinjaRun(NamedTuple):
    """The lines one Ninja invocation wrote, and the epoch time of its clock's zero."""

    origin: float | None
    lines: tuple[NinjaLine, ...]


class BuiltObject(NamedTuple):
    """An object compiled in this run, placed in wall-clock time (epoch seconds)."""

    object: str
    start: float
    end: float
    peak_rss_bytes: int | None = None


class MemorySample(NamedTuple):
    """What the governor saw at one sample; any field it could not tell is None."""

    t: float
    available_bytes: int | None = None
    budget_bytes: int | None = None
    used_bytes: int | None = None  # the compile's process tree RSS
    running: int | None = None
    held: int | None = None


class GovernorEvent(NamedTuple):
    """A moment worth a marker: `pause`, `resume`, `oom-kill` or `retry`."""

    t: float
    kind: str
    object: str | None = None
    detail: str = ""


class StepSpan(NamedTuple):
    name: str
    status: str
    start: float
    end: float
    recorded: bool  # False: placed from the summary's durations (preflight is never checkpointed)
    reason: str
    exit_code: int | None


# -- reading .ninja_log ------------------------------------------------------------------------
def _cluster(anchored: list[tuple[float, NinjaLine]]) -> list[list[tuple[float, NinjaLine]]]:
    groups: list[list[tuple[float, NinjaLine]]] = []
    for item in sorted(anchored, key=lambda a: a[0]):
        if groups and item[0] - groups[-1][-1][0] <= _ORIGIN_TOLERANCE_S:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def ninja_runs(lines: Sequence[NinjaLine]) -> list[NinjaRun]:
    """Split a log into the Ninja invocations that wrote it, each with its clock origin.

    Both readings of the mtime column are tried (edge start in log v7, output mtime ≈ edge end
    in v5); the one whose origins agree within each run — the smallest total spread — wins.
    Lines without an mtime form one run of unknown origin.
    """
    order = {id(line): i for i, line in enumerate(lines)}
    timed = [line for line in lines if line.mtime_s is not None]
    best: list[list[tuple[float, NinjaLine]]] = []
    best_spread = float("inf")
    for field in ("start_ms", "end_ms"):
        anchored = [(line.mtime_s - getattr(line, field) / 1000, line) for line in timed]  # type: ignore[operator]
        groups = _cluster(anchored)
        spread = sum(g[-1][0] - g[0][0] for g in groups)
        if spread < best_spread:
            best, best_spread = groups, spread
    runs = [
        NinjaRun(statistics.median(a for a, _ in g), tuple(sorted((ln for _, ln in g), key=lambda ln: order[id(ln)])))
        for g in best
    ]
    untimed = tuple(line for line in lines if line.mtime_s is None)
    if untimed:
        runs.append(NinjaRun(None, untimed))
    return runs


def objects_built_in(
    runs: Sequence[NinjaRun],
    window: tuple[float, float] | None,
    peaks: Mapping[str, int] | None = None,
) -> list[BuiltObject]:
    """The objects Ninja built while this run's compile step ran (`window`, epoch seconds).

    Runs whose origin falls in the window are this build's (an OOM retry adds a second one);
    everything else in the log was built by an earlier run and reused. A log without mtimes
    gives one run of unknown origin: it is placed so that it ends when the step ended.
    """
    if window is None:
        return []
    first, last = window
    peaks = peaks or {}
    out: list[BuiltObject] = []
    for run in runs:
        origin = run.origin
        if origin is None:
            if any(r.origin is not None for r in runs) or not run.lines:
                continue
            origin = max(first, last - max(line.end_ms for line in run.lines) / 1000)
        if not first - _ORIGIN_TOLERANCE_S <= origin <= last + _ORIGIN_TOLERANCE_S:
            continue
        for line in run.lines:
            out.append(
                BuiltObject(
                    line.object, origin + line.start_ms / 1000, origin + line.end_ms / 1000, peaks.get(line.object)
                )
            )
    return sorted(out, key=lambda o: (o.start, o.end, o.object))


# -- placing steps -------------------------------------------------------------------------------
def step_spans(
    summary: Mapping[str, Any], step_times: Mapping[str, tuple[float, float]], start_hint: float = 0.0
) -> list[StepSpan]:
    """Every step of the summary, in wall-clock time (skipped and not-run steps zero-length).

    Steps with recorded times keep them. The others (preflight is never checkpointed; a step
    of a run whose state was overwritten) are placed from their durations in the summary:
    back to back before the next recorded step, else after the previous one, else from
    `start_hint` when nothing of the run was recorded.
    """
    steps = list(summary.get("steps", []))
    spans: list[StepSpan | None] = []
    for step in steps:
        known = step_times.get(step["name"])
        spans.append(None if known is None else _span(step, known[0], max(known), recorded=True))
    i = 0
    while i < len(steps):
        if spans[i] is not None:
            i += 1
            continue
        j = i
        while j < len(steps) and spans[j] is None:
            j += 1  # steps[i:j] are unknown
        before, after = (spans[i - 1] if i else None), (spans[j] if j < len(steps) else None)
        if after is not None and before is None:
            cursor = after.start - sum(_seconds(s) for s in steps[i:j])
        else:
            cursor = before.end if before is not None else start_hint
        for k in range(i, j):
            spans[k] = _span(steps[k], cursor, cursor + _seconds(steps[k]), recorded=False)
            cursor += _seconds(steps[k])
        i = j
    return [s for s in spans if s is not None]


def _seconds(step: Mapping[str, Any]) -> float:
    return float(step.get("seconds") or 0.0) if step.get("status") not in ("skipped", "not run") else 0.0


def _span(step: Mapping[str, Any], start: float, end: float, *, recorded: bool) -> StepSpan:
    return StepSpan(step["name"], step["status"], start, end, recorded, step.get("reason", ""), step.get("exit_code"))


def step_times_from_state(state: Mapping[str, Any], run_id: str) -> dict[str, tuple[float, float]]:
    """`started`/`ended` of the steps this run carried out; a resumed build's skipped steps keep
    the records of the run that did them, which is not this one."""
    out = {}
    for name, rec in (state.get("steps") or {}).items():
        if rec.get("run_id") == run_id and rec.get("started") and rec.get("ended"):
            out[name] = (float(rec["started"]), float(rec["ended"]))
    return out


def read_governor_log(path: Path) -> tuple[list[MemorySample], list[GovernorEvent]]:
    """Samples and events from `governor.jsonl`; a torn last line (a killed build) is skipped."""
    samples: list[MemorySample] = []
    happenings: list[GovernorEvent] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return samples, happenings
    for line in text.splitlines():
        try:
            row = json.loads(line)
            if "event" in row:
                happenings.append(
                    GovernorEvent(float(row["t"]), str(row["event"]), row.get("object"), row.get("detail", ""))
                )
            else:
                samples.append(MemorySample(float(row["t"]), *(row.get(k) for k in MemorySample._fields[1:])))
        except (ValueError, KeyError, TypeError):
            continue
    return samples, happenings


def peaks_from_jobs(log_dir: Path) -> dict[str, int]:
    """Peak RSS per object from the run's `jobs.json` (the governor's view); empty without one."""
    try:
        doc = json.loads(RunFolder(log_dir).jobs.read_text())
    except (OSError, ValueError):
        return {}
    return {
        normalize_object(r["object"]): r["peak_rss_bytes"]
        for r in doc.get("objects", [])
        if isinstance(r.get("peak_rss_bytes"), int)
    }
