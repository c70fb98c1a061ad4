"""One replayed compile job: burns `--cpu-s` of CPU while its memory ramps to `--peak-mb`.

Shaped like a gcc/nvcc job so the spark-build machinery sees the real thing: the driver forks
the worker (the `cc1plus`), waits, and when the worker dies of SIGKILL prints gcc's own line
`c++: fatal error: Killed signal terminated program cc1plus`, which `spark_build.compile.oom` must
recognise. Progress is counted in CPU seconds, not wall time, so a job paused by the governor
or sharing a core does the same work as one running alone.

With `--pace wall` the job sleeps through its seconds instead of burning them, so this 2-core
machine can stand in for a many-core one (`replay_order.py`: one core per Ninja slot, as long as
-j ≤ the modelled cores); time spent stopped by the governor is not counted as progress.

Also `--exec-in-cgroup PROCS -- cmd…`: join a cgroup, then exec the command, so every process
the build forks is inside the memory limit from its first instruction.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

CHUNK = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class _RunningClock:
    """Seconds this process ran by the wall clock, stops excluded. A SIGSTOP shows up as one
    long gap between two reads, ended by the SIGCONT that resumed it: that gap does not count.
    A gap without a SIGCONT does (a busy machine delayed this process, as it delays a compiler
    that waits for a CPU: the modelled machine has a core per job)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._ran = 0.0
        self._continued = False
        signal.signal(signal.SIGCONT, self._on_continue)

    def _on_continue(self, signum: int, frame: object) -> None:
        self._continued = True

    def __call__(self) -> float:
        now = time.monotonic()
        if not self._continued:
            self._ran += now - self._last
        self._continued = False
        self._last = now
        return self._ran


def _work(cpu_s: float, extra_bytes: int, ramp: float, pace: str = "cpu") -> None:
    """Burn CPU (or, at `pace` wall, sleep) until `cpu_s`; hold `extra_bytes` more than at start
    once `ramp` of it is done."""
    held: list[bytes] = []
    allocated = 0
    x = 1.0
    clock = _RunningClock() if pace == "wall" else time.process_time
    while True:
        spent = clock()
        progress = spent / cpu_s if cpu_s > 0 else 1.0
        target = int(extra_bytes * min(1.0, progress / ramp)) if ramp > 0 else extra_bytes
        while allocated + CHUNK <= target:
            held.append(b"\x01" * CHUNK)  # written, so resident: RSS, not just address space
            allocated += CHUNK
        if progress >= 1.0:
            break
        if pace == "wall":
            time.sleep(0.01)
            continue
        for _ in range(5000):
            x = x * 1.0000001 + 1e-9


def main(argv: list[str]) -> int:
    if argv[:1] == ["--exec-in-cgroup"]:
        procs, cmd = argv[1], argv[3:]
        Path(procs).write_text(str(os.getpid()))
        os.execvp(cmd[0], cmd)
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-s", type=float, required=True)
    parser.add_argument("--peak-mb", type=float, required=True)
    parser.add_argument("--ramp", type=float, default=0.5, help="share of the job's CPU time spent ramping")
    parser.add_argument("--pace", choices=["cpu", "wall"], default="cpu", help="burn CPU or sleep the seconds")
    parser.add_argument("-o", dest="out", required=True)
    args = parser.parse_args(argv)
    driver_cpu = time.process_time()
    # The job's tree is this driver plus the worker, each with the interpreter resident.
    extra = max(0, int(args.peak_mb * 2**20) - 2 * _rss())
    pid = os.fork()
    if pid == 0:
        try:
            spent = driver_cpu if args.pace == "cpu" else 0.0
            _work(max(0.0, args.cpu_s - spent), extra, args.ramp, args.pace)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        name = "cc1plus" if os.WTERMSIG(status) == 9 else f"cc1plus (signal {os.WTERMSIG(status)})"
        print(f"c++: fatal error: Killed signal terminated program {name}", file=sys.stderr)
        print("compilation terminated.", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("replayed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
