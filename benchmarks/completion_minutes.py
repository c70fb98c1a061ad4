"""Minutes to a validated vLLM wheel on a DGX Spark model (issue 26): the official wheel alone,
the official wheel completed here, and the full source build.

Compile walls are simulated with `schedule_sim` (the real `jobplan` and `governor` over a fake
process table; critical-path order, planned `-j`, pause by slack — the product's defaults):
- the completion: the 7 qutlass objects of the shipped 0.13.0 full-compile profile (the same
  sources 0.26.0 and 0.33.0 compile into `_qutlass_C`), plus, from `--measured` (the
  completion's own `.ninja_log`), any object the profile lacks (0.26.0's qutlass_registration.cpp);
- the source build: the 165 objects of the 0.13.0 build after the FA3 patch.
The steps around the compile are measured: the official wheel's download and validate and the
completion's configure (`--download-s`, `--validate-s`, `--configure-s`, from the
`complete_release.sh` log), the source build's other steps from the real 16-core run
(`../shared/data/build-vllm-0.13.0-12.1a-gpu-machine-2026-12-07`: 62 s before the compile) and
the same validate as the wheels above. Measured seconds from a slower machine are used as they
are (they overstate a Spark).

    .venv/bin/python benchmarks/completion_minutes.py --measured WORK/work/completion/build/.ninja_log \\
        --download-s 12 --validate-s 300 --configure-s 40
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedule_sim import MACHINES, MIB, RESERVE, Obj, load, simulate  # noqa: E402

from spark_build.compile.jobplan import DEFAULT_PROFILE, plan_jobs  # noqa: E402
from spark_build.compile.ninjalog import parse_ninja_log  # noqa: E402

SOURCE_BUILD_OTHER_S = 14.0 + 21.9 + 26.2  # preflight…sources, arch-plan, ninja (real 16-core run)


def _wall(objs: list[Obj], machine_name: str) -> tuple[float, int]:
    machine = next(m for m in MACHINES if m.name == machine_name)
    plan = plan_jobs(machine.free, RESERVE, {o.name: o.est_peak for o in objs}, machine.cores)
    order = sorted(objs, key=lambda o: -o.est_seconds)
    wall, _peak, kills, *_ = simulate(objs, order, plan.concurrent_jobs, machine, "slack", plan.per_job_bytes)
    return wall, kills


def completion_objects(measured: Path | None) -> list[Obj]:
    objs = [o for o in load(DEFAULT_PROFILE, True, 0.0, 1) if "qutlass" in o.name]
    if measured is not None:
        known = {Path(o.name).name for o in objs}
        for entry in parse_ninja_log(measured):
            name = Path(entry.object).name
            if name.endswith(".o") and name not in known:
                seconds = (entry.end_ms - entry.start_ms) / 1000
                objs.append(Obj(name, seconds, 1024 * MIB, seconds, 1024 * MIB))  # peak: a host compile's
    return objs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, help="the completion's .ninja_log")
    parser.add_argument("--download-s", type=float, required=True, help="official wheel download")
    parser.add_argument("--validate-s", type=float, required=True, help="one validate of the wheel")
    parser.add_argument("--configure-s", type=float, required=True, help="the completion's source + configure")
    args = parser.parse_args(argv)
    completion = completion_objects(args.measured)
    full = load(DEFAULT_PROFILE, True, 0.0, 1)
    print(f"completion: {len(completion)} objects, {sum(o.seconds for o in completion):,.0f} CPU-s; "
          f"source build: {len(full)} objects, {sum(o.seconds for o in full):,.0f} CPU-s")  # fmt: skip
    print()
    print("| machine | official wheel only | official + completion | full source build |")
    print("|---|---|---|---|")
    for machine in ("Spark", "Spark + 40 GB model"):
        c_wall, c_kills = _wall(completion, machine)
        f_wall, f_kills = _wall(full, machine)
        official = args.download_s + args.validate_s
        completed = official + args.configure_s + c_wall + args.validate_s
        source = SOURCE_BUILD_OTHER_S + f_wall + args.validate_s  # the same proof of a whole wheel
        print(
            f"| {machine} | {official / 60:.1f} min (no `_qutlass_C` for 12.x) "
            f"| {completed / 60:.1f} min (compile {c_wall / 60:.1f}, {c_kills} kills) "
            f"| {source / 60:.1f} min (compile {f_wall / 60:.1f}, {f_kills} kills) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
