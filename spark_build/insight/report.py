"""`invoke report [RUN]` and `invoke history`: what a finished build did, read back from its logs.

The report answers "why did it take that long": per-step timing, the slowest and the
hungriest objects, how busy the job slots were, the critical path (no number of jobs makes
the compile faster than its longest dependency chain), how much Ninja reused, and what
validation concluded. Everything comes from `logs/<run-id>/` — `summary.json`, `trace.json`,
`jobs.json` — because the workdir may be rebuilt or deleted by then; only the critical path
asks Ninja for the dependency graph, and only while the build tree still exists.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from spark_build.compile.governed import timing_detail
from spark_build.compile.ninjalog import CMAKE_PROBE_PREFIX, is_build_object, normalize_object
from spark_build.errors import UsageError
from spark_build.insight.critical_path import Deps, critical_path, ninja_graph
from spark_build.insight.history import TRACE_META, describe_change, history_rows, load_runs, outcome_of, step_status
from spark_build.insight.history import cache_hits as run_cache_hits
from spark_build.insight.history import peak_memory as run_peak_memory
from spark_build.insight.timeline import timeline_html
from spark_build.layout import LATEST, SUMMARY, RunFolder
from spark_build.pipeline.progress import StepOutcome, fmt_seconds, timing_rows
from spark_build.sizes import format_bytes

TOP = 10


@dataclass(frozen=True)
class RunLogs:
    """What one run left in its log folder; `trace`/`jobs` are None for runs without them."""

    folder: Path
    summary: dict[str, Any]
    trace: dict[str, Any] | None
    jobs: dict[str, Any] | None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def find_run(logs_dir: Path, run: str | None) -> Path:
    """The run folder for `run`: None or `latest`, a run id, a unique prefix of one, or a path."""
    if run and Path(run).is_dir() and RunFolder(Path(run)).summary.exists():
        return Path(run)
    runs = sorted(p.parent.name for p in logs_dir.glob(f"*/{SUMMARY}") if not p.parent.is_symlink())
    if not runs:
        raise UsageError(f"no builds in {logs_dir}", hint="run invoke build-vllm first, or pass --logs-dir")
    if run in (None, "", LATEST):
        latest = logs_dir / LATEST
        return latest.resolve() if RunFolder(latest).summary.exists() else logs_dir / runs[-1]
    matches = [r for r in runs if r == run] or [r for r in runs if r.startswith(str(run))]
    if len(matches) != 1:
        shown = ", ".join(runs[-5:])
        why = "matches several runs" if matches else "is not a run"
        raise UsageError(f"{run!r} {why} in {logs_dir}", hint=f"give a run id, e.g. one of: {shown}")
    return logs_dir / matches[0]


def load_run(folder: Path) -> RunLogs:
    run_folder = RunFolder(folder)
    summary = _read_json(run_folder.summary)
    if summary is None:
        raise UsageError(f"{run_folder.summary} is missing or unreadable", hint="pick another run")
    return RunLogs(folder, summary, _read_json(run_folder.trace), _read_json(run_folder.jobs))


# -- the dependency graph -----------------------------------------------------------------------
# -- the report as data -------------------------------------------------------------------------
def compile_slices(trace: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """This run's objects: the trace's compile slices, as {object, start_s, seconds, peak}."""
    out = []
    for e in (trace or {}).get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") == "compile":
            args = e.get("args", {})
            out.append(
                {
                    "object": args.get("object", e["name"]),
                    "start_s": e["ts"] / 1e6,
                    "seconds": e["dur"] / 1e6,
                    "peak_rss_bytes": args.get("peak_rss_bytes"),
                    "slot": e.get("tid"),
                }
            )
    return out


def report_data(run: RunLogs, graph: tuple[Deps | None, str] | None = None) -> dict[str, Any]:
    """Everything `invoke report` shows, as plain data (`--json` prints exactly this)."""
    summary = run.summary
    objects = compile_slices(run.trace)
    # An older jobs.json still holds CMake's compiler checks (`cmTC_*`): no part of the build.
    rows = (run.jobs or {}).get("objects", [])
    jobs_rows = [r for r in rows if isinstance(r, dict) and not str(r.get("object")).startswith(CMAKE_PROBE_PREFIX)]
    source = "trace.json (objects compiled in this run)"
    if not objects and jobs_rows and run.trace is None:
        objects = [
            {
                "object": r["object"],
                "start_s": None,
                "seconds": float(r.get("duration_s") or 0.0),
                "peak_rss_bytes": r.get("peak_rss_bytes"),
                "slot": None,
            }
            for r in jobs_rows
        ]
        source = "jobs.json (every object in the build tree; no trace.json)"
    peaks = {normalize_object(r["object"]): r for r in jobs_rows if isinstance(r.get("peak_rss_bytes"), int)}
    for o in objects:
        if o["peak_rss_bytes"] is None and o["object"] in peaks:
            o["peak_rss_bytes"] = peaks[o["object"]]["peak_rss_bytes"]
    slowest = sorted(objects, key=lambda o: -o["seconds"])[:TOP]
    measured = list(peaks.values()) or [o for o in objects if o["peak_rss_bytes"] is not None]
    hungriest = [
        {"object": r["object"], "peak_rss_bytes": r["peak_rss_bytes"], "finished": r.get("finished", True)}
        for r in sorted(measured, key=lambda r: -r["peak_rss_bytes"])[:TOP]
    ]
    rate, cache_note = run_cache_hits({**summary, TRACE_META: (run.trace or {}).get("otherData") or {}})
    return {
        "run_id": summary.get("run_id"),
        "outcome": outcome_of(summary),
        "error": summary.get("error"),
        "arch": summary.get("arch"),
        "steps": summary.get("steps", []),
        "total_seconds": summary.get("total_seconds"),
        "objects_source": source if objects else None,
        "objects_built": sum(1 for o in objects if is_build_object(o["object"])),
        "slowest": [{"object": o["object"], "seconds": round(o["seconds"], 3)} for o in slowest],
        "hungriest": hungriest,
        "cpu_utilisation": _utilisation(objects, summary),
        "critical_path": _critical(objects, graph),
        "cache": {"hit_rate": rate, "note": cache_note},
        "memory": _memory(summary, run),
        "validation": _validation(summary),
        "install": _install(summary),
        "prefer_wheel": summary.get("prefer_wheel"),
        "completed": (summary.get("results") or {}).get("complete"),  # the completion's compile record
    }


def _jobs(summary: Mapping[str, Any], objects: Sequence[Mapping[str, Any]]) -> int | None:
    """Ninja's -j (setup.py divides MAX_JOBS by NVCC_THREADS). After an OOM retry the summary has
    the final, smaller -j; the slots seen in the trace then tell what the first attempt ran."""
    compiled = step_status(summary, "compile") in ("done", "failed", "interrupted")
    max_jobs, threads = summary.get("max_jobs"), summary.get("nvcc_threads") or 1
    planned = max(1, max_jobs // threads) if compiled and isinstance(max_jobs, int) and max_jobs > 0 else 0
    slots = len({o["slot"] for o in objects if o.get("slot") is not None})
    return max(planned, slots) or None


def _utilisation(objects: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """Σ object seconds ÷ (Ninja's wall × jobs): 100% means every slot compiled all the time."""
    timed = [o for o in objects if o["start_s"] is not None]
    jobs = _jobs(summary, objects)
    if not timed or not jobs:
        return None
    wall = max(o["start_s"] + o["seconds"] for o in timed) - min(o["start_s"] for o in timed)
    busy = sum(o["seconds"] for o in timed)
    share = busy / (wall * jobs) if wall > 0 else None
    return {"object_seconds": round(busy, 3), "wall_s": round(wall, 3), "jobs": jobs, "share": share}


def _critical(objects: Sequence[Mapping[str, Any]], graph: tuple[Deps | None, str] | None) -> dict[str, Any] | None:
    if not objects:
        return None
    durations = {o["object"]: o["seconds"] for o in objects}
    deps, why = graph if graph is not None else (None, "not looked up")
    if deps:
        seconds, chain = critical_path(durations, deps)
        return {"seconds": round(seconds, 3), "chain": chain, "method": why}
    longest = max(objects, key=lambda o: o["seconds"])
    method = f"longest single object ({why}; the chain through the dependency graph is unknown)"
    return {"seconds": round(longest["seconds"], 3), "chain": [longest["object"]], "method": method}


def _memory(summary: Mapping[str, Any], run: RunLogs) -> dict[str, Any]:
    compiled = step_status(summary, "compile") in ("done", "failed", "interrupted")
    result = ((summary.get("results") or {}).get("compile") or {}) if compiled else {}
    meta = (run.trace or {}).get("otherData") or {}
    return {
        "peak_bytes": run_peak_memory({**summary, TRACE_META: meta}),
        "budget_bytes": result.get("budget_bytes"),
        "governor_pauses": result.get("governor_pauses"),
        "oom_retries": result.get("oom_retries"),
    }


def _validation(summary: Mapping[str, Any]) -> dict[str, Any]:
    status = step_status(summary, "validate")
    result = (summary.get("results") or {}).get("validate")
    if status not in ("done", "skipped") or not isinstance(result, dict):
        return {"status": status or "absent"}
    linkage = result.get("linkage") or {}
    return {
        "status": status,
        "verdicts": result.get("verdicts", {}),
        "imports": result.get("imports", {}),
        "imports_unproven": result.get("imports_unproven", []),
        "linkage_ok": linkage.get("ok"),
        "problems": result.get("problems", []),
        "serve": (result.get("serve") or {}).get("passed") if result.get("serve") else None,
    }


def _install(summary: Mapping[str, Any]) -> str | None:
    """The published wheel's install line, for a run that published it or found it published."""
    if step_status(summary, "publish") not in ("done", "skipped"):
        return None
    line = ((summary.get("results") or {}).get("publish") or {}).get("install")
    return line if isinstance(line, str) else None


# -- rendering ----------------------------------------------------------------------------------
def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.0f}%"


