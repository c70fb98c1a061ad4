"""Replay benchmark: does planner + governor beat static MAX_JOBS without OOM kills?

Every object of a measured vLLM compile (shared/data/vllm-0.13.0-sm121a-compile-profile.json)
becomes a Ninja edge running `replay_job.py`: its CPU time (scaled by --scale) with RSS ramping
to its peak (scaled by --mem-scale, ±--jitter so the estimates are not exact). Real `ninja`
runs them under a memory budget enforced by the kernel (cgroup v2 memory.max, else cgroup v1
memory.limit_in_bytes) or, where neither is writable, by a watchdog that SIGKILLs the largest
process when the tree exceeds the budget, as the OOM killer would. Strategies:

  (a) MAX_JOBS = nproc             what setup.py does by default
  (b) static-safe MAX_JOBS = budget // largest peak
  (c) spark_build.compile.jobplan.plan_jobs + spark_build.compile.governor.Governor

Rows marked `sim` are a discrete-time simulation of the same jobs at full size on a modelled
machine (the DGX Spark: 20 cores, 119 GB less a 30 GB running model), using the governor's own
`decide` function; a sim row for the local machine is printed next to the real run to show how
far the simulation can be trusted.

    .venv/bin/python benchmarks/replay.py --repeat 2   # ~4 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spark_build.compile.governor import Governor, JobState, decide  # noqa: E402
from spark_build.compile.jobplan import cpu_count, plan_jobs  # noqa: E402
from spark_build.compile.oom import find_oom_kills  # noqa: E402
from spark_build.sizes import GIB, format_bytes, parse_mem_size  # noqa: E402

PROFILE = ROOT.parent / "shared" / "data" / "vllm-0.13.0-sm121a-compile-profile.json"
WORKER = Path(__file__).with_name("replay_job.py")
MIB = 2**20
RAMP = 0.5


@dataclass(frozen=True)
class Job:
    object: str
    cpu_s: float
    peak: int  # bytes the job really reaches (jittered)
    estimate: int  # bytes the planner and governor are told


@dataclass
class Row:
    machine: str
    strategy: str
    jobs: int
    wall: float
    ideal: float
    peak: int
    killed: int
    cpu_util: float
    result: str
    budget: int
    note: str = ""
    others: float | None = None  # CPU share other processes took meanwhile: this machine is shared


def load_jobs(profile: Path, scale: float, mem_scale: float, jitter: float, seed: int) -> list[Job]:
    rng = random.Random(seed)
    doc = json.loads(profile.read_text())
    jobs = []
    for row in doc["objects"]:
        estimate = int(row["peak_rss_mb"] * MIB * mem_scale)
        peak = int(estimate * (1 + rng.uniform(-jitter, jitter)))
        jobs.append(Job("CMakeFiles/" + row["object"], row["cpu_s"] * scale, peak, estimate))
    return jobs


def ideal_wall(jobs: list[Job], cores: int, budget: int) -> float:
    """The memory-feasible lower bound: no schedule beats CPU work / cores, the longest object,
    or the memory-time the jobs need divided by the budget (wall ≈ cpu for a compile job)."""
    return max(
        sum(j.cpu_s for j in jobs) / cores,
        max(j.cpu_s for j in jobs),
        sum(j.peak * j.cpu_s for j in jobs) / budget,
    )


# -- enforcement ---------------------------------------------------------------------------
class Enforcement:
    """A memory limit on the build tree: a kernel cgroup where we may create one, else a watchdog."""

    kind = "watchdog"

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.killed = 0

    def wrap(self, cmd: list[str]) -> list[str]:
        return cmd

    def start(self, pid: int) -> None:
        self._pid = pid
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.01):
            procs = _tree(self._pid)
            rss = {p: _rss(p) for p in procs}
            if sum(rss.values()) > self.budget and rss:
                victim = max(rss, key=lambda p: rss[p])
                with contextlib.suppress(psutil.Error):
                    victim.kill()
                    self.killed += 1

    def finish(self) -> None:
        self._done.set()
        self._thread.join()

    def peak(self) -> int | None:
        return None

    def limit_hits(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class CgroupEnforcement(Enforcement):
    """A child of this process's own memory cgroup, so the limit is the kernel's and nothing
    outside the benchmark is touched; removed again by `close`."""

    def __init__(self, budget: int, path: Path, version: int) -> None:
        super().__init__(budget)
        self.path, self.version = path, version
        self.kind = f"cgroup v{version} " + ("memory.max" if version == 2 else "memory.limit_in_bytes")
        path.mkdir()
        if version == 2:
            (path / "memory.max").write_text(str(budget))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(budget))

    def wrap(self, cmd: list[str]) -> list[str]:
        return [sys.executable, str(WORKER), "--exec-in-cgroup", str(self.path / "cgroup.procs"), "--", *cmd]

    def start(self, pid: int) -> None:
        self._base = self._oom_kills()

    def _oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def finish(self) -> None:
        self.killed = self._oom_kills() - self._base

    def peak(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def limit_hits(self) -> int | None:
        """How often usage reached the limit and the kernel had to reclaim (thrash) or kill."""
        try:
            if self.version == 1:
                return int((self.path / "memory.failcnt").read_text())
            for line in (self.path / "memory.events").read_text().splitlines():
                if line.startswith("max "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def choose_enforcement(budget: int, want: str) -> tuple[Enforcement, str]:
    """cgroup v2 if its memory controller is ours to use, else v1, else the watchdog; says why."""
    notes = []
    if want in ("auto", "cgroup"):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            hier, controllers, rel = line.split(":", 2)
            tag = f"spark-replay-{os.getpid()}"
            if hier == "0":
                for base in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                    ctl = base / rel.lstrip("/") / "cgroup.controllers"
                    if ctl.exists():
                        if "memory" in ctl.read_text().split():
                            try:
                                return CgroupEnforcement(budget, ctl.parent / tag, 2), "cgroup v2"
                            except OSError as exc:
                                notes.append(f"cgroup v2 memory.max not writable ({exc.strerror})")
                        else:
                            notes.append(f"cgroup v2 at {ctl.parent} has no memory controller")
            elif "memory" in controllers.split(","):
                try:
                    path = Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / tag
                    return CgroupEnforcement(budget, path, 1), "; ".join(notes)
                except OSError as exc:
                    notes.append(f"cgroup v1 memory.limit_in_bytes not writable ({exc.strerror})")
    return Enforcement(budget), "; ".join(notes) or "cgroups not requested"


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _busy_cpu() -> float:
    """CPU seconds the whole machine spent busy, to tell how much other sessions took."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


