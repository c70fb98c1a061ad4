"""Replay with real Ninja: manifest vs critical-path order × planned vs nproc `-j`, governed (#16).

The real-Ninja half of `schedule_sim.py`: every object of the full vLLM 0.13.0 / 12.1a profile
(389, or the 165 left after the FA3 patch) becomes an edge running `replay_job.py`, whose RSS
ramps to its scaled peak (±jitter) over the first half of its scaled seconds, under a kernel
memory limit at the modelled machine's free memory (`replay.choose_enforcement`), with the real
`governor.Governor` (budget = free − the 4 GiB reserve, durations given, so it pauses by slack
and forecasts). Orders:

  manifest       the duration-weighted Ninja (`ninjabuild`) with no `.ninja_log`: every edge
                 weighs the same and equal-priority edges start in manifest (profile) order,
                 as stock Ninja 1.13.2 starts them;
  critical path  the same binary with a `.ninja_log` seeded by `ninjalog.seed_ninja_log` from
                 the profile's durations: the longest objects start first.

`--pace wall` (default) models a machine of `--cores` CPUs on this 2-core one: a job sleeps
through its seconds (a job holds one core, as with `-j` ≤ cores), so the CPUs never bind and
what the run measures is Ninja's order, its slots and the governor's pauses against memory.
`--pace cpu` burns the CPU instead, which is honest only for `--cores` = this machine's.

    .venv/bin/python benchmarks/replay_order.py --ninja /tmp/nb/ninja/*/ninja \\
        --cores 16 --free 24G --scale 0.015 --mem-scale 0.2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from replay import _rss, _tree, choose_enforcement, write_manifest  # noqa: E402
from schedule_sim import FA3, MIB, RESERVE, eta_error_from_half  # noqa: E402

from spark_build.compile.eta import FinishedObjects  # noqa: E402
from spark_build.compile.governor import Governor  # noqa: E402
from spark_build.compile.jobplan import DEFAULT_PROFILE, plan_jobs  # noqa: E402
from spark_build.compile.ninjalog import normalize_object, seed_ninja_log  # noqa: E402
from spark_build.compile.oom import find_oom_kills  # noqa: E402
from spark_build.sizes import format_bytes, parse_mem_size  # noqa: E402


@dataclass(frozen=True)
class Edge:
    output: str  # as Ninja spells it: CMakeFiles/<target>.dir/…
    seconds: float  # scaled, what the job takes
    peak: int  # scaled and jittered, what it reaches
    estimate: int  # scaled, what the planner and governor are told


@dataclass
class Result:
    objects: int
    order: str
    strategy: str
    jobs: int
    wall: float
    ideal: float
    memory_bound: float
    peak: int
    free: int
    budget: int
    kills: int
    pauses: int
    built: int
    result: str
    eta_error: float | None = None  # largest |forecast end − real end| / wall from half the wall on


def load_edges(profile: Path, drop_fa3: bool, scale: float, mem_scale: float, jitter: float, seed: int) -> list[Edge]:
    """The profile's objects in its order (start order of a from-scratch build = manifest order)."""
    rng = random.Random(seed)
    edges = []
    for row in json.loads(profile.read_text())["objects"]:
        estimate = int(row["peak_rss_mb"] * MIB * mem_scale)
        peak = int(estimate * (1 + rng.uniform(-jitter, jitter)))
        if drop_fa3 and row["target"] == FA3:
            continue
        edges.append(Edge("CMakeFiles/" + row["object"], row["cpu_s"] * scale, peak, estimate))
    return edges


def write_build(work: Path, edges: list[Edge], pace: str, seeded: bool) -> None:
    """build.ninja in profile order; with `seeded`, a .ninja_log holding every edge's duration."""
    write_manifest(work, [(e.output, e.seconds, e.peak) for e in edges], pace)
    if seeded:
        outputs = [e.output for e in edges]
        seeded_outputs = seed_ninja_log(
            work / ".ninja_log", outputs, {normalize_object(e.output): e.seconds for e in edges}
        )
        assert len(seeded_outputs) == len(edges), "every edge must be seeded"