def render_report(data: Mapping[str, Any], console: Console) -> None:
    console.print(f"build {data['run_id']}: {data['outcome']} for {data['arch']}", highlight=False, markup=False)
    if data.get("error"):
        console.print(f"  error: {data['error']}", highlight=False, markup=False)
    table = Table(title="timing")
    for column, justify in (("step", "left"), ("status", "left"), ("duration", "right"), ("share", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    outcomes = [
        StepOutcome(s["name"], s["status"], s["seconds"], s.get("reason", ""), s.get("exit_code"))
        for s in data["steps"]
    ]
    for row in timing_rows(outcomes):
        table.add_row(*row)
    console.print(table)
    if data["objects_source"]:
        table = Table(title=f"ten slowest objects — from {data['objects_source']}")
        table.add_column("object")
        table.add_column("seconds", justify="right")
        for o in data["slowest"]:
            table.add_row(o["object"], fmt_seconds(o["seconds"]))
        console.print(table)
    if data["hungriest"]:
        table = Table(title="ten hungriest objects (peak RSS of the job's process tree)")
        table.add_column("object")
        table.add_column("peak", justify="right")
        for o in data["hungriest"]:
            note = "" if o["finished"] else " (did not finish: at least)"
            table.add_row(o["object"], format_bytes(o["peak_rss_bytes"]) + note)
        console.print(table)
    else:
        console.print("hungriest objects: no per-object memory recorded (jobs.json)", highlight=False)
    for line in _summary_lines(data):  # markup off: "[…]" in a method or problem is text
        console.print(line, highlight=False, markup=False)


def _change_line(change: Mapping[str, Any]) -> str:
    """Where a `--pr`/`--patch` change landed, as `--prefer-wheel` weighed it (`nightly.completion`)."""
    label, scope = change.get("label"), change.get("scope")
    if scope == "python":
        return f"prefer-wheel change: {label}: Python only, carried onto the wheel"
    if scope == "everything":
        return f"prefer-wheel change: {label}: {', '.join(change.get('beyond') or [])} reach every extension target"
    into = change.get("compiled_into") or {}
    return f"prefer-wheel change: {label}: " + "; ".join(f"{f} is compiled into {t}" for f, t in into.items())


def _summary_lines(data: Mapping[str, Any]) -> list[str]:
    lines = []
    decision = data.get("prefer_wheel")
    if isinstance(decision, Mapping):
        found = f"{decision.get('found')} ({decision.get('found_in')})" if decision.get("found") else ""
        if decision.get("taken"):
            lines.append(f"prefer-wheel: took {found}: {decision.get('why')}")
        elif decision.get("stopped_by"):
            about = f" on {found}" if found else ""
            lines.append(f"prefer-wheel: stopped by a host problem, no verdict{about}: {decision.get('stopped_by')}")
        else:
            refused = f"{found} not taken, " if found else ""
            lines.append(f"prefer-wheel: {refused}built from source: {decision.get('why')}")
        completion = decision.get("completion")
        if isinstance(completion, Mapping):  # what completing the official wheel decided, and for which targets
            targets = ", ".join(completion.get("targets") or []) or "none"
            lines.append(f"prefer-wheel completion: {completion.get('choice')} (targets: {targets})")
            lines += [f"prefer-wheel: will not run: {line}" for line in completion.get("will_not_run") or []]
            lines += [_change_line(c) for c in completion.get("changes") or [] if isinstance(c, Mapping)]
            if completion.get("native"):
                lines.append(f"prefer-wheel: native (--native): {', '.join(completion['native'])}")
            lines += [f"prefer-wheel: left on PTX JIT: {line}" for line in completion.get("left_on_jit") or []]
    compiled = data.get("completed")
    if isinstance(compiled, Mapping):  # as the compile step's row: jobs, objects, cache
        took = fmt_seconds(float(compiled.get("seconds") or 0.0))
        lines.append(f"prefer-wheel completion compiled in {took}: {timing_detail(compiled)}")
    util = data["cpu_utilisation"]
    if util:
        lines.append(
            f"CPU utilisation: {_pct(util['share'])} — {fmt_seconds(util['object_seconds'])} of object time "
            f"in {fmt_seconds(util['wall_s'])} × {util['jobs']} jobs"
        )
    crit = data["critical_path"]
    if crit:
        chain = " → ".join(c.rsplit("/", 1)[-1] for c in crit["chain"])
        lines.append(f"critical path: {fmt_seconds(crit['seconds'])} — {chain} [{crit['method']}]")
    cache = data["cache"]
    lines.append(f"cache hit rate: {_pct(cache['hit_rate'])} — {cache['note']}")
    mem = data["memory"]
    if mem["peak_bytes"] is not None or mem["budget_bytes"] is not None:
        peak = format_bytes(mem["peak_bytes"]) if mem["peak_bytes"] is not None else "—"
        budget = format_bytes(mem["budget_bytes"]) if mem["budget_bytes"] is not None else "—"
        lines.append(
            f"memory: peak {peak} of a {budget} budget; {mem['governor_pauses'] or 0} pauses, "
            f"{mem['oom_retries'] or 0} OOM retries"
        )
    val = data["validation"]
    if "verdicts" not in val:
        lines.append(f"validation: {val['status']}")
    else:
        verdicts = ", ".join(f"{cc}: {v}" for cc, v in val["verdicts"].items()) or "none"
        imports = _imports_word(val["imports"], val.get("imports_unproven", []))
        linkage = "ok" if val["linkage_ok"] else "FAILED"
        serve = {True: "passed", False: "FAILED", None: "not run"}[val["serve"]]
        lines.append(
            f"validation ({val['status']}): GPU code {verdicts}; imports {imports}; linkage {linkage}; serve {serve}"
        )
        lines += [f"  problem: {p}" for p in val["problems"]]
    if data["install"]:
        lines.append(f"install with: {data['install']}")
    return lines


def _imports_word(imports: Mapping[str, bool], unproven: Sequence[str]) -> str:
    """`ok`, `FAILED`, or how many imports this host could not prove: without the NVIDIA driver
    (or offline) an import that needs it is inconclusive, which is not a failed wheel."""
    if not imports or any(not ok and module not in unproven for module, ok in imports.items()):
        return "FAILED"
    open_ = [module for module, ok in imports.items() if not ok]
    if not open_:
        return "ok"
    return f"{len(imports) - len(open_)} ok, {len(open_)} not proven on the validating host ({', '.join(open_)})"


def report_main(logs_dir: Path, run: str | None, as_json: bool, console: Console, html: Path | None = None) -> int:
    """`invoke report [RUN] [--json] [--html FILE]`: 0; `UsageError` (exit 2) when there is no
    such run, or no trace to draw for `--html`."""
    logs = load_run(find_run(logs_dir, run))
    meta = (logs.trace or {}).get("otherData") or {}
    graph = ninja_graph(meta.get("build_dirs") or [], meta.get("ninja")) if logs.trace else None
    data = report_data(logs, graph)
    if as_json:
        console.out(json.dumps(data, indent=2, default=str), highlight=False)
    else:
        render_report(data, console)
    if html is not None:
        if logs.trace is None:
            raise UsageError(
                f"{logs.folder.name} has no {RunFolder(logs.folder).trace.name} to draw", hint="pick a newer run"
            )
        text = io.StringIO()
        render_report(data, Console(file=text, width=160, color_system=None, highlight=False, markup=False))
        html.write_text(timeline_html(logs.trace, f"build {data['run_id']}: {data['outcome']}", text.getvalue()))
        if not as_json:
            console.print(f"timeline: {html}", highlight=False, markup=False)
    return 0


def history_main(logs_dir: Path, as_json: bool, console: Console) -> int:
    """`invoke history [--json]`: one line per build in `logs_dir`, oldest first."""
    rows = history_rows(load_runs(logs_dir))
    if as_json:
        console.out(json.dumps([r.to_dict() for r in rows], indent=2), highlight=False)
        return 0
    if not rows:
        print(f"no builds in {logs_dir}", file=sys.stderr)
        return 0
    table = Table(title=f"builds in {logs_dir}")
    for column in ("date", "run", "ref", "arch", "wall", "jobs", "peak mem", "cache hits", "outcome", "change"):
        table.add_column(column, justify="right" if column in ("wall", "jobs", "peak mem", "cache hits") else "left")
    for r in rows:
        table.add_row(
            r.date,
            r.run_id,
            r.ref,
            r.arch,
            fmt_seconds(r.wall_s),
            "—" if r.jobs is None else str(r.jobs),
            "—" if r.peak_memory_bytes is None else format_bytes(r.peak_memory_bytes),
            _pct(r.cache_hit_rate),
            r.outcome,
            describe_change(r.change),
        )
    console.print(table)
    return 0
