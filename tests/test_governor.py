"""The run-time governor: which jobs it holds back, and that it never leaves one stopped.

Three tiers: `decide` (pure), `Governor.tick` over a fake process table and clock, and real
process trees — small Python programs growing their memory step by step under a budget the
governor enforces through a fake "available memory" computed from the tree's real RSS, so the
outcome does not depend on this machine's memory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from spark_build.compile.governor import Governor, JobState, ProcInfo, decide, object_of

MB = 2**20
REPO = Path(__file__).resolve().parents[1]


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


# -- real processes ------------------------------------------------------------------------
JOB = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    step_mb, steps, hold, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[5]
    held = []
    for _ in range(steps):
        held.append(b"\\x01" * (step_mb << 20))  # written pages: resident
        time.sleep(0.05)  # slower than the governor samples, as a compiler's growth is
    if hold < 0:
        signal.pause()
    time.sleep(hold)
    Path(out).write_text("built")
    """
)

SCHEDULER = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    job, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    procs = []
    def interrupted(signum, frame):  # like Ninja: pass it on, wait for every job, then exit
        for p in procs:
            p.send_signal(signum)
        for p in procs:
            p.wait()
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    for i in range(n):
        procs.append(subprocess.Popen([sys.executable, job, "10", "9", hold, "-o", f"obj{i}.o"]))
        time.sleep(0.15)  # ages differ, as Ninja's jobs' do
    sys.exit(max(p.wait() for p in procs))
    """
)

RUNNER = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    from spark_build.compile.governor import Governor
    careful = os.environ.get("RUNNER_CAREFUL", "1") == "1"
    # A careful runner (spark_build's) gives the build its own process group and passes signals
    # on to it; a careless one shares its group and dies of SIGTERM's default action.
    build = subprocess.Popen([sys.executable, *sys.argv[2:]], process_group=0 if careful else None)
    def forward(signum, frame):
        os.killpg(build.pid, signum)
    if careful:
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
    BUDGET = 170 << 20
    with Governor(build.pid, budget_bytes=BUDGET, default_peak=100 << 20, interval_s=0.05,
                  low_mark=10 << 20, high_mark=20 << 20, read_available=lambda tree: BUDGET - tree,
                  is_scheduler=lambda p: p.pid == build.pid):
        print("governing", flush=True)
        code = build.wait()
    sys.exit(code)
    """
)

# Each job grows to ~100 MB (interpreter + 9 × 10 MB): one fits the 170 MB budget, two do not.
BUDGET = 170 * MB


@pytest.fixture
def programs(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, text in {"job": JOB, "scheduler": SCHEDULER, "runner": RUNNER}.items():
        paths[name] = tmp_path / f"{name}.py"
        paths[name].write_text(text)
    return paths


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stopped(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            if proc.status() == psutil.STATUS_STOPPED:
                out.append(proc)
        except psutil.NoSuchProcess:
            pass
    return out


def alive(procs: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    """Those still running after up to `timeout`; a zombie has exited (its reaper may be slow)."""

    def running(proc: psutil.Process) -> bool:
        try:
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout
    while (still := [p for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return still


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {condition}")


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes] | int]]:
    """Builds (or bare process group ids) killed and reaped after the test, whatever it left behind."""
    builds: list[subprocess.Popen[bytes] | int] = []
    yield builds
    for build in builds:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build if isinstance(build, int) else build.pid, sig)
        if isinstance(build, subprocess.Popen):
            build.wait()
            if build.stdout is not None:
                build.stdout.close()


def governed(build: subprocess.Popen[bytes]) -> Governor:
    return Governor(
        build.pid,
        budget_bytes=BUDGET,
        default_peak=100 * MB,
        interval_s=0.05,
        low_mark=10 * MB,
        high_mark=20 * MB,
        read_available=lambda tree_rss: BUDGET - tree_rss,
        is_scheduler=lambda p: p.pid == build.pid,
        install_signal_handlers=False,
    )


def test_governor_holds_younger_jobs_back_and_releases_them_as_memory_returns(
    programs: dict[str, Path], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | int]
) -> None:
    build = subprocess.Popen(
        [sys.executable, str(programs["scheduler"]), str(programs["job"]), "3", "0.3"], cwd=tmp_path, process_group=0
    )
    cleanup.append(build)
    seen_stopped: set[str] = set()
    with governed(build) as gov:
        while build.poll() is None:
            for proc in stopped(tree(build.pid)):
                seen_stopped.add(proc.cmdline()[-1])
            time.sleep(0.02)
    assert build.returncode == 0
    assert sorted(p.name for p in tmp_path.glob("obj*.o")) == ["obj0.o", "obj1.o", "obj2.o"]
    assert seen_stopped and "obj0.o" not in seen_stopped  # the oldest job always runs
    records = {r.object: r for r in gov.job_records()}
    assert records["obj1.o"].times_stopped >= 1 and records["obj2.o"].times_stopped >= 1
    assert gov.peak_tree_rss <= BUDGET
    assert max(r.peak_rss_bytes for r in records.values()) >= 90 * MB


