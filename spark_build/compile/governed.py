"""One Ninja compile as the source build runs it, whoever starts Ninja: setup.py's `pip wheel` (the
compile step) or `ninja -C build TARGET…` (completing a prebuilt wheel).

Both get the same machinery, so a completion is no second-class build: the memory governor
around the process tree, the per-object forecast for the status line, `jobs.json` after every
attempt (a killed attempt still teaches the next plan), and one OOM rule — rerun with fewer jobs
in the same tree (`oom.retry_after_oom`). What differs is only how Ninja is started (`Launch`).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_build.compile import cache_stats
from spark_build.compile.eta import FinishedObjects, Forecast
from spark_build.compile.governor import Governor
from spark_build.compile.jobplan import Estimates, JobPlan, JobRecord, cmake_target_of, cpu_count, write_jobs_json
from spark_build.compile.ninjalog import (
    is_build_object,
    normalize_object,
    object_matcher,
    parse_ninja_lines,
    parse_ninja_log,
)
from spark_build.compile.oom import Attempt, OomKill, retry_after_oom
from spark_build.proc import log_tail

# Starts the build at a job plan, calling `on_start(pid)` once it runs; its exit status.
Launch = Callable[[JobPlan, Callable[[int], None]], int]


def objects_recorded(build_tree: Path) -> int:
    """How many objects (`is_build_object`: links are not) Ninja has recorded building under
    `build_tree`, rebuilds counted again; durations seeded before the first build (no mtime) are
    no builds. The difference before and after a compile is what it built."""
    logs = build_tree.glob("**/.ninja_log")
    lines = (line for log in logs for line in parse_ninja_lines(log.read_text(errors="replace")))
    return sum(1 for line in lines if line.mtime_s and is_build_object(line.object))


def ninja_outputs(commands: object, root: Path) -> list[str]:
    """Objects as Ninja names them: relative to the top build folder, wherever CMake put them.

    compile_commands.json may spell an output absolute (CMake 3.25 and 4.x do) or relative to
    the entry's folder; a subproject's objects (flash-attention's) sit below its own binary
    folder. Ninja's manifest names every one relative to the top, and a seeded line under any
    other name would be a dead entry that CMake's `ninja -t recompact` drops."""
    outputs: list[str] = []
    for entry in commands if isinstance(commands, list) else []:
        if not isinstance(entry, dict) or not entry.get("output"):
            continue
        path = Path(str(entry.get("directory", root))) / str(entry["output"])
        outputs.append(os.path.relpath(path, root))
    return outputs


def planned_objects(
    commands: object, root: Path, estimates: Estimates, targets: frozenset[str] | None
) -> dict[str, float]:
    """The objects this build compiles (`is_build_object`, of the targets built), named as
    `.ninja_log` names them, each with its expected seconds — the fixed total the progress line
    counts to. An object the estimates do not know takes their median: the shipped profile is
    0.13.0's, and a later release's new objects still count. Without a list of objects, the
    estimates' own objects."""
    names = {normalize_object(out) for out in ninja_outputs(commands, root)}
    objects = sorted(
        name for name in names if is_build_object(name) and (targets is None or cmake_target_of(name) in targets)
    )
    if not objects:
        return dict(estimates.seconds)
    match = object_matcher(estimates.seconds)
    default = statistics.median(estimates.seconds.values()) if estimates.seconds else 0.0
    return {name: estimates.seconds[known] if (known := match(name)) else default for name in objects}


class GovernorJournal:
    """`governor.jsonl`: one line per sample or event, appended as they happen, so a killed
    build still leaves its memory timeline for the trace (a torn last line is skipped there)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: Mapping[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, default=str) + "\n")


@dataclass(frozen=True)
class GovernedCompile:
    """What governing one compile needs, resolved by its caller."""

    estimates: Estimates
    source: str  # jobs.json's key: only records of the same source and arch plan the next build
    objects: Mapping[str, float] | None  # the planned objects and their seconds; None: no forecast
    build_tree: Path  # searched for `.ninja_log` (objects done, durations for jobs.json)
    jobs_json: Path
    journal: GovernorJournal
    reserve_bytes: int
    log: Path  # the compile's log: an OOM kill is read from its tail
    on_forecast: Callable[[Forecast], None]


@dataclass(frozen=True)
class GovernedOutcome:
    plan: JobPlan  # the plan that finished (fewer jobs after an OOM kill)
    oom_retries: int
    peak_tree_rss_bytes: int
    governor_pauses: int

    def to_dict(self, planned: JobPlan) -> dict[str, int]:
        """The compile result's fields both callers report (summary.json, the timing table)."""
        return {
            "max_jobs": self.plan.max_jobs,
            "planned_jobs": planned.max_jobs,
            "nvcc_threads": planned.nvcc_threads,
            "budget_bytes": planned.budget_bytes,
            "oom_retries": self.oom_retries,
            "peak_tree_rss_bytes": self.peak_tree_rss_bytes,
            "governor_pauses": self.governor_pauses,
        }


class GovernedBuild:
    """One build of the tree under the memory governor; records every job it saw (`jobs.json`)
    after each attempt, so a killed attempt still teaches the next plan."""

    def __init__(self, spec: GovernedCompile, launch: Launch) -> None:
        self.spec, self.launch = spec, launch
        self.records: list[JobRecord] = []
        self.peak_tree = 0
        self.pauses = 0

    def peaks(self) -> dict[str, int]:
        return {r.object: r.peak_rss_bytes for r in self.records}

    def attempt(self, plan: JobPlan) -> Attempt:
        spec = self.spec
        governor: Governor | None = None

        def govern(pid: int) -> None:
            # Holds jobs back (SIGSTOP) when the tree would outgrow the budget: the youngest
            # first, never one near the critical path; its forecast feeds the status line.
            nonlocal governor
            governor = Governor(
                pid,
                budget_bytes=plan.budget_bytes,
                default_peak=plan.per_job_bytes,
                estimates=spec.estimates.peaks,
                reserve_bytes=spec.reserve_bytes,
                journal=spec.journal.write,
                seconds=spec.objects,
                slots=min(cpu_count(), plan.concurrent_jobs),
                finished=FinishedObjects(spec.build_tree),
                on_forecast=spec.on_forecast,
            ).start()

        try:
            code = self.launch(plan, govern)
        finally:
            if governor is not None:
                governor.stop()  # always: resumes every job it paused
                self.records += governor.job_records()
                self.peak_tree = max(self.peak_tree, governor.peak_tree_rss)
                self.pauses += governor.stops
            ninja = [e for p in spec.build_tree.glob("**/.ninja_log") for e in parse_ninja_log(p)]
            write_jobs_json(spec.jobs_json, self.records, ninja, source=spec.source)
        return Attempt(code, log_tail(spec.log) if code != 0 else "")


def governed_compile(
    spec: GovernedCompile, plan: JobPlan, launch: Launch, note: Callable[[str], None]
) -> GovernedOutcome:
    """Run the build, governed; after an OOM kill, rerun it with fewer jobs (objects already
    built are kept), each retry in the journal and one `note` line; any other failure raises."""
    governed = GovernedBuild(spec, launch)

    def on_retry(kills: list[OomKill], fewer: JobPlan) -> None:
        for kill in kills:
            spec.journal.write({"t": time.time(), "event": "oom-kill", "object": kill.object, "detail": kill.evidence})
        note(
            f"{kills[0].object or 'a job'} was killed for memory; rerunning with "
            f"{fewer.concurrent_jobs} jobs (objects already built are kept)"
        )
        spec.journal.write(
            {"t": time.time(), "event": "retry", "object": None, "detail": f"{fewer.concurrent_jobs} jobs"}
        )

    final, tries = retry_after_oom(governed.attempt, plan, log=spec.log, peaks=governed.peaks, on_retry=on_retry)
    return GovernedOutcome(final, tries, governed.peak_tree, governed.pauses)


def timing_detail(result: Mapping[str, Any]) -> str:
    """A compile's cell in the timing table, the compile step's and the completion's alike: the
    jobs it ran with, the objects it built (of how many, where the total is known), the cache."""
    total = result.get("objects_total")
    objects = f"{result.get('objects_built')}{f' of {total}' if total is not None else ''} objects"
    cell = f"MAX_JOBS {result.get('max_jobs')}, {objects}"
    cache = cache_stats.table_cell(result.get("cache"))
    return f"{cell}; {cache}" if cache else cell
