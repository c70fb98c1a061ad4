"""`invoke history`: one line per build, and what changed since the last build of the same inputs.

A build that took 40 minutes instead of 30 is only news against the previous build of the
same source for the same arch — a different commit or arch compiles different objects — so
the change column compares within those inputs only. Rows are plain data (`history_rows` is
pure over summary documents); `load_runs` is the only function reading files.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spark_build.layout import SUMMARY, RunFolder
from spark_build.pipeline.progress import fmt_seconds
from spark_build.sizes import format_bytes

TRACE_META = "trace"  # key `load_runs` adds: the run's trace.json `otherData`, when it has one


@dataclass(frozen=True)
class HistoryRow:
    run_id: str
    date: str
    ref: str
    commit: str | None
    arch: str
    wall_s: float
    jobs: int | None
    peak_memory_bytes: int | None
    cache_hit_rate: float | None  # the compiler cache's hits ÷ (hits + misses) in this run (cache_hits)
    cache_note: str
    outcome: str
    inputs: str  # what "the same inputs" means: commit (or ref) and arch
    change: dict[str, Any] = field(default_factory=dict)
    compiled: bool = False  # this run compiled (done, failed or stopped): its wall is a build's, not a check's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_date(run_id: str) -> str:
    """`2026-11-25 18:11` from a run id `20261125-181130-767` (`report.new_run_id`)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return "?"


def outcome_of(summary: Mapping[str, Any]) -> str:
    """`ok`, or where it stopped: `failed at compile`, `interrupted at compile`."""
    code = summary.get("exit_code")
    if code == 0:
        return "ok"
    stopped = next((s["name"] for s in summary.get("steps", []) if s.get("status") in ("failed", "interrupted")), None)
    verb = "interrupted" if code == 130 else "failed"
    return f"{verb} at {stopped}" if stopped else verb


def step_status(summary: Mapping[str, Any], name: str) -> str | None:
    return next((s.get("status") for s in summary.get("steps", []) if s.get("name") == name), None)


def cache_hits(summary: Mapping[str, Any]) -> tuple[float | None, str]:
    """This run's compiler-cache hit rate — the one figure the build's timing table, `invoke
    report` and `invoke history` all show: hits ÷ (hits + misses) as the cache counted them
    (`CacheStats.hit_rate`, in summary.json's `compiler_cache`). The objects Ninja did not
    rebuild at all are named beside it, never counted as hits: a no-op resume is not 100 %.

    `compiler_cache` comes from the last *finished* compile, which is this run's only when this
    run's compile is done; a compile that was skipped, failed or stopped has no figure."""
    status = step_status(summary, "compile")
    if status == "skipped":
        return None, "no compile in this run (an earlier run's wheel was reused)"
    if status in (None, "not run"):
        return None, "no compile in this run"
    reuse = _ninja_reuse(summary)
    record = summary.get("compiler_cache") if status == "done" else None
    stats = record.get("stats") if isinstance(record, Mapping) else None
    if not isinstance(record, Mapping) or not isinstance(stats, Mapping):
        why = f"no compiler-cache figures (compile {status})" if status != "done" else "no compiler-cache figures"
        return None, "; ".join([why, *reuse])
    rate = stats.get("hit_rate")  # None when nothing was looked up: Ninja found every object current
    counts = f"{record.get('tool')}: {stats.get('hits', 0)} hits, {stats.get('misses', 0)} misses"
    return (float(rate) if isinstance(rate, (int, float)) else None), "; ".join([counts, *reuse])


def _ninja_reuse(summary: Mapping[str, Any]) -> list[str]:
    """`Ninja reused 4 of 12 objects` from the run's own trace; empty when it wrote none."""
    meta = summary.get(TRACE_META) or {}
    built, total = meta.get("objects_built"), meta.get("objects_total")
    if isinstance(built, int) and isinstance(total, int) and total > 0:
        return [f"Ninja reused {max(0, total - built)} of {total} objects"]
    return []


def peak_memory(summary: Mapping[str, Any]) -> int | None:
    """The compile's process-tree peak the governor saw; None for builds before it did."""
    compile_result = (summary.get("results") or {}).get("compile") or {}
    if step_status(summary, "compile") not in ("done", "failed", "interrupted"):
        return None  # results.compile is an earlier run's
    for value in (summary.get("peak_memory_bytes"), compile_result.get("peak_tree_rss_bytes")):
        if isinstance(value, int) and value > 0:
            return value
    meta = summary.get(TRACE_META) or {}
    value = meta.get("peak_memory_bytes")
    return value if isinstance(value, int) and value > 0 else None


def prebuilt_note(summary: Mapping[str, Any]) -> str:
    """What `--prefer-wheel` decided in this run (summary.json's `prefer_wheel`), for the outcome
    column: a run that took the official wheel built nothing, one that did not built from source."""
    decision = summary.get("prefer_wheel")
    if not isinstance(decision, Mapping):
        return ""
    if decision.get("stopped_by"):
        return " (official wheel not judged: host problem)"
    completion = decision.get("completion")
    changes = [c for c in (completion or {}).get("changes") or [] if isinstance(c, Mapping)]
    if not decision.get("taken"):
        everything = [str(c.get("label")) for c in changes if c.get("scope") == "everything"]
        reach = f": {', '.join(everything)} reaches every target" if everything else ""
        return f" (official wheel not taken{reach})"
    if not isinstance(completion, Mapping):
        return " (official wheel)"
    jit = len(completion.get("left_on_jit") or [])
    on_jit = f"; {jit} left on PTX JIT" if jit else ""
    if completion.get("choice") == "complete":  # the official wheel with extensions built here: say which
        compiled = [str(c.get("label")) for c in changes if c.get("scope") == "extensions"]
        by = f" for {', '.join(compiled)}" if compiled else ""
        native = f"; native: {', '.join(completion['native'])}" if completion.get("native") else ""
        return f" (official wheel, completed: {', '.join(completion.get('targets') or [])}{by}{native}{on_jit})"
    if completion.get("choice") == "take incomplete":
        return f" (official wheel, incomplete: --accept-missing{on_jit})"
    return f" (official wheel{on_jit})"


