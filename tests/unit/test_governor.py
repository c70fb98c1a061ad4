"""The run-time governor: which jobs it holds back, and that it never leaves one stopped.

`decide` is pure; `Governor.tick` runs over a fake process table and clock. Real process trees
are in tests/integration/test_governor.py.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import psutil
import pytest

from spark_build.compile.eta import Forecast
from spark_build.compile.governor import Governor, JobState, ProcInfo, decide, object_of

MB = 2**20


def job(pid: int, started: float, rss_mb: int, peak_mb: int, stopped: bool = False) -> JobState:
    return JobState(pid, started, rss_mb * MB, peak_mb * MB, stopped)


# -- decide: pure --------------------------------------------------------------------------
DECISIONS = {
    "everything-fits-nothing-changes": (
        [job(1, 0, 500, 2000), job(2, 1, 100, 2000)],
        5000,
        ([], []),
    ),
    "youngest-stopped-when-predicted-growth-exceeds-available": (
        [job(1, 0, 500, 2000), job(2, 1, 300, 2000), job(3, 2, 100, 2000)],
        3500,
        ([3], []),
    ),
    "oldest-runs-even-when-it-alone-exceeds-the-budget": (
        [job(1, 0, 500, 9000), job(2, 1, 100, 2000)],
        1000,
        ([2], []),
    ),
    "stopped-older-job-resumes-before-a-younger-one-runs": (
        [job(1, 0, 800, 2000, stopped=True), job(2, 5, 100, 2000), job(3, 6, 100, 2000, stopped=True)],
        1500,
        ([2], [1]),
    ),
    "younger-small-job-may-pass-a-heavy-one-that-does-not-fit": (
        [job(1, 0, 1000, 2000), job(2, 1, 100, 9000, stopped=True), job(3, 2, 100, 600)],
        2000,
        ([], []),
    ),
    "running-job-stays-at-low-mark-stopped-one-needs-high-mark": (
        [job(1, 0, 1000, 2000), job(2, 1, 100, 1000), job(3, 2, 100, 1000, stopped=True)],
        3050,
        ([], []),
    ),
    "stopped-job-resumes-once-high-mark-is-clear": (
        [job(1, 0, 1000, 2000), job(2, 1, 100, 1000), job(3, 2, 100, 1000, stopped=True)],
        3400,
        ([], [3]),
    ),
    "job-past-its-estimate-is-predicted-to-grow-no-more": (
        [job(1, 0, 3000, 2000), job(2, 1, 100, 1000)],
        1100,
        ([], []),
    ),
    "all-stopped-the-oldest-is-resumed-so-the-build-progresses": (
        [job(1, 0, 100, 9000, stopped=True), job(2, 1, 100, 9000, stopped=True)],
        10,
        ([], [1]),
    ),
}


@pytest.mark.parametrize(("jobs", "available_mb", "expected"), DECISIONS.values(), ids=DECISIONS.keys())
def test_decide(jobs: list[JobState], available_mb: int, expected: tuple[list[int], list[int]]) -> None:
    assert decide(jobs, available_mb * MB, low_mark=100 * MB, high_mark=300 * MB) == expected


def critical(pid: int, started: float, rss_mb: int, peak_mb: int, slack_s: float, stopped: bool = False) -> JobState:
    return JobState(pid, started, rss_mb * MB, peak_mb * MB, stopped, slack_s)


# With durations known, a job near the critical path (slack < 120 s) is paused last; among the
# others, whose delay costs nothing, the youngest (it holds least) as without durations.
BY_SLACK = {
    "the-young-longest-object-runs-and-an-older-job-with-slack-is-paused": (
        [critical(1, 0, 500, 2000, slack_s=800), critical(2, 9, 100, 3000, slack_s=0)],
        3500,
        ([1], []),
    ),
    "among-jobs-with-slack-the-youngest-is-paused-not-the-one-with-most-slack": (
        [critical(1, 0, 100, 1500, 900), critical(2, 1, 100, 1500, 0), critical(3, 2, 100, 1500, 300)],
        3200,
        ([3], []),
    ),
    "the-held-critical-job-resumes-before-an-older-held-job-with-slack": (
        [critical(1, 0, 100, 2000, 900, stopped=True), critical(2, 1, 100, 2000, 50, stopped=True)],
        2500,
        ([], [2]),
    ),
    "a-held-job-turning-critical-takes-the-place-of-a-running-job-with-slack": (
        [critical(1, 0, 100, 2000, 500), critical(2, 1, 100, 2000, 100, stopped=True)],
        2500,
        ([1], [2]),
    ),
    "when-every-job-is-critical-the-youngest-is-paused": (
        [critical(1, 0, 100, 2000, 10), critical(2, 1, 100, 2000, 0)],
        2500,
        ([2], []),
    ),
}


@pytest.mark.parametrize(("jobs", "available_mb", "expected"), BY_SLACK.values(), ids=BY_SLACK.keys())
def test_decide_by_slack(jobs: list[JobState], available_mb: int, expected: tuple[list[int], list[int]]) -> None:
    assert decide(jobs, available_mb * MB, low_mark=100 * MB, high_mark=300 * MB) == expected


def test_max_running_keeps_one_job_per_cpu_slot() -> None:
    jobs = [job(i, i, 100, 200) for i in range(1, 5)]
    assert decide(jobs, 10_000 * MB, 0, 0, max_running=2) == ([3, 4], [])


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (["/bin/sh", "-c", "ccache nvcc -c a.cu -o CMakeFiles/_C.dir/csrc/a.cu.o -O3"], "_C.dir/csrc/a.cu.o"),
        (["/usr/bin/c++", "-c", "b.cpp", "-oCMakeFiles/_C.dir/b.cpp.o"], "_C.dir/b.cpp.o"),
        (["cicc", "--orig_src_file_name", "x.cu", "-o", "/tmp/w/CMakeFiles/_C.dir/x.cu.o.ptx"], "_C.dir/x.cu.o.ptx"),
        (["ninja", "-j", "4"], None),
    ],
    ids=["sh-c-as-ninja-runs-it", "joined-o", "absolute-path", "no-output"],
)
def test_job_object_comes_from_its_last_dash_o(cmdline: list[str], expected: str | None) -> None:
    assert object_of(cmdline) == expected


# -- Governor.tick over a fake world -------------------------------------------------------
class FakeTable:
    def __init__(self, procs: list[ProcInfo]) -> None:
        self.procs = procs
        self.signals: list[tuple[int, str]] = []

    def snapshot(self, root_pid: int) -> list[ProcInfo]:
        return list(self.procs)

    def send(self, pid: int, sig: int) -> None:
        self.signals.append((pid, signal.Signals(sig).name))


def compile_tree(job_rss_mb: tuple[int, int]) -> list[ProcInfo]:
    """pip → cmake --build → ninja → two `sh -c nvcc` jobs, the second with a cicc child."""
    cmd_a = ("/bin/sh", "-c", "nvcc -c a.cu -o CMakeFiles/_C.dir/a.cu.o")
    cmd_b = ("/bin/sh", "-c", "nvcc -c b.cu -o CMakeFiles/_C.dir/b.cu.o")
    return [
        ProcInfo(10, 1, "python3", 50 * MB, 0.0),
        ProcInfo(11, 10, "cmake", 10 * MB, 1.0),
        ProcInfo(12, 11, "ninja", 5 * MB, 2.0),
        ProcInfo(20, 12, "sh", 1 * MB, 3.0, cmd_a),
        ProcInfo(21, 20, "nvcc", job_rss_mb[0] * MB, 3.0),
        ProcInfo(30, 12, "sh", 1 * MB, 4.0, cmd_b),
        ProcInfo(31, 30, "nvcc", 1 * MB, 4.0),
        ProcInfo(32, 31, "cicc", job_rss_mb[1] * MB, 4.1),
    ]


def fake_governor(
    table: FakeTable, budget_mb: int, clock: Callable[[], float], journal: list[dict] | None = None
) -> Governor:
    return Governor(
        10,
        budget_bytes=budget_mb * MB,
        default_peak=1000 * MB,
        estimates={"_C.dir/a.cu.o": 2000 * MB, "_C.dir/b.cu.o": 3000 * MB},
        read_available=lambda tree_rss: budget_mb * MB - tree_rss,
        low_mark=100 * MB,
        high_mark=200 * MB,
        processes=table,
        clock=clock,
        install_signal_handlers=False,
        journal=None if journal is None else journal.append,
    )


def test_tick_stops_the_whole_youngest_job_and_resumes_it_when_the_older_one_is_done() -> None:
    now = [100.0]
    table = FakeTable(compile_tree((1500, 200)))
    gov = fake_governor(table, 4000, lambda: now[0])
    gov.tick()  # a: 1500 of 2000; b: 202 of 3000 -> 500 + 2798 more than 4000 - 1768 leaves
    assert table.signals == [(30, "SIGSTOP"), (31, "SIGSTOP"), (32, "SIGSTOP")]
    table.signals.clear()
    now[0] = 130.0
    table.procs = [p for p in compile_tree((1500, 200)) if p.pid not in (20, 21)]  # a finished
    gov.tick()
    assert sorted(table.signals) == [(30, "SIGCONT"), (31, "SIGCONT"), (32, "SIGCONT")]
    records = {r.object: r for r in gov.job_records()}
    assert records["_C.dir/b.cu.o"].times_stopped == 1
    assert records["_C.dir/b.cu.o"].stopped_s == 30.0
    assert records["_C.dir/a.cu.o"].peak_rss_bytes == 1501 * MB  # sh + nvcc


def test_the_journal_gets_a_sample_per_tick_and_each_pause_and_resume_for_the_trace() -> None:
    now, journal = [100.0], []
    table = FakeTable(compile_tree((1500, 200)))
    gov = fake_governor(table, 4000, lambda: now[0], journal)
    gov.tick()
    table.procs = [p for p in compile_tree((1500, 200)) if p.pid not in (20, 21)]
    gov.tick()
    events = [(row["event"], row["object"]) for row in journal if "event" in row]
    assert events == [("pause", "_C.dir/b.cu.o"), ("resume", "_C.dir/b.cu.o")]
    samples = [row for row in journal if "event" not in row]
    assert [(s["running"], s["held"]) for s in samples] == [(1, 1), (1, 0)]
    assert all(s["budget_bytes"] == 4000 * MB and s["used_bytes"] > 0 for s in samples)


def test_with_durations_the_longest_object_runs_and_the_journal_says_why_the_other_was_paused() -> None:
    journal: list[dict] = []
    forecasts: list[Forecast] = []
    table = FakeTable(compile_tree((1500, 200)))  # b is the younger job and would be paused by age
    gov = Governor(
        10,
        budget_bytes=4000 * MB,
        default_peak=1000 * MB,
        estimates={"_C.dir/a.cu.o": 2000 * MB, "_C.dir/b.cu.o": 3000 * MB},
        read_available=lambda tree_rss: 4000 * MB - tree_rss,
        low_mark=100 * MB,
        high_mark=200 * MB,
        processes=table,
        clock=lambda: 100.0,
        install_signal_handlers=False,
        journal=journal.append,
        seconds={"_C.dir/a.cu.o": 30.0, "_C.dir/b.cu.o": 900.0, "_C.dir/c.cu.o": 60.0},
        slots=2,
        finished=lambda: {"_C.dir/c.cu.o": 61.0},
        on_forecast=forecasts.append,
    )
    gov.tick()
    assert table.signals == [(20, "SIGSTOP"), (21, "SIGSTOP")]  # a, not the 900 s b
    pause = next(row for row in journal if row.get("event") == "pause")
    assert pause["object"] == "_C.dir/a.cu.o"
    assert pause["slack_s"] == 870.0
    assert pause["detail"].startswith("slack 870 s, off the critical path: delaying it costs nothing")
    sample = next(row for row in journal if "event" not in row)
    assert (sample["objects_done"], sample["objects_total"], sample["eta_s"]) == (1, 3, 900.0)
    assert (forecasts[-1].running, forecasts[-1].held) == (1, 1)


def test_time_a_job_was_held_does_not_make_the_machine_look_slower() -> None:
    now = [100.0]
    table = FakeTable(compile_tree((1500, 200)))
    built = {"_C.dir/a.cu.o": 1000.0, "_C.dir/b.cu.o": 1060.0, "_C.dir/c.cu.o": 100.0}  # .ninja_log: b held 60 s
    gov = Governor(
        10,
        budget_bytes=4000 * MB,
        default_peak=1000 * MB,
        estimates={"_C.dir/a.cu.o": 2000 * MB, "_C.dir/b.cu.o": 3000 * MB},
        read_available=lambda tree_rss: 4000 * MB - tree_rss,
        low_mark=100 * MB,
        high_mark=200 * MB,
        processes=table,
        clock=lambda: now[0],
        install_signal_handlers=False,
        seconds={"_C.dir/a.cu.o": 1000.0, "_C.dir/b.cu.o": 1000.0, "_C.dir/c.cu.o": 100.0},
        slots=1,
        finished=lambda: built,
    )
    gov.tick()  # b paused
    now[0], table.procs = 160.0, [p for p in compile_tree((1500, 200)) if p.pid not in (20, 21)]
    gov.tick()  # a done, b resumed after 60 s
    now[0], table.procs = 170.0, [p for p in table.procs if p.pid not in (30, 31, 32)]
    gov.tick()
    assert gov.last_forecast is not None and gov.last_forecast.speed == 1.0


def test_a_forecast_that_fails_leaves_the_memory_guard_acting_by_age() -> None:
    def unreadable() -> dict[str, float]:
        raise RuntimeError("log torn")

    table = FakeTable(compile_tree((1500, 200)))
    gov = Governor(
        10,
        budget_bytes=4000 * MB,
        default_peak=1000 * MB,
        estimates={"_C.dir/a.cu.o": 2000 * MB, "_C.dir/b.cu.o": 3000 * MB},
        read_available=lambda tree_rss: 4000 * MB - tree_rss,
        low_mark=100 * MB,
        high_mark=200 * MB,
        processes=table,
        clock=lambda: 100.0,
        install_signal_handlers=False,
        seconds={"_C.dir/a.cu.o": 30.0, "_C.dir/b.cu.o": 900.0},
        finished=unreadable,
    )
    gov.tick()
    assert table.signals == [(30, "SIGSTOP"), (31, "SIGSTOP"), (32, "SIGSTOP")]  # the younger b, by age
    assert gov.last_error is not None and "log torn" in gov.last_error


def test_stop_resumes_every_process_it_stopped_and_then_acts_no_more() -> None:
    table = FakeTable(compile_tree((1500, 200)))
    gov = fake_governor(table, 4000, lambda: 0.0)
    gov.tick()
    gov.stop()
    assert sorted(s for s in table.signals if s[1] == "SIGCONT") == [(30, "SIGCONT"), (31, "SIGCONT"), (32, "SIGCONT")]
    table.signals.clear()
    gov.tick()
    assert table.signals == []


def test_jobs_of_a_nested_build_tool_are_its_own_children() -> None:
    procs = [
        ProcInfo(12, 1, "ninja", 5 * MB, 0.0),
        ProcInfo(20, 12, "cmake", 5 * MB, 1.0, ("cmake", "--build", "ext")),
        ProcInfo(21, 20, "ninja", 5 * MB, 1.1),
        ProcInfo(22, 21, "sh", 900 * MB, 2.0, ("/bin/sh", "-c", "c++ -c x.cpp -o ext/CMakeFiles/e.dir/x.o")),
        ProcInfo(23, 21, "sh", 100 * MB, 3.0, ("/bin/sh", "-c", "c++ -c y.cpp -o ext/CMakeFiles/e.dir/y.o")),
    ]
    table = FakeTable(procs)
    gov = fake_governor(table, 1200, lambda: 0.0)
    gov.tick()
    assert table.signals == [(23, "SIGSTOP")]  # not the outer cmake job that holds both
    assert {r.object for r in gov.job_records()} == {"e.dir/x.o", "e.dir/y.o"}


def stopped(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.status() == psutil.STATUS_STOPPED:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out
