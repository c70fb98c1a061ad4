"""Real compile benchmark: is the replay honest?

Compiles real vLLM 0.13.0 objects for `12.1a` — nvcc 13.0, the torch installed in `--venv`,
CUTLASS headers from the `nvidia-cutlass` wheel, external projects from git bundles — with real
Ninja under a memory budget, throttled by spark-build's own planner (`jobplan.plan_jobs`) and
governor (`governor.Governor`), the budget enforced as in `replay.py` (kernel cgroup where one
is writable, else a watchdog that kills the largest process over the budget). Then it replays
the *same* objects, from the shipped profile, with the same budget, CPUs and `-j` — real Ninja
and `replay_job.py` at a reduced time scale, and the full-scale simulation — so the replay's
rows can be read against the real one's: ratio to the ideal, peak against the budget, kills.

The whole `_C`/`_moe_C` compile is ~10,400 CPU-s (three 9-minute calls on the 16-core device);
`--cpu-s` picks a subset that fits one call: every object of 6 GB or more (the CUTLASS sm120
FP8/NVFP4 ones, the reason budgets matter), then others spread evenly over the profile until the
CPU-seconds are reached. Ninja starts them in its manifest's order whatever the order of the
targets on its command line, so the simulation and the replay take that order too.

    python benchmarks/real_compile.py --sdist vllm-0.13.0.tar.gz --mirror DIR \\
        --cutlass-wheel nvidia_cutlass-4.2.0.0-py3-none-any.whl --venv /opt/torch/.venv \\
        --budget 32G --cpu-s 2000 [--strategy a] --out DIR --json DIR/real.json

`--strategy c` (default) is spark-build's plan and governor; `--strategy a` is `-j nproc`
ungoverned (the governor only watches, to record each object's peak), to show the failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import git
import psutil
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay import Job, Row, _rss, _tree, choose_enforcement, ideal_wall, run_real, simulate, table  # noqa: E402

from spark_build.arch.cmake_configure import configure  # noqa: E402
from spark_build.compile.governor import Governor  # noqa: E402
from spark_build.compile.jobplan import cpu_count, plan_jobs, write_jobs_json  # noqa: E402
from spark_build.compile.ninjalog import normalize_object, parse_ninja_log  # noqa: E402
from spark_build.compile.oom import find_oom_kills  # noqa: E402
from spark_build.proc import Runner  # noqa: E402
from spark_build.sizes import format_bytes, parse_mem_size  # noqa: E402
from spark_build.upstream.sources import prepare_sources  # noqa: E402

PROFILE = ROOT / "spark_build" / "data" / "vllm-0.13.0-sm121a-compile-profile.json"
MIB = 2**20
HEAVY_MB = 6000
BUNDLES = {"vllm-flash-attn": "flash-attention.bundle", "flashmla": "FlashMLA.bundle", "qutlass": "qutlass.bundle"}


def select_objects(objects: list[dict[str, Any]], cpu_s: float | None, names: list[str]) -> list[dict[str, Any]]:
    """`names` if given, else every heavy object then others evenly spread until `cpu_s`;
    profile order kept."""
    if names:
        return [o for o in objects if any(n in o["object"] for n in names)]
    if cpu_s is None:
        return list(objects)
    heavy = [o for o in objects if o["peak_rss_mb"] >= HEAVY_MB]
    rest = [o for o in objects if o["peak_rss_mb"] < HEAVY_MB and o["lang"] == "cuda"]
    chosen = {o["object"] for o in heavy}
    total = sum(o["cpu_s"] for o in heavy)
    for stride in (4, 3, 2, 1):
        for o in rest[::stride]:
            if total >= cpu_s:
                break
            if o["object"] not in chosen:
                chosen.add(o["object"])
                total += o["cpu_s"]
    return [o for o in objects if o["object"] in chosen]


def manifest_order(build: Path) -> dict[str, int]:
    """Each object's place among the build statements of `build.ninja`: the order Ninja starts them."""
    outputs = re.findall(r"^build (CMakeFiles/[^\s:]+\.o)\b", (build / "build.ninja").read_text(), re.MULTILINE)
    return {normalize_object(out): index for index, out in enumerate(outputs)}