def run_one(edges: list[Edge], order: str, strategy: str, jobs: int, per_job: int, args: argparse.Namespace) -> Result:
    label = f"{len(edges)}-{order.replace(' ', '-')}-{strategy.split()[0]}"
    work = args.workdir / label
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_build(work, edges, args.pace, order == "critical path")
    free = int(args.free_bytes * args.mem_scale)
    budget = free - int(RESERVE * args.mem_scale)
    enforcement, _ = choose_enforcement(free, args.enforce)
    cmd = enforcement.wrap([args.ninja, "-j", str(jobs)])
    peak = 0
    forecasts: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    with open(work / "ninja.out", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        enforcement.start(proc.pid)
        governor = Governor(
            proc.pid,
            budget_bytes=budget,
            default_peak=per_job,
            estimates={e.output: e.estimate for e in edges},
            interval_s=args.interval,
            seconds={e.output: e.seconds for e in edges},
            slots=min(args.cores, jobs),
            # As the compile step: finished objects from the tree's .ninja_log (seeded lines,
            # with no mtime, are not progress), and each forecast heard as the status line is.
            finished=FinishedObjects(work, search_every_s=1.0),
            on_forecast=lambda f: forecasts.append((time.perf_counter() - t0, f.eta_s)),
        )
        try:
            with governor:
                while proc.poll() is None:
                    peak = max(peak, sum(_rss(p) for p in _tree(proc.pid)))
                    time.sleep(0.2)
        finally:
            if proc.poll() is None:  # interrupted: Ninja gives each job its own process group
                for job in reversed(_tree(proc.pid)):
                    with contextlib.suppress(psutil.Error):
                        job.kill()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - t0
    enforcement.finish()
    kernel_peak = enforcement.peak()
    enforcement.close()
    text = (work / "ninja.out").read_text()
    kills = max(enforcement.killed, len([k for k in find_oom_kills(text, proc.returncode) if k.object]))
    built = sum(1 for e in edges if (work / e.output).exists())
    return Result(
        len(edges),
        order,
        strategy,
        jobs,
        wall,
        max(sum(e.seconds for e in edges) / args.cores, max(e.seconds for e in edges)),
        sum(e.peak * e.seconds for e in edges) / budget,
        max(peak, kernel_peak or 0),
        free,
        budget,
        kills,
        governor.stops,
        built,
        "ok" if proc.returncode == 0 else f"FAILED {built}/{len(edges)} built",
        eta_error_from_half(forecasts, wall),
    )


def table(rows: list[Result]) -> str:
    out = [
        "| objects | order | strategy | -j | wall s | × ideal | × mem-time bound | peak / free | OOM kills "
        "| pauses | ETA error from ½ | result |",
        "|" + "---|" * 12,
    ]
    for r in rows:
        ok = r.result == "ok"
        out.append(
            f"| {r.objects} | {r.order} | {r.strategy} | {r.jobs} | {r.wall:.1f} | "
            f"{f'{r.wall / r.ideal:.2f}' if ok else 'n/a'} | "
            f"{f'{r.wall / max(r.ideal, r.memory_bound):.2f}' if ok else 'n/a'} | "
            f"{format_bytes(r.peak)} / {format_bytes(r.free)} | {r.kills} | {r.pauses} | "
            f"{f'±{r.eta_error:.1%}' if r.eta_error is not None else '—'} | {r.result} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    parser.add_argument("--ninja", required=True, help="the duration-weighted Ninja (ninjabuild)")
    parser.add_argument("--cores", type=int, default=16, help="CPUs of the modelled machine")
    parser.add_argument("--free", default="24G", help="its free memory, profile units (scaled by --mem-scale)")
    parser.add_argument("--scale", type=float, default=0.015, help="time scale")
    parser.add_argument("--mem-scale", type=float, default=0.2, help="memory scale")
    parser.add_argument("--pace", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--full", action="store_true", help="all 389 objects (default: the 165 after FA3)")
    parser.add_argument("--orders", default="manifest,critical path")
    parser.add_argument("--strategies", default="plan,nproc", help="plan: plan_jobs' -j; nproc: -j = --cores")
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.1, help="governor sampling interval, s")
    parser.add_argument("--enforce", choices=["auto", "cgroup", "watchdog"], default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spark-replay-order"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    args.free_bytes = parse_mem_size(args.free, option="--free")
    edges = load_edges(args.profile, not args.full, args.scale, args.mem_scale, args.jitter, args.seed)
    estimates = {e.output: e.estimate for e in edges}
    plan = plan_jobs(int(args.free_bytes * args.mem_scale), int(RESERVE * args.mem_scale), estimates, args.cores)
    enforcement, why = choose_enforcement(int(args.free_bytes * args.mem_scale), args.enforce)
    enforcement.close()
    print(
        f"# {len(edges)} objects, modelled {args.cores} cores / {args.free} free, pace {args.pace}, "
        f"time ×{args.scale}, memory ×{args.mem_scale}, enforcement {enforcement.kind}"
        + (f" ({why})" if why else "")
        + f"; plan: {plan.reason}",
        flush=True,
    )
    strategies = {"plan": ("plan + governor", plan.concurrent_jobs), "nproc": ("-j nproc + governor", args.cores)}
    rows = []
    for order in args.orders.split(","):
        for key in args.strategies.split(","):
            strategy, jobs = strategies[key]
            row = run_one(edges, order, strategy, jobs, plan.per_job_bytes, args)
            print(f"#   {order} / {strategy} -j{jobs}: {row.result} in {row.wall:.1f} s", flush=True)
            rows.append(row)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