def test_an_error_while_governing_leaves_no_job_stopped(
    programs: dict[str, Path], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | int]
) -> None:
    build = subprocess.Popen(
        [sys.executable, str(programs["scheduler"]), str(programs["job"]), "3", "-1"], cwd=tmp_path, process_group=0
    )
    cleanup.append(build)
    with pytest.raises(RuntimeError, match="compile step failed"), governed(build):
        wait_for(lambda: len(tree(build.pid)) == 4 and stopped(tree(build.pid)))
        raise RuntimeError("compile step failed")
    procs = tree(build.pid)
    assert len(procs) == 4 and stopped(procs) == []


def start_runner(programs: dict[str, Path], tmp_path: Path, careful: bool = True) -> subprocess.Popen[bytes]:
    """The governing runner over a scheduler of three jobs that never finish on their own, in
    a session of its own; a careless runner has no SIGTERM handler of its own."""
    argv = [sys.executable, programs["runner"], REPO, programs["scheduler"], programs["job"], "3", "-1"]
    env = {**os.environ, **({} if careful else {"RUNNER_CAREFUL": "0"})}
    return subprocess.Popen(
        [str(a) for a in argv], cwd=tmp_path, stdout=subprocess.PIPE, start_new_session=True, env=env
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_the_build_leaves_no_process_stopped_or_behind(
    programs: dict[str, Path], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | int], sig: signal.Signals
) -> None:
    runner = start_runner(programs, tmp_path)
    cleanup.append(runner)
    assert runner.stdout is not None and runner.stdout.readline() == b"governing\n"
    held = wait_for(lambda: len(tree(runner.pid)) == 5 and stopped(tree(runner.pid)))
    procs = tree(runner.pid)
    assert len(procs) == 5  # runner, scheduler, three jobs: the held ones can't act on a signal
    os.kill(runner.pid, sig)
    assert runner.wait(timeout=20) != 0  # a job left stopped would hang the scheduler
    assert alive(procs) == [], f"left behind: {alive(procs)}; held were {held}"
    assert stopped(procs) == []


def test_sigterm_that_kills_a_careless_runner_outright_still_resumes_held_jobs_first(
    programs: dict[str, Path], tmp_path: Path, cleanup: list[subprocess.Popen[bytes] | int]
) -> None:
    """No `with` exit runs when SIGTERM's default action kills the runner, and the kernel only
    continues stopped processes of a group it newly orphans — not of the runner's own group.
    So the governor's own handler must continue the held jobs before the default action."""
    runner = start_runner(programs, tmp_path, careful=False)
    cleanup.append(runner)
    assert runner.stdout is not None and runner.stdout.readline() == b"governing\n"
    wait_for(lambda: len(tree(runner.pid)) == 5 and stopped(tree(runner.pid)))
    build = tree(runner.pid)[1:]
    os.kill(runner.pid, signal.SIGTERM)
    assert runner.wait(timeout=20) == -signal.SIGTERM
    assert stopped(build) == []
