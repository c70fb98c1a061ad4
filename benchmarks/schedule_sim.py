"""Simulated compile schedules for #16: manifest vs critical-path order, static vs governed jobs.

Every object of the measured full vLLM 0.13.0 / 12.1a compile
(`spark_build/data/vllm-0.13.0-sm121a-full-compile-profile.json`, 389 objects) — or the 165 left
after the FA3 patch — is a job of its CPU-s with its RSS ramping linearly to its peak over the
first half of its work (as `replay_job.py` does); durations and peaks are the profile's ±10 %
(seeded), so the estimates the planner and governor get are not exact. Pure Python list
scheduling: Ninja's `-j` slots take objects in the order given, the CPUs are shared equally
among the jobs not held back, and when the tree outgrows the machine's free memory the largest
job is killed and, as Ninja does, nothing new starts.

Strategies: `MAX_JOBS=nproc` and static-safe `MAX_JOBS = budget // largest peak`, ungoverned;
the planned `-j` (`jobplan.plan_jobs`) governed, once pausing the youngest (no durations) and
once by slack (durations from the profile, finished objects with their measured seconds as
`.ninja_log` would give them); and `-j` = nproc governed by slack. The governed rows run the
real `governor.Governor` (its `tick`, `decide` and `eta.forecast`) over a fake process table
and clock every 0.5 s of simulated time; the budget is the free memory less the default 4 GiB
reserve. The ETA column is the largest error of the
governor's forecast finish against the simulated finish, as a share of the wall, from the
half-way point (in time) on.

Manifest order is the profile's order: it lists the objects by start time in a from-scratch
`ninja -j32` build where every compile edge was ready at once, which is the order Ninja 1.13.2
takes equal-priority edges in (the manifest's); critical-path order is longest estimate first,
what a duration-weighted Ninja with a seeded `.ninja_log` does for objects that are all leaves.

    .venv/bin/python benchmarks/schedule_sim.py > /tmp/schedule.md
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_build.compile.governor import Governor, ProcInfo  # noqa: E402
from spark_build.compile.jobplan import DEFAULT_PROFILE, plan_jobs  # noqa: E402
from spark_build.sizes import GIB, format_bytes  # noqa: E402

MIB = 2**20
RAMP = 0.5  # share of a job's work over which its RSS grows to its peak
BASE_RSS = 64 * MIB
RESERVE = 4 * GIB  # the compile step's default --mem-reserve
FA3 = "_vllm_fa3_C"


def eta_error_from_half(forecasts: list[tuple[float, float]], wall: float) -> float | None:
    """The issue's ETA target, measured: over the governor's forecasts (seconds since the start,
    predicted seconds left) made from half the wall on, the largest miss of the real end."""
    late = [abs(at + left - wall) / wall for at, left in forecasts if at >= wall / 2]
    return max(late) if late else None


@dataclass(frozen=True)
class Obj:
    name: str
    seconds: float  # what the job really takes (CPU-s, jittered)
    peak: int  # what it really reaches (jittered)
    est_seconds: float  # what the profile says
    est_peak: int


@dataclass(frozen=True)
class Machine:
    name: str
    cores: int
    free: int  # memory free for the build; the kernel kills above it


MACHINES = (
    Machine("Spark", 20, 100 * GIB),
    Machine("Spark + 40 GB model", 20, 60 * GIB),
    Machine("16 cores / 24 GB", 16, 24 * GIB),
    Machine("32 cores / 256 GB", 32, 256 * GIB),
)


@dataclass
class Row:
    objects: str
    machine: str
    order: str
    strategy: str
    jobs: int
    wall: float
    ideal: float
    memory_bound: float
    peak: int
    free: int
    kills: int
    pauses: int | None
    eta_error: float | None
    result: str


def load(profile: Path, drop_fa3: bool, jitter: float, seed: int) -> list[Obj]:
    rng = random.Random(seed)
    out = []
    for row in json.loads(profile.read_text())["objects"]:
        est_peak = int(row["peak_rss_mb"]) * MIB
        real_peak = int(est_peak * (1 + rng.uniform(-jitter, jitter)))
        real_s = row["cpu_s"] * (1 + rng.uniform(-jitter, jitter))
        if drop_fa3 and row["target"] == FA3:
            continue
        out.append(Obj(row["object"], real_s, real_peak, row["cpu_s"], est_peak))
    return out


def ideal(objs: list[Obj], cores: int) -> float:
    """No schedule beats the CPU work over the cores or the longest object."""
    return max(sum(o.seconds for o in objs) / cores, max(o.seconds for o in objs))


def memory_bound(objs: list[Obj], budget: int) -> float:
    """Nor, where memory binds, the jobs' memory-time over the budget (wall ≈ CPU for a job)."""
    return sum(o.peak * o.seconds for o in objs) / budget