def _git_env() -> dict[str, str]:
    who = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench"}
    return {**who, "GIT_COMMITTER_EMAIL": "bench@localhost"}


def prepare(args: argparse.Namespace, runner: Runner, logs: Path) -> tuple[Path, float]:
    """Source, sources and configure; returns the build folder and the seconds it took.
    A build folder already configured (a warm machine's second call) is reused as it is."""
    t0 = time.perf_counter()
    work: Path = args.workdir
    build = work / "build"
    if (build / "build.ninja").is_file():
        return build, 0.0
    work.mkdir(parents=True, exist_ok=True)
    source = work / "vllm-0.13.0"
    if not source.is_dir():
        with tarfile.open(args.sdist) as tar:
            tar.extractall(work, filter="data")
    # Triton is not mirrored; vLLM's CMake only copies the .py files of its triton_kernels.
    triton = work / "triton"
    if not triton.is_dir():
        package = triton / "python" / "triton_kernels" / "triton_kernels"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("# stand-in for Triton's triton_kernels\n")
        repo = git.Repo.init(triton, initial_branch="main")
        repo.index.add([str(package / "__init__.py")])
        repo.git.commit("-qm", "triton_kernels stand-in", env=_git_env())
        repo.create_tag("v3.5.0")
    # The nvidia-cutlass wheel unpacked where `find_cutlass_package` looks in a venv.
    cutlass_venv = work / "cutlass-venv"
    site = cutlass_venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not site.is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--target",
                str(site),
                str(args.cutlass_wheel),
            ],
            check=True,
        )
    mirrors = {name: str(args.mirror / bundle) for name, bundle in BUNDLES.items()}
    mirrors["triton_kernels"] = str(triton)
    sources = prepare_sources(
        source, Version("0.13.0"), work / "sources", mirrors=mirrors, offline=True, cutlass_venv=cutlass_venv
    )
    configure(
        source,
        build,
        args.arch,
        venv=args.venv,
        cuda_home=args.cuda_home,
        runner=runner,
        log=logs / "configure.log",
        env=sources.env,
        step="configure",
        build_type="Release",
        jobs=cpu_count(),
    )
    return build, time.perf_counter() - t0


def compile_enforced(
    build: Path,
    targets: list[str],
    ninja_jobs: int,
    budget: int,
    estimates: dict[str, int],
    per_job: int,
    args: Any,
    governed: bool,
) -> dict[str, Any]:
    """Ninja builds `targets` in its own process group inside the enforced budget; governed, or
    with the governor only watching (a budget it never reaches) to record each object's peak."""
    for target in targets:  # a second run must compile, not find the objects up to date
        (build / target).unlink(missing_ok=True)
    ninja_log = build / ".ninja_log"
    ninja_log.unlink(missing_ok=True)
    enforcement, why = choose_enforcement(budget, args.enforce)
    cmd = enforcement.wrap([args.ninja, "-j", str(ninja_jobs), *targets])
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(args.venv / "bin"), str(args.cuda_home / "bin"), os.environ["PATH"]]),
    }
    log_path = args.out / "compile.log"
    peak = 0
    cpu0 = psutil.cpu_times()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=build, env=env, stdout=log, stderr=subprocess.STDOUT, process_group=0)
        enforcement.start(proc.pid)
        limits = {"budget_bytes": budget} if governed else {"budget_bytes": 1 << 62, "low_mark": 0, "high_mark": 0}
        governor = Governor(proc.pid, default_peak=per_job, estimates=estimates, **limits)
        try:
            with governor:
                while proc.poll() is None:
                    peak = max(peak, sum(_rss(p) for p in _tree(proc.pid)))
                    if time.perf_counter() - t0 > args.deadline:
                        os.killpg(proc.pid, signal.SIGTERM)
                    time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - t0
    cpu1 = psutil.cpu_times()
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    enforcement.finish()
    kernel_peak = enforcement.peak()
    enforcement.close()
    entries = parse_ninja_log(ninja_log) if ninja_log.is_file() else []
    records = governor.job_records()
    write_jobs_json(args.out / "jobs.json", records, entries, source="vllm-0.13.0 12.1a (real_compile benchmark)")
    kills = find_oom_kills(log_path.read_text(errors="replace"), proc.returncode)
    return {
        "returncode": proc.returncode,
        "wall": wall,
        "cpu": cpu,
        "peak": max(peak, kernel_peak or 0),
        "killed": max(enforcement.killed, len([k for k in kills if k.object])),
        "enforcement": enforcement.kind + (f" ({why})" if why else ""),
        "pauses": governor.stops,
        "samples": governor.samples,
        "sample_ms": 1000 * governor.sample_seconds / max(1, governor.samples),
        "durations": {e.object: (e.end_ms - e.start_ms) / 1000 for e in entries},
        "peaks": {normalize_object(r.object): r.peak_rss_bytes for r in records},
    }


