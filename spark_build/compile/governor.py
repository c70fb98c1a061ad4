"""Run-time memory governor: keeps the compile's running jobs inside the memory budget.

Why SIGSTOP and not a jobserver (measured, see benchmarks/RESULTS.md): vLLM's setup.py always
runs `cmake --build . -j=N`, and Ninja 1.13 (1.13.0 added the GNU make jobserver client; 1.13.2
is on PyPI) ignores the jobserver whenever `-j` is given; the system Ninja 1.11 has no client at
all. Jobserver tokens are also anonymous — Ninja picks the edge after taking a token, so a
token cannot be sized for the 9 GB object it ends up running — and a token cannot take back
memory from a job already growing. Sampling the process tree instead sees which object each
job compiles (its `-o`), what it holds now and what it is predicted to reach, and pauses jobs
(SIGSTOP) before the sum outgrows the budget, resuming them (SIGCONT) as others finish. Which
job: the youngest, except that with per-object durations a job near the critical path (little
slack, `eta.Forecast`) is paused last, so the longest object never waits for a short one.
Ninja does not notice: it waits for its children without WUNTRACED.

Use it only as a context manager around the wait for the build, so every exit resumes what it
stopped — success, exception, Ctrl-C and SIGTERM (it chains its own handler in front of the
caller's; a stopped process cannot act on SIGINT/SIGTERM until it is continued):

    with Governor(build.pid, budget_bytes=plan.budget_bytes, estimates=est.peaks,
                  default_peak=plan.per_job_bytes, reserve_bytes=reserve) as gov:
        returncode = build.wait()
    write_jobs_json(RunFolder(run_dir).jobs, gov.job_records(), parse_ninja_log(ninja_log))
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Protocol

import psutil

from spark_build.compile.eta import Forecast, RunningJob, forecast
from spark_build.compile.jobplan import CRITICAL_SLACK_S, JobRecord, JobState, decide
from spark_build.compile.ninjalog import normalize_object

__all__ = ["Governor", "JobState", "ProcInfo", "ProcessTable", "PsutilProcessTable", "decide", "object_of"]

SCHEDULERS = frozenset({"ninja", "make", "gmake", "samu"})


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    name: str
    rss: int
    started: float
    cmdline: tuple[str, ...] = ()


class ProcessTable(Protocol):
    """The world the governor acts on; tests pass a fake one to drive `Governor.tick`."""

    def snapshot(self, root_pid: int) -> list[ProcInfo]: ...

    def send(self, pid: int, sig: int) -> None: ...


class PsutilProcessTable:
    """Reads the tree from /proc through psutil: 4.4 ms of CPU per sample for a 61-process tree on a
    busy 2-core machine (measured, benchmarks/RESULTS.md) — under 1% of one core at 0.5 s."""

    def __init__(self) -> None:
        self._cmdlines: dict[tuple[int, float], tuple[str, ...]] = {}

    def snapshot(self, root_pid: int) -> list[ProcInfo]:
        try:
            root = psutil.Process(root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        out = []
        for proc in procs:
            try:
                with proc.oneshot():
                    info = ProcInfo(proc.pid, proc.ppid(), proc.name(), proc.memory_info().rss, proc.create_time())
            except psutil.Error:
                continue
            out.append(info)
        return out

    def cmdline(self, pid: int, started: float) -> tuple[str, ...]:
        key = (pid, started)
        if key not in self._cmdlines:
            try:
                self._cmdlines[key] = tuple(psutil.Process(pid).cmdline())
            except psutil.Error:
                return ()
        return self._cmdlines[key]

    def send(self, pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def object_of(cmdline: Sequence[str]) -> str | None:
    """The object a compile job writes: its last `-o`, also inside `sh -c "…"` as Ninja runs it."""
    args = list(cmdline)
    if len(args) >= 3 and args[1] == "-c" and args[0].rsplit("/", 1)[-1] in {"sh", "bash", "dash"}:
        try:
            args = shlex.split(args[2])
        except ValueError:
            args = args[2].split()
    found = None
    for i, arg in enumerate(args):
        if arg == "-o" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("-o="):
            found = arg[2:]
    return normalize_object(found) if found else None


@dataclass
class _Seen:
    object: str
    peak: int = 0
    first: float = 0.0
    last: float = 0.0
    stopped_since: float | None = None
    stopped_s: float = 0.0
    times_stopped: int = 0


@dataclass
class _Stopped:
    pids: set[int] = field(default_factory=set)


def _is_scheduler(info: ProcInfo) -> bool:
    return info.name in SCHEDULERS


class Governor:
    """Samples the build's process tree every `interval_s` and stops/resumes compile jobs so
    that their predicted peaks stay inside `budget_bytes` and the system keeps `reserve_bytes`.

    `read_available(tree_rss)` returns what the build may still take; the default is
    min(budget − tree RSS, psutil available − reserve). Tests inject it, the process table and
    the clock, so decisions are checked without a machine of a given size.

    With `seconds` (per-object durations) and `slots` (jobs at once: the lesser of the CPUs and
    Ninja's `-j`), every sample also forecasts the rest of the build (`eta.forecast`): a job
    near the critical path is paused last, the journal says each pause's slack, and
    `on_forecast` hears the forecast for the status line. `finished` returns the objects built
    so far with their seconds (`eta.FinishedObjects` on the build tree); without it, the jobs
    the governor saw end count as built.
    """

    def __init__(
        self,
        root_pid: int,
        *,
        budget_bytes: int,
        default_peak: int,
        estimates: Mapping[str, int] | None = None,
        reserve_bytes: int = 0,
        interval_s: float = 0.5,
        low_mark: int | None = None,
        high_mark: int | None = None,
        max_running: int | None = None,
        read_available: Callable[[int], int] | None = None,
        processes: ProcessTable | None = None,
        is_scheduler: Callable[[ProcInfo], bool] = _is_scheduler,
        clock: Callable[[], float] = time.monotonic,
        install_signal_handlers: bool = True,
        journal: Callable[[dict[str, object]], None] | None = None,
        seconds: Mapping[str, float] | None = None,
        slots: int = 1,
        finished: Callable[[], Mapping[str, float]] | None = None,
        on_forecast: Callable[[Forecast], None] | None = None,
    ) -> None:
        self.root_pid = root_pid
        # Hears each sample and each pause/resume (epoch time), for the build's trace.json.
        self._journal = journal or (lambda _row: None)
        self.budget_bytes = budget_bytes
        self.default_peak = default_peak
        self.estimates = {normalize_object(k): v for k, v in (estimates or {}).items()}
        self.seconds = {normalize_object(k): v for k, v in (seconds or {}).items()}
        self.slots = slots
        self._read_finished = finished or self._seen_finished
        self._on_forecast = on_forecast or (lambda _forecast: None)
        self.last_forecast: Forecast | None = None
        self.interval_s = interval_s
        self.low_mark = budget_bytes // 50 if low_mark is None else low_mark
        self.high_mark = budget_bytes // 25 if high_mark is None else high_mark
        self.max_running = max_running
        self._reserve = reserve_bytes
        self._read_available = read_available or self._system_available
        self._table: ProcessTable = processes or PsutilProcessTable()
        self._is_scheduler = is_scheduler
        self._clock = clock
        self._install_handlers = install_signal_handlers
        self._lock = threading.RLock()
        self._closing = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped: dict[int, _Stopped] = {}
        self._seen: dict[tuple[int, float], _Seen] = {}
        self._job_keys: dict[int, tuple[int, float]] = {}
        self._ended: dict[str, float] = {}  # objects whose job the governor saw end, with its seconds
        self._previous_handlers: dict[int, object] = {}
        self.peak_tree_rss = 0
        self.stops = 0
        self.sample_seconds = 0.0
        self.samples = 0
        self.sample_errors = 0  # for the step's log: a governor that cannot sample governs nothing
        self.last_error: str | None = None

    def _system_available(self, tree_rss: int) -> int:
        return min(self.budget_bytes - tree_rss, psutil.virtual_memory().available - self._reserve)

    # -- one sample -------------------------------------------------------------------------
    def tick(self) -> None:
        """Sample the tree once and act; the thread calls this every `interval_s`."""
        began = time.perf_counter()
        procs = self._table.snapshot(self.root_pid)
        now = self._clock()
        children: dict[int, list[ProcInfo]] = {}
        for info in procs:
            children.setdefault(info.ppid, []).append(info)
        tree_rss = sum(p.rss for p in procs)
        self.peak_tree_rss = max(self.peak_tree_rss, tree_rss)
        jobs: list[JobState] = []
        subtrees: dict[int, list[int]] = {}
        for sched in (p for p in procs if self._is_scheduler(p)):
            for job in children.get(sched.pid, []):
                tree = _subtree(job, children)
                if any(self._is_scheduler(p) for p in tree[1:]):
                    continue  # a nested build tool: its own children are the jobs
                subtrees[job.pid] = [p.pid for p in tree]
                jobs.append(self._job_state(job, sum(p.rss for p in tree), now))
        available = self._read_available(tree_rss)
        with self._lock:
            if self._closing:
                return
            live = {j.pid for j in jobs}
            for pid in [p for p in self._stopped if p not in live]:
                self._forget_stopped(pid, now)
            self._note_ended(live, now)
            try:
                outlook = self._forecast(jobs, now, tree_rss)
            except Exception as exc:  # noqa: BLE001 - without a forecast the memory guard still acts, by age
                outlook, self.last_error = None, repr(exc)
            if outlook is not None:
                jobs = [dataclasses.replace(j, slack_s=outlook.slack_s(self._object(j.pid))) for j in jobs]
            to_stop, to_resume = decide(jobs, available, self.low_mark, self.high_mark, self.max_running)
            for pid in to_stop:
                self._stop(pid, subtrees[pid], now)
                self._note_event("pause", pid, outlook)
            for pid in to_resume:
                self._resume(pid, subtrees[pid], now)
                self._note_event("resume", pid, outlook)
            for pid, held in self._stopped.items():  # children forked just before the stop
                for child in subtrees.get(pid, []):
                    if child not in held.pids:
                        self._table.send(child, signal.SIGSTOP)
                        held.pids.add(child)
        self.samples += 1
        self.sample_seconds += time.perf_counter() - began
        held_back = sum(1 for j in jobs if j.pid in self._stopped)
        row: dict[str, object] = {
            "t": time.time(),
            "available_bytes": available,
            "budget_bytes": self.budget_bytes,
            "used_bytes": tree_rss,
            "running": len(jobs) - held_back,
            "held": held_back,
        }
        if outlook is not None:
            row |= {
                "objects_done": outlook.objects_done,
                "objects_total": outlook.objects_total,
                "work_done": round(outlook.work_done, 4),
                "eta_s": round(outlook.eta_s, 1),
            }
            self.last_forecast = dataclasses.replace(outlook, running=len(jobs) - held_back, held=held_back)
            self._on_forecast(self.last_forecast)
        self._journal(row)

    def _forecast(self, jobs: Sequence[JobState], now: float, tree_rss: int) -> Forecast | None:
        """The rest of the build as it stands, when durations are known; None without them.

        `.ninja_log` times a job from start to end, held time included: less what this governor
        held each object, so pauses do not make the machine look slower than it is."""
        if not self.seconds:
            return None
        held = {seen.object: seen.stopped_s for seen in self._seen.values() if seen.stopped_s}
        finished = {obj: max(0.0, took - held.get(obj, 0.0)) for obj, took in self._read_finished().items()}
        running = [RunningJob(self._object(j.pid), self._ran_s(j.pid, now), j.stopped) for j in jobs]
        return forecast(
            self.seconds,
            finished,
            running,
            self.slots,
            peaks=self.estimates,
            budget_bytes=self.budget_bytes,
            used_bytes=tree_rss,
        )

    def _note_event(self, event: str, pid: int, outlook: Forecast | None) -> None:
        """A journal row per pause/resume; with a forecast it says why this job: its slack."""
        seen = self._seen_by_pid(pid)
        row: dict[str, object] = {"t": time.time(), "event": event, "object": seen.object if seen else None}
        if outlook is not None and seen is not None:
            slack = outlook.slack_s(seen.object)
            left = outlook.remaining_s.get(seen.object, 0.0)
            if slack < CRITICAL_SLACK_S:
                why = "on the critical path" + (": every job is" if event == "pause" else "")
            else:
                why = "off the critical path" + (": delaying it costs nothing" if event == "pause" else "")
            row |= {
                "slack_s": round(slack, 1),
                "detail": f"slack {slack:.0f} s, {why} (≈{left:.0f} s of its own left, build ≈{outlook.eta_s:.0f} s)",
            }
        self._journal(row)

    def _object(self, pid: int) -> str:
        seen = self._seen_by_pid(pid)
        return seen.object if seen is not None else f"pid-{pid}"

    def _ran_s(self, pid: int, now: float) -> float:
        """Seconds the job has computed: seen time less time held stopped."""
        seen = self._seen_by_pid(pid)
        if seen is None:
            return 0.0
        held = seen.stopped_s + (now - seen.stopped_since if seen.stopped_since is not None else 0.0)
        return max(0.0, now - seen.first - held)

    def _note_ended(self, live: set[int], now: float) -> None:
        for pid in [p for p in self._job_keys if p not in live]:
            seen = self._seen.get(self._job_keys.pop(pid))
            if seen is not None and not seen.object.startswith("pid-"):
                self._ended[seen.object] = seen.last - seen.first

    def _seen_finished(self) -> Mapping[str, float]:
        return self._ended

    def _job_state(self, job: ProcInfo, rss: int, now: float) -> JobState:
        key = (job.pid, job.started)
        seen = self._seen.get(key)
        if seen is None:
            cmd = job.cmdline or _cmdline(self._table, job)
            seen = self._seen[key] = _Seen(object_of(cmd) or f"pid-{job.pid}", first=now)
            self._job_keys[job.pid] = key
        seen.peak = max(seen.peak, rss)
        seen.last = now
        predicted = max(self.estimates.get(seen.object, self.default_peak), rss)
        return JobState(job.pid, job.started, rss, predicted, job.pid in self._stopped)

    def _seen_by_pid(self, pid: int) -> _Seen | None:
        key = self._job_keys.get(pid)
        return self._seen.get(key) if key is not None else None

    def _stop(self, pid: int, tree: list[int], now: float) -> None:
        held = self._stopped.setdefault(pid, _Stopped())
        for member in tree:  # parent first: a stopped nvcc driver spawns no new cicc
            self._table.send(member, signal.SIGSTOP)
            held.pids.add(member)
        self.stops += 1
        seen = self._seen_by_pid(pid)
        if seen is not None:
            seen.stopped_since, seen.times_stopped = now, seen.times_stopped + 1

    def _resume(self, pid: int, tree: list[int], now: float) -> None:
        held = self._stopped.pop(pid, _Stopped())
        for member in {*tree, *held.pids}:
            self._table.send(member, signal.SIGCONT)
        self._close_stopped_time(pid, now)

    def _forget_stopped(self, pid: int, now: float) -> None:
        """A held job vanished (killed while stopped): continue whatever of it is left."""
        for member in self._stopped.pop(pid).pids:
            self._table.send(member, signal.SIGCONT)
        self._close_stopped_time(pid, now)

    def _close_stopped_time(self, pid: int, now: float) -> None:
        seen = self._seen_by_pid(pid)
        if seen is not None and seen.stopped_since is not None:
            seen.stopped_s += now - seen.stopped_since
            seen.stopped_since = None

    # -- lifetime ---------------------------------------------------------------------------
    def resume_all(self) -> None:
        """SIGCONT every process this governor stopped and stop acting. Idempotent, and safe from
        a signal handler: the lock is re-entrant and waited on for at most a second."""
        self._closing = True
        locked = self._lock.acquire(timeout=1.0)
        try:
            now = self._clock()
            for pid in list(self._stopped):
                self._forget_stopped(pid, now)
        finally:
            if locked:
                self._lock.release()

    def start(self) -> Governor:
        if threading.current_thread() is threading.main_thread() and self._install_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[sig] = signal.signal(sig, self._on_signal)
        atexit.register(self.resume_all)
        self._thread = threading.Thread(target=self._run, name="spark-build-governor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and resume every process stopped; always call it (use `with`)."""
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        self.resume_all()
        if threading.current_thread() is threading.main_thread():  # handlers were set from there
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            self._previous_handlers.clear()
        atexit.unregister(self.resume_all)

    def __enter__(self) -> Governor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._closing:
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - one failed sample must not end the governing
                self.sample_errors += 1
                self.last_error = repr(exc)
            self._wake.wait(self.interval_s)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Resume first (a stopped job would sit on the signal forever), then the caller's handler."""
        self.resume_all()
        previous = self._previous_handlers.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    # -- records ----------------------------------------------------------------------------
    def job_records(self) -> list[JobRecord]:
        """Per object: peak RSS of its job's tree, seconds seen, seconds held stopped."""
        with self._lock:
            return [
                JobRecord(s.object, s.peak, s.last - s.first, s.stopped_s, s.times_stopped)
                for s in self._seen.values()
                if not s.object.startswith("pid-")
            ]


def _subtree(root: ProcInfo, children: Mapping[int, list[ProcInfo]]) -> list[ProcInfo]:
    out, todo = [], [root]
    while todo:
        proc = todo.pop()
        out.append(proc)
        todo.extend(children.get(proc.pid, []))
    return out


def _cmdline(table: ProcessTable, job: ProcInfo) -> tuple[str, ...]:
    reader = getattr(table, "cmdline", None)
    return tuple(reader(job.pid, job.started)) if reader is not None else ()
