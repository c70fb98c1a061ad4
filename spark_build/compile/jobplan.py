"""How many compile jobs fit: memory sizes, per-object estimates, the job plan, job records.

A vLLM compile job is not cheap (0.1–9.1 GB peak per object for 0.13.0 / sm_121a, see
`shared/data/vllm-0.13.0-sm121a-compile-profile.json`) and on a DGX Spark the memory is
shared with the GPU, so `MAX_JOBS = nproc` gets jobs OOM-killed while `budget // largest`
wastes most of the machine. The plan here is pure data: it reads no environment and runs
nothing, so every decision is a unit test; `governor.Governor` enforces it at run time with
`decide`, the pure rule for which running jobs to pause and which paused ones to resume.

Records: each compile writes `logs/<run-id>/jobs.json` (`write_jobs_json`): per object its
sampled peak RSS and its duration from Ninja's `.ninja_log`. The next plan reads them back
(`load_estimates`) so estimates come from the same source's earlier builds, and from the
measured default profile only for objects never built before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_build.compile.ninjalog import CMAKE_PROBE_PREFIX, NinjaLogEntry, normalize_object
from spark_build.errors import SparkBuildError, UsageError
from spark_build.layout import RunFolder
from spark_build.sizes import KIB, format_bytes

# The share of objects whose peak a planned job slot is sized for. The rest (CUTLASS sm120 /
# FP4 units at 6.5–9.1 GB) are the governor's to hold back when they coincide; sizing every
# slot for them is the static-safe plan that halves throughput.
SLOT_QUANTILE = 0.75
# The measured compile every object never built before is planned from (shipped as package data).
# The full vLLM 0.13.0 compile for 12.1a: all 389 objects of its five targets.
DEFAULT_PROFILE = Path(__file__).parents[1] / "data" / "vllm-0.13.0-sm121a-full-compile-profile.json"
JOBS_JSON_VERSION = 1


def cpu_count() -> int:
    """CPUs this process may run on: `sched_getaffinity` respects taskset and container cpusets,
    where `os.cpu_count()` reports the host's cores and overbooks a pinned build."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def quantile(values: Sequence[int], q: float) -> int:
    """The `q` quantile (nearest rank) — no numpy for one number."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class JobPlan:
    """What the compile step exports (`MAX_JOBS`, `NVCC_THREADS`) and what the governor enforces."""

    max_jobs: int
    nvcc_threads: int
    budget_bytes: int
    per_job_bytes: int
    reason: str
    limited_by: str  # "memory", "cpus" or "--jobs"

    @property
    def concurrent_jobs(self) -> int:
        """Ninja's `-j`: vLLM's setup.py divides MAX_JOBS by NVCC_THREADS (`compute_num_jobs`)."""
        return max(1, self.max_jobs // self.nvcc_threads)

    def with_concurrent_jobs(self, ninja_jobs: int) -> JobPlan:
        """The same plan at another Ninja `-j` (the OOM rerun): MAX_JOBS follows from it."""
        return dataclasses.replace(self, max_jobs=max(1, ninja_jobs) * self.nvcc_threads)

    def env(self) -> dict[str, str]:
        """What vLLM's setup.py reads; the only place MAX_JOBS and NVCC_THREADS are spelled."""
        return {"MAX_JOBS": str(self.max_jobs), "NVCC_THREADS": str(self.nvcc_threads)}