def real_row(
    real: dict[str, Any],
    chosen: list[dict[str, Any]],
    estimates: dict[str, int],
    label: str,
    ninja_jobs: int,
    cores: int,
    budget: int,
    result: str,
) -> Row:
    """The real compile as a table row; its ideal from the measured durations and peaks."""
    measured = [
        Job(
            "CMakeFiles/" + o["object"],
            real["durations"].get(o["object"], o["wall_s"]),
            real["peaks"].get(o["object"]) or o["peak_rss_mb"] * MIB,
            estimates[o["object"]],
        )
        for o in chosen
    ]
    return Row(
        "real",
        label,
        ninja_jobs,
        real["wall"],
        ideal_wall(measured, cores, budget),
        real["peak"],
        real["killed"],
        real["cpu"] / (real["wall"] * cores),
        result,
        budget,
        f"{real['pauses']} pauses, {real['samples']} samples at {real['sample_ms']:.1f} ms; {real['enforcement']}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, required=True)
    parser.add_argument("--mirror", type=Path, required=True, help="folder with the external projects' git bundles")
    parser.add_argument("--cutlass-wheel", type=Path, required=True)
    parser.add_argument("--venv", type=Path, required=True, help="a venv with CUDA torch, cmake and ninja")
    parser.add_argument("--cuda-home", type=Path, default=Path("/usr/local/cuda"))
    parser.add_argument("--arch", default="12.1a")
    parser.add_argument("--profile", type=Path, default=PROFILE)
    parser.add_argument("--budget", default="40G")
    parser.add_argument(
        "--strategy", choices=["a", "c"], default="c", help="(a) -j nproc ungoverned, (c) planned+governed"
    )
    parser.add_argument("--reserve", default="4G", help="what the planner keeps back from available memory")
    parser.add_argument("--cpu-s", type=float, default=2400.0, help="profile CPU-seconds to compile (0: all)")
    parser.add_argument("--objects", nargs="*", default=[], help="compile only objects whose names contain these")
    parser.add_argument("--replay-scale", type=float, default=0.1, help="time scale of the replay of the same objects")
    parser.add_argument("--no-compile", action="store_true", help="configure, simulate and replay only")
    parser.add_argument("--deadline", type=float, default=480.0, help="stop the compile after this many seconds")
    parser.add_argument("--enforce", choices=["auto", "cgroup", "watchdog"], default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/spark-real"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/spark-real/out"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    for name in ("sdist", "mirror", "cutlass_wheel", "venv", "workdir", "out"):  # git runs in other folders
        setattr(args, name, getattr(args, name).resolve())
    args.ninja = str(args.venv / "bin" / "ninja") if (args.venv / "bin" / "ninja").exists() else "ninja"
    args.out.mkdir(parents=True, exist_ok=True)
    cores = cpu_count()
    budget = parse_mem_size(args.budget, option="--budget")
    reserve = parse_mem_size(args.reserve, option="--reserve", allow_zero=True)

    build, prep_s = prepare(args, Runner(), args.out)
    profile = json.loads(args.profile.read_text())["objects"]
    known = {normalize_object(e["output"]) for e in json.loads((build / "compile_commands.json").read_text())}
    selected = select_objects(profile, args.cpu_s or None, args.objects)
    order = manifest_order(build)
    chosen = sorted((o for o in selected if o["object"] in known), key=lambda o: order.get(o["object"], len(order)))
    missing = [o["object"] for o in selected if o["object"] not in known]
    targets = ["CMakeFiles/" + o["object"] for o in chosen]
    estimates = {o["object"]: o["peak_rss_mb"] * MIB for o in chosen}
    plan = plan_jobs(psutil.virtual_memory().available, reserve, estimates, cores, 1, mem_budget=budget)
    print(
        f"# {platform.node()} {platform.machine()}, {cores} CPUs, {format_bytes(psutil.virtual_memory().total)}, "
        f"torch from {args.venv}, nvcc {args.cuda_home}; prepare+configure {prep_s:.0f} s"
    )
    print(f"# {len(chosen)} objects, {sum(o['cpu_s'] for o in chosen):.0f} profile CPU-s; not in this build: {missing}")
    print(f"# plan: {plan.reason}", flush=True)

    governed = args.strategy == "c"
    ninja_jobs = plan.concurrent_jobs if governed else cores
    label = "(c) plan+governor" if governed else "(a) MAX_JOBS=nproc"
    rows: list[Row] = []
    real: dict[str, Any] = {"peaks": {}, "durations": {}}
    ok = True
    if not args.no_compile:
        real = compile_enforced(
            build, targets, ninja_jobs, plan.budget_bytes, estimates, plan.per_job_bytes, args, governed
        )
        built = [o for o in chosen if (build / "CMakeFiles" / o["object"]).is_file()]
        ok = real["returncode"] == 0 and len(built) == len(chosen)
        result = "ok" if ok else f"FAILED {len(built)}/{len(chosen)} built (exit {real['returncode']})"
        rows.append(
            real_row(real, chosen, estimates, f"{label}, real nvcc", ninja_jobs, cores, plan.budget_bytes, result)
        )
        print(f"#   real: {result} in {real['wall']:.0f} s; {rows[0].note}", flush=True)

    # The same objects from the profile: full-scale simulation and a real replay at reduced scale.
    profiled = [
        Job("CMakeFiles/" + o["object"], o["cpu_s"], o["peak_rss_mb"] * MIB, estimates[o["object"]]) for o in chosen
    ]
    static = max(1, plan.budget_bytes // max(estimates.values()))
    for name, nj, gov in (("(b) static-safe", static, False), (label, ninja_jobs, governed)):
        rows.append(simulate(name + " [same objects]", profiled, nj, plan.budget_bytes, cores, gov, plan.per_job_bytes))
    scaled = [Job(j.object, j.cpu_s * args.replay_scale, j.peak, j.estimate) for j in profiled]
    replay_args = SimpleNamespace(
        workdir=args.workdir / "replay",
        enforce=args.enforce,
        ninja=args.ninja,
        per_job=plan.per_job_bytes,
        interval=0.5 * args.replay_scale,
    )
    replayed = run_real(f"{label}, replay", scaled, ninja_jobs, plan.budget_bytes, cores, replay_args, governed)
    replayed.machine = f"replay ×{args.replay_scale}"
    rows.append(replayed)

    print(table(rows))
    print("\nper object, real against the profile (peak: tree RSS seen by the governor; time: .ninja_log):")
    ratios = []
    for o in chosen:
        peak = real["peaks"].get(o["object"])
        secs = real["durations"].get(o["object"])
        if peak and secs:
            ratios.append((peak / (o["peak_rss_mb"] * MIB), secs / o["wall_s"]))
            print(
                f"  {o['object']}: peak {format_bytes(peak)} (profile {o['peak_rss_mb'] / 1024:.1f} GiB), "
                f"{secs:.0f} s (profile {o['wall_s']:.0f} s)"
            )
    if ratios:
        peaks_r, time_r = sorted(r[0] for r in ratios), sorted(r[1] for r in ratios)
        print(
            f"  peak ratio median {peaks_r[len(peaks_r) // 2]:.2f} (min {peaks_r[0]:.2f}, max {peaks_r[-1]:.2f}); "
            f"time ratio median {time_r[len(time_r) // 2]:.2f} (min {time_r[0]:.2f}, max {time_r[-1]:.2f})"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"rows": [r.__dict__ for r in rows], "objects": real["peaks"], "durations": real["durations"]}, indent=1
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