# -- one real run --------------------------------------------------------------------------
def write_manifest(work: Path, edges: Iterable[tuple[str, float, int]], pace: str = "cpu") -> None:
    """build.ninja with one `replay_job.py` edge per (output, CPU seconds, peak bytes), in order."""
    lines = [
        "rule cc",
        f"  command = {sys.executable} {WORKER} --pace {pace} --cpu-s $cpu --peak-mb $peak -o $out",
        "  description = CC $out",
        "",
    ]
    for output, seconds, peak in edges:
        lines += [f"build {output}: cc", f"  cpu = {seconds:.4f}", f"  peak = {peak / MIB:.2f}", ""]
    (work / "build.ninja").write_text("\n".join(lines))


def run_real(
    label: str, jobs: list[Job], ninja_jobs: int, budget: int, cores: int, args: argparse.Namespace, governed: bool
) -> Row:
    work = args.workdir / label.split()[0].strip("()")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    write_manifest(work, [(job.object, job.cpu_s, job.peak) for job in jobs])
    enforcement, _ = choose_enforcement(budget, args.enforce)
    cmd = enforcement.wrap([args.ninja, "-j", str(ninja_jobs)])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before, busy_before = resource.getrusage(resource.RUSAGE_SELF), _busy_cpu()
    log_path = work / "ninja.log"
    peak = 0
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        enforcement.start(proc.pid)
        governor = (
            Governor(
                proc.pid,
                budget_bytes=budget,
                default_peak=args.per_job,
                estimates={j.object: j.estimate for j in jobs},
                interval_s=args.interval,
            )
            if governed
            else None
        )
        try:
            with governor or contextlib.nullcontext():
                # With a cgroup the kernel keeps the exact peak: sample rarely, leave the CPUs to the jobs.
                every = 0.02 if enforcement.kind == "watchdog" else 0.2
                while proc.poll() is None:
                    peak = max(peak, sum(_rss(p) for p in _tree(proc.pid)))
                    time.sleep(every)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - t0
    enforcement.finish()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    own = cpu + (self_after.ru_utime - self_before.ru_utime) + (self_after.ru_stime - self_before.ru_stime)
    others = max(0.0, _busy_cpu() - busy_before - own) / (wall * cores)
    kernel_peak, hits = enforcement.peak(), enforcement.limit_hits()
    enforcement.close()
    log_text = log_path.read_text()
    kills = find_oom_kills(log_text, proc.returncode)
    killed = max(enforcement.killed, len([k for k in kills if k.object]))
    built = sum(1 for j in jobs if (work / j.object).exists())
    result = "ok" if proc.returncode == 0 else f"FAILED {built}/{len(jobs)} built"
    note = f"other processes used {100 * others:.0f}% of the CPUs; sampled peak {format_bytes(peak)}"
    if kernel_peak is not None:
        note += f", cgroup peak {format_bytes(kernel_peak)}, limit reached {hits} times"
        peak = max(peak, kernel_peak)
    if governor is not None:
        note += (
            f", governor: {governor.stops} stops, {governor.samples} samples at "
            f"{1000 * governor.sample_seconds / max(1, governor.samples):.1f} ms"
        )
    return Row(
        "here",
        label,
        ninja_jobs,
        wall,
        ideal_wall(jobs, cores, budget),
        peak,
        killed,
        cpu / (wall * cores),
        result,
        budget,
        note,
        others,
    )