class FakeNinja:
    """The process table the governor samples: `ninja` and one `sh -c nvcc … -o obj` per job."""

    def __init__(self) -> None:
        self.procs: dict[int, ProcInfo] = {}
        self.stopped: set[int] = set()

    def snapshot(self, root_pid: int) -> list[ProcInfo]:
        return [ProcInfo(1, 0, "ninja", 8 * MIB, 0.0), *self.procs.values()]

    def send(self, pid: int, sig: int) -> None:
        if sig == signal.SIGSTOP:
            self.stopped.add(pid)
        elif sig == signal.SIGCONT:
            self.stopped.discard(pid)


def simulate(
    objs: list[Obj],
    order: list[Obj],
    jobs: int,
    machine: Machine,
    governor: str | None,
    per_job: int,
    dt: float = 0.25,
    interval: float = 0.5,
) -> tuple[float, int, int, int | None, float | None, str]:
    """(wall, peak, kills, pauses, ETA error, result) of one schedule."""
    budget = machine.free - RESERVE
    table = FakeNinja()
    finished: dict[str, float] = {}
    gov = None
    if governor is not None:
        gov = Governor(
            1,
            budget_bytes=budget,
            default_peak=per_job,
            estimates={o.name: o.est_peak for o in objs},
            read_available=lambda tree_rss: budget - tree_rss,
            processes=table,
            clock=lambda: t,
            install_signal_handlers=False,
            seconds={o.name: o.est_seconds for o in objs} if governor == "slack" else None,
            slots=min(machine.cores, jobs),
            finished=lambda: finished,
        )
    pending = deque(order)
    running: dict[int, tuple[Obj, float]] = {}  # pid -> (object, start)
    work: dict[int, float] = {}
    t, peak, kills, failed, next_sample, next_pid = 0.0, 0, 0, False, 0.0, 100
    forecasts: list[tuple[float, float]] = []

    def rss(pid: int) -> int:
        obj = running[pid][0]
        return int(BASE_RSS + (obj.peak - BASE_RSS) * min(1.0, work[pid] / (RAMP * obj.seconds)))

    while pending or running:
        while pending and not failed and len(running) < jobs:
            obj = pending.popleft()
            running[next_pid], work[next_pid] = (obj, t), 0.0
            next_pid += 1
        if not running:
            break
        if gov is not None and t >= next_sample:
            next_sample = t + interval
            table.procs = {
                pid: ProcInfo(pid, 1, "sh", rss(pid), start, ("/bin/sh", "-c", f"nvcc -o CMakeFiles/{obj.name}"))
                for pid, (obj, start) in running.items()
            }
            gov.tick()
            if gov.last_forecast is not None:
                forecasts.append((t, gov.last_forecast.eta_s))
        active = [pid for pid in running if pid not in table.stopped]
        share = min(1.0, machine.cores / len(active)) if active else 0.0
        for pid in active:
            work[pid] += share * dt
        t += dt
        total = sum(rss(pid) for pid in running)
        peak = max(peak, total)
        if total > machine.free:
            victim = max(running, key=rss)
            del running[victim]
            kills, failed = kills + 1, True
        for pid in [pid for pid, (obj, _) in running.items() if work[pid] >= obj.seconds]:
            obj, start = running.pop(pid)
            table.stopped.discard(pid)
            finished[obj.name] = t - start
    error = eta_error_from_half(forecasts, t)
    result = f"FAILED: {kills} OOM kill(s), {len(order) - len(finished)} objects not built" if failed else "ok"
    return t, peak, kills, None if gov is None else gov.stops, error, result


