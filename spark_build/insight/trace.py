"""`logs/<run-id>/trace.json`: one build as Chrome trace events, for Perfetto or chrome://tracing.

A 30-minute compile that ends slower than the last one is explained by its shape — one
9 GB CUTLASS unit alone at the end, slots idle while the governor held jobs back, an OOM
retry — and a table of durations does not show shape. The trace has:

- process "build": one track per step (placed by `state.json`'s `started`/`ended`);
- process "compile": one track per Ninja slot, each object a slice from `.ninja_log` (with its
  peak RSS from `jobs.json` when the governor saw it), counters of jobs running and held back,
  and the governor's pauses, OOM kills and retries as instants;
- process "memory": counters of available memory and the budget (from `governor.jsonl`).

`.ninja_log` times are milliseconds from each Ninja start, and a resumed or OOM-retried build
appends several Ninja runs to one file. The absolute time of each run comes from the log's
mtime column, which means two things (both seen here): the Ninja 1.13 that vLLM's build
requirements install writes the edge's *start* time (log v7), the system Ninja 1.11 the
output's mtime, ≈ its *end* (log v5). Which one a file holds is told by which reading makes
each run's clock origin agree across its lines. Builders here are pure; `write_trace` is the
one function doing I/O.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from spark_build.compile.jobplan import NinjaLine, normalize_object, parse_ninja_lines
from spark_build.durable import atomic_write_text
from spark_build.layout import RunFolder
from spark_build.sizes import GIB

PID_BUILD, PID_COMPILE, PID_MEMORY = 1, 2, 3
TID_GOVERNOR = 1000  # the compile process's track for the governor's instants
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


# -- the events ---------------------------------------------------------------------------------
def assign_slots(objects: Sequence[BuiltObject], to_us: Callable[[float], int]) -> list[int]:
    """Slot (1-based) per object: the lowest slot free at its start, as Ninja's own `-j` slots
    would be seen; a slot is free when its previous object ended at or before this start."""
    free_at: list[int] = []
    slots = [0] * len(objects)
    for i in sorted(range(len(objects)), key=lambda k: (to_us(objects[k].start), k)):
        start, end = to_us(objects[i].start), to_us(objects[i].end)
        for slot, busy_until in enumerate(free_at):
            if busy_until <= start:
                free_at[slot], slots[i] = end, slot + 1
                break
        else:
            free_at.append(end)
            slots[i] = len(free_at)
    return slots


def _short(obj: str) -> str:
    return obj.rsplit("/", 1)[-1]


def _gib(n: int) -> float:
    return round(n / GIB, 3)


def trace_events(
    summary: Mapping[str, Any],
    ninja_entries: Sequence[BuiltObject],
    memory_samples: Sequence[MemorySample] = (),
    governor_events: Sequence[GovernorEvent] = (),
    step_times: Mapping[str, tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """The trace's events, time zero at the first thing that happened; times are whole µs."""
    spans, t0 = _timeline(summary, ninja_entries, memory_samples, governor_events, step_times or {})

    def us(t: float) -> int:
        return max(0, round((t - t0) * 1_000_000))

    events: list[dict[str, Any]] = [
        _meta("process_name", PID_BUILD, None, "build"),
        _meta("process_sort_index", PID_BUILD, None, 0, key="sort_index"),
    ]
    for tid, span in enumerate(spans, start=1):
        events.append(_meta("thread_name", PID_BUILD, tid, span.name))
        events.append(_meta("thread_sort_index", PID_BUILD, tid, tid, key="sort_index"))
        args = {"status": span.status, "reason": span.reason, "exit_code": span.exit_code}
        args["timing"] = "recorded" if span.recorded else "placed from the summary's durations"
        if span.status in ("skipped", "not run"):
            events.append(_instant(f"{span.name} {span.status}", "step", us(span.start), PID_BUILD, tid, "t", args))
        else:
            start, end = us(span.start), us(span.end)
            events.append(_slice(span.name, "step", start, end - start, PID_BUILD, tid, args))
    events += _compile_events(ninja_entries, memory_samples, governor_events, us)
    events += _memory_events(summary, ninja_entries, memory_samples, us)
    return events