# -- simulation ----------------------------------------------------------------------------
def simulate(
    label: str,
    jobs: list[Job],
    ninja_jobs: int,
    budget: int,
    cores: int,
    governed: bool,
    per_job: int,
    dt: float = 0.25,
    interval: float = 0.5,
    base: int = 64 * MIB,
    oracle: bool = False,
    longest_first: bool = False,
) -> Row:
    """Ninja's scheduling of `jobs` on `cores` CPUs, time-stepped. A job's RSS ramps linearly to
    its peak over the first half of its CPU work (as replay_job.py does); CPUs are shared
    equally among unstopped jobs; over the budget the largest job is killed and, like Ninja,
    nothing new starts after a failure. The governor is `decide` with the Governor's defaults.

    Two bounds that no real governor has, to tell what limits (c): `oracle` gives `decide` the
    exact peaks and no safety margins; `longest_first` also reorders Ninja's queue, which
    Ninja does not allow (it starts edges in manifest order, whatever the targets' order)."""
    pending = sorted(range(len(jobs)), key=lambda i: -jobs[i].cpu_s) if longest_first else list(range(len(jobs)))
    running: dict[int, dict[str, float]] = {}
    t, peak, killed, cpu_used, failed, next_sample = 0.0, 0, 0, 0.0, False, 0.0
    low, high = (0, 0) if oracle else (budget // 50, budget // 25)

    def rss(i: int) -> int:
        done = running[i]["done"] / max(jobs[i].cpu_s, 1e-9)
        return int(base + (jobs[i].peak - base) * min(1.0, done / RAMP))

    while pending or running:
        while pending and not failed and len(running) < ninja_jobs:
            running[pending.pop(0)] = {"done": 0.0, "started": t, "stopped": 0.0}
        if not running:
            break
        if governed and t >= next_sample:
            next_sample = t + interval
            states = [
                JobState(
                    i,
                    r["started"],
                    rss(i),
                    max(jobs[i].peak if oracle else jobs[i].estimate, rss(i)),
                    bool(r["stopped"]),
                )
                for i, r in running.items()
            ]
            available = budget - sum(s.rss for s in states)
            stop, resume = decide(states, available, low, high)
            for i in stop:
                running[i]["stopped"] = 1.0
            for i in resume:
                running[i]["stopped"] = 0.0
        active = [i for i, r in running.items() if not r["stopped"]]
        share = min(1.0, cores / len(active)) if active else 0.0
        for i in active:
            running[i]["done"] += share * dt
            cpu_used += share * dt
        t += dt
        total = sum(rss(i) for i in running)
        if total > budget:
            victim = max(running, key=rss)
            del running[victim]
            killed += 1
            failed = True
        peak = max(peak, min(total, budget))
        for i in [i for i, r in running.items() if r["done"] >= jobs[i].cpu_s]:
            del running[i]
    result = f"FAILED after {killed} kill(s)" if failed else "ok"
    return Row(
        "sim",
        label,
        ninja_jobs,
        t,
        ideal_wall(jobs, cores, budget),
        peak,
        killed,
        cpu_used / (t * cores),
        result,
        budget,
        "simulated",
    )


# -- table ---------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = (
        "| machine | strategy | -j | wall s | × ideal | ideal s | peak / budget | killed | CPU util "
        "| others' CPU | result |"
    )
    out = [head, "|" + "---|" * 11]
    for r in rows:
        out.append(
            f"| {r.machine} | {r.strategy} | {r.jobs} | {r.wall:.1f} | "
            f"{f'{r.wall / r.ideal:.2f}' if r.result == 'ok' else 'n/a'} | {r.ideal:.1f} | "
            f"{format_bytes(r.peak)} / {format_bytes(r.budget)} | {r.killed} | {100 * r.cpu_util:.0f}% | "
            f"{'—' if r.others is None else f'{100 * r.others:.0f}%'} | {r.result} |"
        )
    return "\n".join(out)