def plan_jobs(
    available_bytes: int,
    reserve_bytes: int,
    estimates: Mapping[str, int],
    cpus: int,
    nvcc_threads: int = 1,
    jobs_override: int | None = None,
    mem_budget: int | None = None,
) -> JobPlan:
    """Plan `MAX_JOBS`/`NVCC_THREADS` from memory available *now* (a running model counts), a
    reserve kept for the rest of the machine, per-object peak estimates and the CPUs.

    A job slot is sized for the 75th-percentile object peak times `nvcc_threads` (each nvcc
    thread compiles one gencode target at once); heavier objects are the governor's to hold
    back. `jobs_override` (`--jobs`) wins but the budget is still planned for the governor.
    """
    if not estimates:
        raise ValueError("plan_jobs needs at least one object estimate")
    if cpus < 1 or nvcc_threads < 1:
        raise ValueError(f"cpus={cpus} and nvcc_threads={nvcc_threads} must be >= 1")
    budget = available_bytes - reserve_bytes
    budget_why = f"{format_bytes(available_bytes)} available − {format_bytes(reserve_bytes)} reserve"
    if mem_budget is not None and mem_budget < budget:
        budget, budget_why = mem_budget, f"--mem-budget {format_bytes(mem_budget)}"
    if budget <= 0:
        raise SparkBuildError(
            f"no memory left for the compile: {budget_why}",
            hint="free memory (stop a running model or notebook) or lower the reserve",
            step="compile",
        )
    peaks = list(estimates.values())
    largest_name, largest = max(estimates.items(), key=lambda kv: kv[1])
    per_job = quantile(peaks, SLOT_QUANTILE) * nvcc_threads
    memory_jobs = max(1, budget // per_job)
    cpu_jobs = max(1, cpus // nvcc_threads)
    if jobs_override is not None:
        if jobs_override < 1:
            raise UsageError(f"--jobs {jobs_override} must be at least 1", hint="give --jobs 1 or more")
        max_jobs, limited_by = jobs_override, "--jobs"
        why = f"set by --jobs (plan would allow {min(memory_jobs, cpu_jobs) * nvcc_threads})"
    elif memory_jobs < cpu_jobs:
        max_jobs, limited_by = memory_jobs * nvcc_threads, "memory"
        why = f"limited by memory (CPUs would allow {cpu_jobs} jobs)"
    else:
        max_jobs, limited_by = cpu_jobs * nvcc_threads, "cpus"
        why = f"limited by {cpus} CPUs (memory would allow {memory_jobs} jobs)"
    jobs_note = (
        f" ({max(1, max_jobs // nvcc_threads)} Ninja jobs × NVCC_THREADS={nvcc_threads})" if nvcc_threads > 1 else ""
    )
    reason = (
        f"MAX_JOBS={max_jobs}{jobs_note} {why}: slots of {format_bytes(per_job)} "
        f"(75th-percentile object peak × NVCC_THREADS={nvcc_threads}) in a {format_bytes(budget)} budget "
        f"({budget_why}); largest object {largest_name} peaks at {format_bytes(largest)}"
    )
    if largest > budget:
        reason += " — more than the whole budget, it may be OOM-killed even alone"
    return JobPlan(max_jobs, nvcc_threads, budget, per_job, reason, limited_by)


@dataclass(frozen=True)
class Estimates:
    """Per-object peak bytes (and seconds, where known), with where they came from for the log."""

    peaks: Mapping[str, int]
    seconds: Mapping[str, float]
    origin: str


def cmake_target_of(obj: str) -> str:
    """`_vllm_fa3_C.dir/hopper/x.cu.o` → `_vllm_fa3_C`."""
    return normalize_object(obj).split(".dir/", 1)[0]


def estimates_from(
    records: Sequence[Mapping[str, Any]],
    profile: Mapping[str, Any] | None,
    targets: frozenset[str] | None = None,
) -> Estimates:
    """Merge the default profile with earlier builds' `jobs.json` documents (oldest first).

    A finished record replaces the profile's value (same source, same flags: a better guess than
    a measurement of another build), but never lowers what an earlier record of this source saw:
    a compiler-cache hit finishes in milliseconds at a tiny peak and says nothing about the
    compile it skipped. A job killed before it finished only raises the estimate, since its
    recorded peak is a lower bound. With `targets` (the CMake targets setup.py builds), the
    profile's objects of other targets are left out: FA3's 224 objects, skipped for a 12.x
    target, would otherwise lower every slot the planner sizes.
    """
    peaks: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for row in (profile or {}).get("objects", []):
        if targets is not None and cmake_target_of(row["object"]) not in targets:
            continue
        name = normalize_object(row["object"])
        peaks[name] = int(row["peak_rss_mb"]) * KIB**2
        seconds[name] = float(row.get("wall_s") or 0.0)
    learned: set[str] = set()
    for doc in records:
        for row in doc.get("objects", []):
            peak = row.get("peak_rss_bytes")
            name = normalize_object(row["object"])
            # jobs.json written before CMake's compiler checks were left out holds them as unfinished
            if not isinstance(peak, int) or peak <= 0 or name.startswith(CMAKE_PROBE_PREFIX):
                continue
            if row.get("finished", True):
                peaks[name] = max(peak, peaks[name]) if name in learned else peak
                learned.add(name)
                if row.get("duration_s"):
                    seconds[name] = float(row["duration_s"])
            else:
                peaks[name] = max(peak, peaks.get(name, 0))
    if not peaks:
        raise SparkBuildError(
            "no per-object memory estimates: no earlier build records and no default profile",
            hint="restore shared/data/vllm-0.13.0-sm121a-compile-profile.json or pass --jobs N",
            step="compile",
        )
    origin = (
        f"{len(learned)} objects from {len(records)} earlier build record(s), "
        f"{len(set(peaks) - learned)} from the default profile"
    )
    return Estimates(peaks, seconds, origin)


def load_estimates(
    records: Iterable[Path],
    default_profile_path: Path | None,
    *,
    source: str | None = None,
    targets: frozenset[str] | None = None,
) -> Estimates:
    """Read earlier builds' records and the default profile.

    `records` are `jobs.json` files, run folders holding one, or a logs folder of run folders.
    With `source` (e.g. `vllm@<commit> 12.1a`) only records written for that source count —
    another commit's or arch's objects cost differently. A record that cannot be read is
    skipped, not trusted: a bad guess costs a slower or OOM-retried build, never a wrong wheel.
    """
    files: list[Path] = []
    for path in records:
        if path.is_dir():
            own = RunFolder(path).jobs
            files.extend([own] if own.exists() else sorted(path.glob(f"*/{own.name}")))
        else:
            files.append(path)
    docs: list[tuple[float, Mapping[str, Any]]] = []
    for path in files:
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") == JOBS_JSON_VERSION and (source is None or doc.get("source") == source):
                docs.append((path.stat().st_mtime, doc))
        except (OSError, ValueError, AttributeError):
            continue
    profile = None
    if default_profile_path is not None and default_profile_path.exists():
        profile = json.loads(default_profile_path.read_text())
    return estimates_from([doc for _, doc in sorted(docs, key=lambda d: d[0])], profile, targets)


@dataclass(frozen=True)
class JobState:
    """One compile job as the decision sees it: a direct child of Ninja and all it spawned."""

    pid: int
    started: float
    rss: int
    predicted_peak: int
    stopped: bool
    # Seconds the job could wait without moving the build's predicted end (`eta.Forecast.slack_s`);
    # infinite when no durations are known, and then age alone orders the jobs.
    slack_s: float = math.inf

    @property
    def growth(self) -> int:
        """Memory the job is still expected to take; an estimate it already passed predicts none."""
        return max(0, self.predicted_peak - self.rss)


# A job with less slack than this is on or near the critical path: a pause lasts until another
# job ends and frees its memory, about a median object's time (68 s in the shipped profile, 97 s
# after the FA3 patch), and a job with less slack than a pause delays the wheel by the difference.
CRITICAL_SLACK_S = 120.0


def admission_order(jobs: Sequence[JobState]) -> list[JobState]:
    """Jobs near the critical path first, then the rest; oldest first within each.

    The last admitted is the first paused, so a job whose delay moves the end (the longest
    object Ninja started late) is paused last. Among jobs with slack a delay costs nothing,
    and age decides: a young job has grown least, and a stopped job keeps what it holds —
    pausing half-grown jobs by slack alone (a first version of this rule) filled the budget
    with held memory: 5.9× the CPU ideal against 1.6× by age in `benchmarks/schedule_sim.py`
    (165 objects, critical-path order, a Spark with a 40 GB model loaded).
    """
    return sorted(jobs, key=lambda j: (j.slack_s >= CRITICAL_SLACK_S, j.started, j.pid))


def decide(
    jobs: Sequence[JobState],
    available: int,
    low_mark: int,
    high_mark: int,
    max_running: int | None = None,
) -> tuple[list[int], list[int]]:
    """Which jobs to stop and which to resume, in `admission_order`.

    `available` is what the build may still take (budget − tree RSS, capped by the system's
    available memory less the reserve); stopped jobs keep their RSS, so they are already in it.
    A job runs if its predicted growth still leaves `low_mark` free (`high_mark` for a stopped
    job, so a job does not flap at the edge). The first in the order always runs, so the build
    progresses: the oldest of the most critical jobs (without durations, the oldest job: the
    one closest to finishing and freeing memory).
    """
    headroom = available
    to_stop: list[int] = []
    to_resume: list[int] = []
    running = 0
    for index, job in enumerate(admission_order(jobs)):
        mark = high_mark if job.stopped else low_mark
        slot_free = max_running is None or running < max_running
        admit = index == 0 or (slot_free and headroom - job.growth >= mark)
        if admit:
            headroom -= job.growth
            running += 1
            if job.stopped:
                to_resume.append(job.pid)
        elif not job.stopped:
            to_stop.append(job.pid)
    return to_stop, to_resume


@dataclass(frozen=True)
class JobRecord:
    """What the governor saw of one object's job: the sum of its process tree's RSS at its peak."""

    object: str
    peak_rss_bytes: int
    seen_s: float
    stopped_s: float = 0.0
    times_stopped: int = 0


def write_jobs_json(
    path: Path,
    records: Iterable[JobRecord],
    ninja_log: Iterable[NinjaLogEntry],
    *,
    source: str | None = None,
) -> None:
    """Write `logs/<run-id>/jobs.json` atomically (temp, fsync, rename) for the next plan."""
    durations = {e.object: (e.end_ms - e.start_ms) / 1000 for e in ninja_log}
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        name = normalize_object(rec.object)
        if name.startswith(CMAKE_PROBE_PREFIX):
            continue  # a compiler check of CMake's configure: never in .ninja_log, so never "finished"
        rows[name] = {
            "object": name,
            "peak_rss_bytes": rec.peak_rss_bytes,
            "duration_s": durations.get(name, round(rec.seen_s, 3)),
            "finished": name in durations,
            "stopped_s": round(rec.stopped_s, 3),
            "times_stopped": rec.times_stopped,
        }
    for name, seconds in durations.items():  # too short to be sampled: time only
        rows.setdefault(name, {"object": name, "peak_rss_bytes": None, "duration_s": seconds, "finished": True})
    doc = {"version": JOBS_JSON_VERSION, "source": source, "objects": sorted(rows.values(), key=lambda r: r["object"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jobs.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(doc, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