def _compile_events(
    objects: Sequence[BuiltObject],
    samples: Sequence[MemorySample],
    happenings: Sequence[GovernorEvent],
    us: Callable[[float], int],
) -> list[dict[str, Any]]:
    if not objects and not happenings and not samples:
        return []
    events = [
        _meta("process_name", PID_COMPILE, None, "compile"),
        _meta("process_sort_index", PID_COMPILE, None, 1, key="sort_index"),
    ]
    slots = assign_slots(objects, us)
    for slot in sorted(set(slots)):
        events.append(_meta("thread_name", PID_COMPILE, slot, f"slot {slot}"))
        events.append(_meta("thread_sort_index", PID_COMPILE, slot, slot, key="sort_index"))
    for obj, slot in zip(objects, slots, strict=True):
        args: dict[str, Any] = {"object": obj.object, "seconds": round(obj.end - obj.start, 3)}
        if obj.peak_rss_bytes is not None:
            args["peak_rss_bytes"] = obj.peak_rss_bytes
            args["peak_rss_gib"] = _gib(obj.peak_rss_bytes)
        start, end = us(obj.start), us(obj.end)
        events.append(_slice(_short(obj.object), "compile", start, end - start, PID_COMPILE, slot, args))
    running = [(us(s.t), s.running) for s in samples if s.running is not None]
    if not running:  # no governor samples: count the slices themselves
        running = _concurrency(objects, us)
    for ts, n in running:
        events.append(_counter("jobs running", PID_COMPILE, ts, {"jobs": n}))
    for s in samples:
        if s.held is not None:
            events.append(_counter("jobs held back", PID_COMPILE, us(s.t), {"jobs": s.held}))
    if happenings:
        events.append(_meta("thread_name", PID_COMPILE, TID_GOVERNOR, "governor"))
        events.append(_meta("thread_sort_index", PID_COMPILE, TID_GOVERNOR, TID_GOVERNOR, key="sort_index"))
    for e in happenings:
        scope = "p" if e.kind in ("oom-kill", "retry") else "t"  # a kill or retry marks the whole process
        name = f"{e.kind} {_short(e.object)}" if e.object else e.kind
        args = {"object": e.object, "detail": e.detail}
        events.append(_instant(name, "governor", us(e.t), PID_COMPILE, TID_GOVERNOR, scope, args))
    return events


def _concurrency(objects: Sequence[BuiltObject], us: Callable[[float], int]) -> list[tuple[int, int]]:
    changes: dict[int, int] = {}
    for o in objects:
        changes[us(o.start)] = changes.get(us(o.start), 0) + 1
        changes[us(o.end)] = changes.get(us(o.end), 0) - 1
    out, level = [], 0
    for ts in sorted(changes):
        level += changes[ts]
        out.append((ts, level))
    return out