def strategies(jobs: list[Job], budget: int, cores: int, available: int) -> list[tuple[str, int, bool, int]]:
    estimates = {j.object: j.estimate for j in jobs}
    plan = plan_jobs(available, 0, estimates, cores, 1, mem_budget=budget)
    static = max(1, budget // max(estimates.values()))
    return [
        ("(a) MAX_JOBS=nproc", cores, False, plan.per_job_bytes),
        ("(b) static-safe", static, False, plan.per_job_bytes),
        ("(c) plan+governor", plan.concurrent_jobs, True, plan.per_job_bytes),
    ]


def bound_rows(machine: str, jobs: list[Job], budget: int, cores: int) -> list[Row]:
    """(c) with exact peaks and no margins, then also longest-first: what is left of the gap to
    the ideal once the governor knows everything is Ninja's order, not the governor."""
    _, _, (_, nj, _, per_job) = strategies(jobs, budget, cores, budget)
    return [
        simulate(
            f"(c) bound: exact peaks, no margins [{machine}]", jobs, nj, budget, cores, True, per_job, oracle=True
        ),
        simulate(
            f"(c) bound + longest first [{machine}]",
            jobs,
            nj,
            budget,
            cores,
            True,
            per_job,
            oracle=True,
            longest_first=True,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", type=Path, default=PROFILE)
    parser.add_argument("--scale", type=float, default=0.006, help="time scale for the real run")
    parser.add_argument("--mem-scale", type=float, default=0.1, help="memory scale for the real run")
    parser.add_argument("--budget", default="10G", help="budget in profile units (scaled by --mem-scale)")
    parser.add_argument("--jitter", type=float, default=0.1, help="real peaks differ from estimates by ±this")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.1, help="governor sampling interval, s (real run)")
    parser.add_argument("--enforce", choices=["auto", "cgroup", "watchdog"], default="auto")
    parser.add_argument("--ninja", default=shutil.which("ninja") or "ninja")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spark-replay"))
    parser.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these strategies")
    parser.add_argument("--no-real", action="store_true", help="simulation rows only")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the real strategies")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--sim-cores", type=int, help="CPUs of the modelled local machine (default: this one's)")
    parser.add_argument("--bounds", action="store_true", help="add the simulated bounds rows for (c)")
    args = parser.parse_args(argv)

    cores = cpu_count()
    budget_full = parse_mem_size(args.budget, option="--budget")
    rows: list[Row] = []
    print(
        f"# {platform.node()} {platform.machine()}, {cores} CPUs, "
        f"{format_bytes(psutil.virtual_memory().total)} RAM, ninja {_ninja_version(args.ninja)}"
    )
    # The Spark: 20 cores, 119 GB usable, a 30 GB model already loaded -> an 89 GB budget.
    spark = load_jobs(args.profile, 1.0, 1.0, args.jitter, args.seed)
    for budget_gb in (89, 40):
        spark_budget = budget_gb * GIB
        for label, nj, governed, per_job in strategies(spark, spark_budget, 20, spark_budget):
            rows.append(simulate(f"{label} [Spark {budget_gb}G]", spark, nj, spark_budget, 20, governed, per_job))
        if args.bounds:
            rows += bound_rows(f"Spark {budget_gb}G", spark, spark_budget, 20)
    sim_cores = args.sim_cores or cores
    local_full = load_jobs(args.profile, 1.0, 1.0, args.jitter, args.seed)
    for label, nj, governed, per_job in strategies(local_full, budget_full, sim_cores, budget_full):
        rows.append(
            simulate(
                f"{label} [{sim_cores} cores {format_bytes(budget_full)}]",
                local_full,
                nj,
                budget_full,
                sim_cores,
                governed,
                per_job,
            )
        )
    if args.bounds:
        rows += bound_rows(f"{sim_cores} cores {format_bytes(budget_full)}", local_full, budget_full, sim_cores)
    if not args.no_real:
        jobs = load_jobs(args.profile, args.scale, args.mem_scale, args.jitter, args.seed)
        budget = int(budget_full * args.mem_scale)
        enforcement, why = choose_enforcement(budget, args.enforce)
        enforcement.close()
        print(f"# enforcement: {enforcement.kind}" + (f" ({why})" if why else ""))
        print(
            f"# real run: time x{args.scale}, memory x{args.mem_scale}, budget {format_bytes(budget)}, "
            f"jitter ±{args.jitter:.0%}, governor every {args.interval}s"
        )
        # Round-robin repeats: on a shared machine, strategies compared within one round saw
        # about the same load from other processes (the others' CPU column says how much).
        for round_no in range(1, args.repeat + 1):
            for label, nj, governed, per_job in strategies(jobs, budget, cores, budget):
                if args.only and label[1] not in args.only:
                    continue
                args.per_job = per_job
                tag = f"{label} #{round_no}" if args.repeat > 1 else label
                row = run_real(tag, jobs, nj, budget, cores, args, governed)
                print(f"#   {tag}: {row.result} in {row.wall:.1f}s; {row.note}", flush=True)
                rows.append(row)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


def _ninja_version(ninja: str) -> str:
    try:
        return subprocess.run([ninja, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
