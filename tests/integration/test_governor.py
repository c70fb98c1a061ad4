"""The run-time governor over real process trees: small Python programs growing their memory
step by step under a budget the governor enforces through a fake "available memory" computed
from the tree's real RSS, so the outcome does not depend on this machine's memory.
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

from spark_build.compile.governor import Governor
from tests.unit.test_governor import MB, stopped

REPO = Path(__file__).resolve().parents[2]


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