def _memory_events(
    summary: Mapping[str, Any],
    objects: Sequence[BuiltObject],
    samples: Sequence[MemorySample],
    us: Callable[[float], int],
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for s in samples:
        if s.available_bytes is not None:
            events.append(_counter("available memory", PID_MEMORY, us(s.t), {"GiB": _gib(s.available_bytes)}))
        if s.budget_bytes is not None:
            events.append(_counter("budget", PID_MEMORY, us(s.t), {"GiB": _gib(s.budget_bytes)}))
        if s.used_bytes is not None:
            events.append(_counter("compile RSS", PID_MEMORY, us(s.t), {"GiB": _gib(s.used_bytes)}))
    planned = ((summary.get("results") or {}).get("compile") or {}).get("budget_bytes")
    if not any(s.budget_bytes is not None for s in samples) and isinstance(planned, int) and objects:
        # The plan's budget as a flat line over the compile, when no sample carried it.
        for t in (min(o.start for o in objects), max(o.end for o in objects)):
            events.append(_counter("budget", PID_MEMORY, us(t), {"GiB": _gib(planned)}))
    if events:
        events[:0] = [
            _meta("process_name", PID_MEMORY, None, "memory"),
            _meta("process_sort_index", PID_MEMORY, None, 2, key="sort_index"),
        ]
    return events


def _meta(name: str, pid: int, tid: int | None, value: Any, key: str = "name") -> dict[str, Any]:
    event: dict[str, Any] = {"ph": "M", "name": name, "pid": pid, "args": {key: value}}
    event["tid"] = 0 if tid is None else tid
    return event


def _slice(name: str, cat: str, ts: int, dur: int, pid: int, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "X", "name": name, "cat": cat, "ts": ts, "dur": dur, "pid": pid, "tid": tid, "args": args}


def _instant(name: str, cat: str, ts: int, pid: int, tid: int, scope: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"ph": "i", "name": name, "cat": cat, "ts": ts, "pid": pid, "tid": tid, "s": scope, "args": args}


def _counter(name: str, pid: int, ts: int, args: dict[str, float]) -> dict[str, Any]:
    return {"ph": "C", "name": name, "cat": "counter", "ts": ts, "pid": pid, "args": args}


def trace_document(events: list[dict[str, Any]], other: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON Object Format: viewers read `traceEvents`; `otherData` carries what `invoke
    report` needs later, when the workdir (state, `.ninja_log`) may be gone or rebuilt."""
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": dict(other)}


# -- the one writer -----------------------------------------------------------------------------
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


def _peaks(log_dir: Path) -> dict[str, int]:
    try:
        doc = json.loads(RunFolder(log_dir).jobs.read_text())
    except (OSError, ValueError):
        return {}
    return {
        normalize_object(r["object"]): r["peak_rss_bytes"]
        for r in doc.get("objects", [])
        if isinstance(r.get("peak_rss_bytes"), int)
    }


def write_trace(log_dir: Path, *, state_file: Path, build_root: Path, ninja: Path | None = None) -> Path:
    """Write `log_dir/trace.json` from the run's `summary.json`, the workdir's `state.json`, the
    `.ninja_log` files under `build_root` (setuptools' `build/`), and, where present, the run's
    `jobs.json` and `governor.jsonl`. `ninja` is kept so `invoke report` can ask it for the
    dependency graph later."""
    summary = json.loads(RunFolder(log_dir).summary.read_text())
    run_id = str(summary.get("run_id", log_dir.name))
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = {}
    times = step_times_from_state(state, run_id)
    logs = sorted(build_root.glob("**/.ninja_log"))
    lines = [line for log in logs for line in parse_ninja_lines(log.read_text(errors="replace"))]
    objects = objects_built_in(ninja_runs(lines), times.get("compile"), _peaks(log_dir))
    samples, happenings = read_governor_log(RunFolder(log_dir).governor_journal)
    events = trace_events(summary, objects, samples, happenings, times)
    other = {
        "run_id": run_id,
        "generator": "spark-build",
        "t0_epoch": _timeline(summary, objects, samples, happenings, times)[1],
        "objects_built": len({o.object for o in objects}),
        "objects_total": len({line.object for line in lines}),
        "build_dirs": [str(log.parent) for log in logs],
        "ninja": str(ninja) if ninja else None,
        "peak_memory_bytes": max((s.used_bytes for s in samples if s.used_bytes is not None), default=None),
    }
    path = RunFolder(log_dir).trace
    atomic_write_text(path, json.dumps(trace_document(events, other), separators=(",", ":")) + "\n")
    return path


def _timeline(
    summary: Mapping[str, Any],
    objects: Sequence[BuiltObject],
    samples: Sequence[MemorySample],
    happenings: Sequence[GovernorEvent],
    times: Mapping[str, tuple[float, float]],
) -> tuple[list[StepSpan], float]:
    """The placed steps and the epoch time of ts 0 (the first thing that happened)."""
    others = [o.start for o in objects] + [m.t for m in samples] + [e.t for e in happenings]
    spans = step_spans(summary, times, start_hint=min(others, default=0.0))
    return spans, min([s.start for s in spans] + others, default=0.0)