def rows_for(objs: list[Obj], label: str, machine: Machine) -> list[Row]:
    estimates = {o.name: o.est_peak for o in objs}
    plan = plan_jobs(machine.free, RESERVE, estimates, machine.cores)
    static = max(1, plan.budget_bytes // max(estimates.values()))
    orders = {
        "manifest": list(objs),
        "critical path": sorted(objs, key=lambda o: -o.est_seconds),
    }
    strategies = (
        ("MAX_JOBS=nproc", machine.cores, None),
        ("static-safe", static, None),
        ("plan + governor, pause youngest", plan.concurrent_jobs, "age"),
        ("plan + governor, pause by slack", plan.concurrent_jobs, "slack"),
        ("MAX_JOBS=nproc + governor, pause by slack", machine.cores, "slack"),
    )
    rows = []
    for order_name, order in orders.items():
        for strategy, jobs, governor in strategies:
            wall, peak, kills, pauses, error, result = simulate(
                objs, order, jobs, machine, governor, plan.per_job_bytes
            )
            rows.append(
                Row(
                    label,
                    machine.name,
                    order_name,
                    strategy,
                    jobs,
                    wall,
                    ideal(objs, machine.cores),
                    memory_bound(objs, plan.budget_bytes),
                    peak,
                    machine.free,
                    kills,
                    pauses,
                    error,
                    result,
                )
            )
    return rows


def table(rows: list[Row]) -> str:
    head = (
        "| objects | machine | order | strategy | -j | wall s | × ideal | ideal s | mem-time bound s | × bound "
        "| peak / free | OOM kills | pauses | ETA error from ½ | result |"
    )
    out = [head, "|" + "---|" * 15]
    for r in rows:
        ok = r.result == "ok"
        ratio = f"{r.wall / r.ideal:.2f}" if ok else "n/a"
        bound = f"{r.wall / max(r.ideal, r.memory_bound):.2f}" if ok else "n/a"
        out.append(
            f"| {r.objects} | {r.machine} | {r.order} | {r.strategy} | {r.jobs} | {r.wall:.0f} | {ratio} | "
            f"{r.ideal:.0f} | {r.memory_bound:.0f} | {bound} | {format_bytes(r.peak)} / {format_bytes(r.free)} | "
            f"{r.kills} | "
            f"{'—' if r.pauses is None else r.pauses} | "
            f"{'—' if r.eta_error is None else f'{100 * r.eta_error:.1f} %'} | {r.result} |"
        )
    return "\n".join(out)


def cell(r: Row) -> str:
    """One strategy in the summary: its -j, wall, × ideal (× bound where memory binds), pauses, ETA."""
    if r.result != "ok":
        return f"-j{r.jobs} **FAILED**, {r.kills} OOM kill(s)"
    text = f"-j{r.jobs} {r.wall:.0f} s = {r.wall / r.ideal:.2f}×"
    if r.memory_bound > r.ideal:
        text += f" ({r.wall / r.memory_bound:.2f}× bound)"
    if r.pauses:
        text += f", {r.pauses} pauses"
    if r.eta_error is not None:
        text += f", ETA ±{100 * r.eta_error:.1f} %"
    return text


def summary(rows: list[Row]) -> str:
    """One line per objects × machine × order, one column per strategy."""
    strategies = list(dict.fromkeys(r.strategy for r in rows))
    groups: dict[tuple[str, str, str], dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.objects, r.machine, r.order), {})[r.strategy] = r
    out = [
        "| objects | machine | order | ideal s | mem-time bound s | " + " | ".join(strategies) + " |",
        "|" + "---|" * (5 + len(strategies)),
    ]
    for (objects, machine, order), by in groups.items():
        first = next(iter(by.values()))
        cells = " | ".join(cell(by[name]) for name in strategies)
        out.append(f"| {objects} | {machine} | {order} | {first.ideal:.0f} | {first.memory_bound:.0f} | {cells} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--jitter", type=float, default=0.1, help="real durations and peaks differ by ±this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    rows: list[Row] = []
    for label, drop_fa3 in (("389 (full)", False), ("165 (FA3 patch)", True)):
        objs = load(args.profile, drop_fa3, args.jitter, args.seed)
        for machine in MACHINES:
            rows += rows_for(objs, label, machine)
            print(f"# {label} {machine.name}: {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    print(summary(rows))
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