def _row(summary: Mapping[str, Any]) -> HistoryRow:
    results = summary.get("results") or {}
    clone = results.get("clone") or {}
    commit = clone.get("commit")
    ref = str(summary.get("ref") or clone.get("describe") or (commit or "?")[:12])
    arch = str(summary.get("arch") or "?")
    compiled = step_status(summary, "compile") in ("done", "failed", "interrupted")
    jobs = summary.get("max_jobs") if compiled else None
    rate, note = cache_hits(summary)
    run_id = str(summary.get("run_id", "?"))
    return HistoryRow(
        run_id=run_id,
        date=run_date(run_id),
        ref=ref,
        commit=commit,
        arch=arch,
        wall_s=float(summary.get("total_seconds") or 0.0),
        jobs=jobs if isinstance(jobs, int) else None,
        peak_memory_bytes=peak_memory(summary),
        cache_hit_rate=rate,
        cache_note=note,
        outcome=outcome_of(summary) + prebuilt_note(summary),
        inputs=f"{commit or ref} {arch}",
        compiled=compiled,
    )


def compare(current: HistoryRow, previous: HistoryRow | None) -> dict[str, Any]:
    """What changed since `previous` (the last build of the same inputs): deltas, and the old
    value wherever a setting or the outcome differs."""
    if previous is None:
        return {"previous": None}
    change: dict[str, Any] = {"previous": previous.run_id, "wall_s": round(current.wall_s - previous.wall_s, 3)}
    # A percentage only between runs of one kind: 12.9 s of compile against a 0.2 s no-op resume
    # or a preflight refusal is "+7468 %", true and useless.
    if previous.wall_s > 0 and current.compiled == previous.compiled:
        change["wall_pct"] = round(100 * (current.wall_s - previous.wall_s) / previous.wall_s, 1)
    if current.jobs is not None and previous.jobs is not None and current.jobs != previous.jobs:
        change["jobs_was"] = previous.jobs
    if current.peak_memory_bytes is not None and previous.peak_memory_bytes is not None:
        change["peak_memory_bytes"] = current.peak_memory_bytes - previous.peak_memory_bytes
    if current.cache_hit_rate is not None and previous.cache_hit_rate is not None:
        change["cache_hit_points"] = round(100 * (current.cache_hit_rate - previous.cache_hit_rate), 1)
    if current.outcome != previous.outcome:
        change["outcome_was"] = previous.outcome
    return change


def describe_change(change: Mapping[str, Any]) -> str:
    """One cell: `−26.8s (−34%); jobs was 4; peak +0.1 GiB; was failed at compile`."""
    if not change.get("previous"):
        return "first build of these inputs"
    parts = [f"{_sign(change['wall_s'])}{fmt_seconds(abs(change['wall_s']))}"]
    if "wall_pct" in change:
        parts[0] += f" ({_sign(change['wall_pct'])}{abs(change['wall_pct']):.0f}%)"
    if "jobs_was" in change:
        parts.append(f"jobs was {change['jobs_was']}")
    if change.get("peak_memory_bytes"):
        delta = change["peak_memory_bytes"]
        parts.append(f"peak {_sign(delta)}{format_bytes(abs(delta))}")
    if change.get("cache_hit_points"):
        parts.append(f"cache {change['cache_hit_points']:+.0f} pts")
    if "outcome_was" in change:
        parts.append(f"was {change['outcome_was']}")
    return "; ".join(parts)


def _sign(value: float) -> str:
    return "+" if value >= 0 else "−"


def history_rows(summaries: Sequence[Mapping[str, Any]]) -> list[HistoryRow]:
    """One row per build, oldest first, each compared with the previous build of its inputs."""
    rows: list[HistoryRow] = []
    last_of: dict[str, HistoryRow] = {}
    for summary in sorted(summaries, key=lambda s: str(s.get("run_id", ""))):
        row = _row(summary)
        row = HistoryRow(**{**asdict(row), "change": compare(row, last_of.get(row.inputs))})
        last_of[row.inputs] = row
        rows.append(row)
    return rows


def load_runs(logs_dir: Path) -> list[dict[str, Any]]:
    """Every run folder's `summary.json` (with its trace's `otherData` under `"trace"`).

    `latest` is a link to one of them and is skipped; a folder without a readable summary (a
    build killed with -9 before writing it) is left out rather than failing the whole history.
    """
    runs = []
    for path in sorted(logs_dir.glob(f"*/{SUMMARY}")):
        if path.parent.is_symlink():
            continue
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        with contextlib.suppress(OSError, ValueError, AttributeError):  # runs before traces existed
            summary[TRACE_META] = json.loads(RunFolder(path.parent).trace.read_text()).get("otherData") or {}
        runs.append(summary)
    return runs
