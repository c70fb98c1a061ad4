"""What the user sees and what the run leaves behind: step lines, a live status, the timing
table, `summary.json`, and `logs/latest`.

On a terminal a live status line shows the step, its elapsed time, the step's own progress
where it reports one (the compile: objects, share of CPU work, ETA, jobs, memory) and the last
line of output; elsewhere (CI, cron) a heartbeat line every 30 s says the same.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.status import Status
from rich.table import Table

from spark_build.compile.eta import Forecast
from spark_build.durable import atomic_write_text
from spark_build.layout import LATEST, RunFolder
from spark_build.pipeline.plan import StepPlan
from spark_build.proc import StatusSink
from spark_build.sizes import format_bytes


@dataclass
class StepOutcome:
    name: str
    status: str  # done | skipped | failed | interrupted | not run
    seconds: float
    reason: str
    exit_code: int | None = None
    detail: str = ""


def new_run_id(now: float, pid: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"-{pid}"


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def forecast_line(outlook: Forecast) -> str:
    """The compile's progress in one line: what is done, what is left, what holds it back."""
    parts = [
        f"{outlook.objects_done}/{outlook.objects_total} objects",
        f"{100 * outlook.work_done:.0f}% of CPU work",
        f"ETA {fmt_seconds(outlook.eta_s)}",
        f"{outlook.running} running, {outlook.held} held",
    ]
    if outlook.used_bytes is not None and outlook.budget_bytes:
        parts.append(f"{format_bytes(outlook.used_bytes)} of {format_bytes(outlook.budget_bytes)}")
    return " · ".join(parts)


def timing_rows(outcomes: Sequence[StepOutcome]) -> list[tuple[str, str, str, str, str]]:
    """(step, status, duration, share of total, detail) — the table printed after every run."""
    total = sum(o.seconds for o in outcomes) or 1.0
    rows = [(o.name, o.status, fmt_seconds(o.seconds), f"{100 * o.seconds / total:.0f}%", o.detail) for o in outcomes]
    rows.append(("total", "", fmt_seconds(sum(o.seconds for o in outcomes)), "100%", ""))
    return rows


class Progress(StatusSink):
    """Prints step lines and keeps the live status; also the runner's `StatusSink`."""

    def __init__(
        self,
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
        heartbeat: float = 30.0,
    ) -> None:
        self.console = console
        self.clock = clock
        self.heartbeat = heartbeat
        self._step = ""
        self._started = 0.0
        self._last_line = ""
        self._last_beat = 0.0
        self._progress = ""
        self._status: Status | None = None

    def plan(self, plans: Sequence[StepPlan], summaries: dict[str, str]) -> None:
        table = Table(title="build plan", show_lines=False)
        for column in ("step", "action", "why", "what it does"):
            table.add_column(column)
        for p in plans:
            table.add_row(p.name, p.action, p.reason, summaries.get(p.name, ""))
        self.console.print(table)

    def begin(self, step: str, summary: str) -> None:
        self._step, self._started, self._last_line, self._progress = step, self.clock(), "", ""
        self._last_beat = self._started
        self.console.print(f"▶ {step}: {summary}", highlight=False)
        if self.console.is_terminal:
            self._status = self.console.status(self._status_text())
            self._status.start()

    def end(self, step: str, status: str, seconds: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        self._step = ""
        mark = "✓" if status == "done" else "✕"
        self.console.print(f"{mark} {step} {status} in {fmt_seconds(seconds)}", highlight=False)

    def skip(self, step: str, reason: str) -> None:
        self.console.print(f"↷ {step} skipped: {reason}", highlight=False)

    def note(self, text: str) -> None:
        # Never wrapped: notes carry commands (the install line) that people copy and paste.
        self.console.print(f"  {text}", highlight=False, soft_wrap=True)

    # StatusSink
    def command(self, argv: Sequence[str]) -> None:
        self._last_line = "+ " + " ".join(argv)[:200]
        self._refresh()

    def line(self, text: str) -> None:
        self._last_line = text
        self._refresh()

    def tick(self) -> None:
        self._refresh()

    def progress(self, text: str) -> None:
        # Only stored: the governor's thread calls this, the main thread's tick shows it.
        self._progress = text

    def _status_text(self) -> str:
        elapsed = fmt_seconds(self.clock() - self._started)
        head = f"{self._step} {elapsed}" + (f"  {self._progress}" if self._progress else "")
        width = max(20, self.console.width - len(head) - 4)
        return f"{head}  {self._last_line[:width]}"

    def _refresh(self) -> None:
        # Outside a step there is no step to time: commands run before the first (the source plan
        # checks the patches) printed `…  24m03s  + git … apply` on `--resume`, timed from the
        # clock's zero, before the build's own first line.
        if not self._step:
            return
        if self._status is not None:
            self._status.update(self._status_text())
            return
        now = self.clock()
        if now - self._last_beat >= self.heartbeat:
            self._last_beat = now
            self.console.print(f"… {self._status_text()}", highlight=False, soft_wrap=True)

    def table(self, outcomes: Sequence[StepOutcome]) -> None:
        table = Table(title="timing")
        columns = (("step", "left"), ("status", "left"), ("duration", "right"), ("share", "right"), ("detail", "left"))
        for column, justify in columns:
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for row in timing_rows(outcomes):
            table.add_row(*row)
        self.console.print(table)


def write_summary(log_dir: Path, summary: dict[str, Any]) -> Path:
    path = RunFolder(log_dir).summary
    atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return path


def summary_payload(
    *,
    run_id: str,
    exit_code: int,
    ref: str,
    arch: str,
    outcomes: Sequence[StepOutcome],
    results: dict[str, dict[str, Any]],
    error: str | None,
    prebuilt: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What `invoke report` and `history` read; `prebuilt`: `--prefer-wheel`'s decision (found,
    taken or not and why), in the run that took the official wheel and in the build that replaced it."""
    compile_result = results.get("compile", {})
    return {
        **({"prefer_wheel": dict(prebuilt)} if prebuilt else {}),
        "run_id": run_id,
        "exit_code": exit_code,
        # The ref asked for: a run that failed before the clone has no commit to name it by.
        "ref": ref,
        "arch": arch,
        "error": error,
        "steps": [asdict(o) for o in outcomes],
        "total_seconds": round(sum(o.seconds for o in outcomes), 3),
        "max_jobs": compile_result.get("max_jobs"),
        "nvcc_threads": compile_result.get("nvcc_threads"),
        "wheel": compile_result.get("wheel"),
        "wheel_sha256": compile_result.get("sha256"),
        "compiler_cache": compile_result.get("cache"),
        "results": results,
    }


def point_latest(logs_dir: Path, run_dir: Path) -> None:
    """`logs/latest` → the newest run, swapped atomically (a reader never finds it missing)."""
    link = logs_dir / LATEST
    tmp = logs_dir / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)
