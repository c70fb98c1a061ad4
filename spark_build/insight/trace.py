"""`logs/<run-id>/trace.json`: one build as Chrome trace events, for Perfetto or chrome://tracing.

A 30-minute compile that ends slower than the last one is explained by its shape — one
9 GB CUTLASS unit alone at the end, slots idle while the governor held jobs back, an OOM
retry — and a table of durations does not show shape. The trace has:

- process "build": one track per step (placed by `state.json`'s `started`/`ended`);
- process "compile": one track per Ninja slot, each object a slice from `.ninja_log` (with its
  peak RSS from `jobs.json` when the governor saw it), counters of jobs running and held back,
  and the governor's pauses, OOM kills and retries as instants;
- process "memory": counters of available memory and the budget (from `governor.jsonl`).

What happened (objects, steps, the governor's samples) is read by `insight.buildlog`; the
event builders here are pure, and `write_trace` is the one function doing I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spark_build.compile.ninjalog import is_build_object, parse_ninja_lines
from spark_build.durable import atomic_write_text
from spark_build.insight.buildlog import (
    BuiltObject,
    GovernorEvent,
    MemorySample,
    StepSpan,
    ninja_runs,
    objects_built_in,
    peaks_from_jobs,
    read_governor_log,
    step_spans,
    step_times_from_state,
)
from spark_build.layout import RunFolder
from spark_build.sizes import GIB

PID_BUILD, PID_COMPILE, PID_MEMORY = 1, 2, 3
TID_GOVERNOR = 1000  # the compile process's track for the governor's instants


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
    objects = objects_built_in(ninja_runs(lines), times.get("compile"), peaks_from_jobs(log_dir))
    samples, happenings = read_governor_log(RunFolder(log_dir).governor_journal)
    events = trace_events(summary, objects, samples, happenings, times)
    other = {
        "run_id": run_id,
        "generator": "spark-build",
        "t0_epoch": _timeline(summary, objects, samples, happenings, times)[1],
        # Objects as every count names them (`is_build_object`): the links are drawn, not counted.
        "objects_built": len({o.object for o in objects if is_build_object(o.object)}),
        "objects_total": len({line.object for line in lines if is_build_object(line.object)}),
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
