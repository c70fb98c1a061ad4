"""Build only some extension targets of a release, with the release's own CMake: what completing
a prebuilt wheel compiles (`wheel.complete` swaps the results in).

The release's CMakeLists.txt, not a copy of its logic, decides each target's sources, flags and
arch handling (vLLM's `cuda_archs_loose_intersection`, its `VLLM_GPU_FLAGS`): spark-build only
configures it for the target arch and asks Ninja for the named targets, so their objects get the
compile commands a full build would give them and nothing else is compiled. The build folder is
kept, so a completion that was interrupted reuses every object Ninja had finished.

The compile itself is the source build's (`governed`): jobs planned from free memory and measured
per-object peaks, the memory governor, the compiler cache's launchers, Ninja's log seeded with
measured durations for the duration-weighted Ninja, the status line's objects done/total,
`jobs.json`, and the OOM rerun with fewer jobs. Only the command differs: `ninja -C BUILD TARGET…`
where the source build runs setup.py's `pip wheel`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_build.compile.cache_plan import env_note
from spark_build.compile.eta import Forecast
from spark_build.compile.governed import (
    GovernedCompile,
    GovernorJournal,
    governed_compile,
    ninja_outputs,
    objects_recorded,
    planned_objects,
)
from spark_build.compile.jobplan import DEFAULT_PROFILE, Estimates, JobPlan, cmake_target_of, load_estimates, plan_jobs
from spark_build.compile.ninjalog import seed_ninja_log
from spark_build.errors import UsageError
from spark_build.layout import RunFolder
from spark_build.proc import Runner


@dataclass(frozen=True)
class TargetBuild:
    """Where and how: `source` holds the release's CMakeLists.txt; `stage` receives each target's
    install component, laid out as the wheel lays it out (`spark_example/_C.abi3.so`)."""

    source: Path
    build_dir: Path
    stage: Path
    arch_list: str  # TORCH_CUDA_ARCH_LIST, read by the release's CMake (through torch's for vLLM)
    cmake: Path  # >= 3.26, as vLLM and the example require; its folder must hold ninja too, or PATH
    cuda_home: Path
    python: Path  # the interpreter the extension is built for (abi3, so any CPython >= 3.8)
    jobs: int
    build_type: str = "Release"  # --build-type, as the source build's (setup.py's CMAKE_BUILD_TYPE)
    cmake_args: tuple[str, ...] = ()  # the release's own switches (vLLM: -DVLLM_PYTHON_EXECUTABLE=…)
    env: Mapping[str, str] = field(default_factory=dict)  # *_SRC_DIR of the kept external projects, CPATH


def configure_argv(spec: TargetBuild) -> list[str | os.PathLike[str]]:
    return [
        spec.cmake,
        "-S",
        spec.source,
        "-B",
        spec.build_dir,
        "-G",
        "Ninja",
        f"-DCMAKE_BUILD_TYPE={spec.build_type}",
        f"-DCMAKE_CUDA_COMPILER={spec.cuda_home / 'bin' / 'nvcc'}",
        f"-DPython3_EXECUTABLE={spec.python}",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        f"-DFETCHCONTENT_BASE_DIR={spec.build_dir / '.deps'}",
        *spec.cmake_args,
    ]


def _environment(
    spec: TargetBuild, cache_env: Mapping[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """The environment the release's CMake reads (the compiler cache's launchers among it), and
    the part of it the log names (a cache password masked)."""
    env = {
        **os.environ,
        **spec.env,
        "TORCH_CUDA_ARCH_LIST": spec.arch_list,
        "CUDA_HOME": str(spec.cuda_home),
        "PATH": os.pathsep.join([str(spec.cmake.parent), str(spec.cuda_home / "bin"), os.environ.get("PATH", "")]),
        **(cache_env or {}),  # CMAKE_<LANG>_COMPILER_LAUNCHER: read by the configure
    }
    note = {"TORCH_CUDA_ARCH_LIST": spec.arch_list, "CUDA_HOME": str(spec.cuda_home), **spec.env}
    return env, {**note, **env_note(cache_env or {})}


def configure_targets(spec: TargetBuild, runner: Runner, log: Path, cache_env: Mapping[str, str] | None = None) -> Path:
    """Configure the release's source (no compile); its compile_commands.json, which says which
    sources each target compiles (`arch.target_sources`) before anything is built."""
    if not (spec.source / "CMakeLists.txt").is_file():
        raise UsageError(
            f"{spec.source} has no CMakeLists.txt: not the source of a release with CMake extensions",
            hint="give the release's source tree (its sdist or its tag's checkout)",
        )
    env, note = _environment(spec, cache_env)
    spec.build_dir.mkdir(parents=True, exist_ok=True)
    runner.run(configure_argv(spec), log=log, step="complete", env=env, env_note=note)
    return spec.build_dir / "compile_commands.json"


@dataclass(frozen=True)
class CompileRun:
    """How the targets compile: the source build's compile settings, resolved once by the caller."""

    source: str  # jobs.json's key (`v0.26.0 12.1a completion`): records of it plan the next run
    ninja: Path  # the duration-weighted Ninja where it was built, else the stock one
    weighted: bool  # `ninja` orders by the durations in its log: seed them before the first build
    cache_env: Mapping[str, str]  # the compiler cache's launchers and settings (`cache.start`)
    records: Path  # the logs folder: earlier runs' jobs.json plan this one
    run_folder: RunFolder  # this run's jobs.json and governor.jsonl
    reserve_bytes: int
    mem_budget: int | None
    jobs_override: int | None  # --jobs
    available_bytes: Callable[[], int]  # memory available now (a running model counts)
    on_forecast: Callable[[Forecast], None]  # objects done/total and ETA, for the status line
    note: Callable[[str], None]  # the plan's reasons, for the user


@dataclass(frozen=True)
class TargetsBuilt:
    """The stage the targets were installed into, and the compile's record for summary.json."""

    stage: Path
    result: dict[str, Any]


def target_estimates(run: CompileRun, targets: frozenset[str]) -> Estimates:
    """Per-object estimates for these targets: earlier completions' records, the shipped profile's
    objects of the same targets, or, for a target the profile never built (`_qutlass_C`, a
    target of its own only from vLLM 0.19), every object of the profile."""
    every = load_estimates([run.records], DEFAULT_PROFILE, source=run.source)
    if any(cmake_target_of(name) in targets for name in every.peaks):
        return load_estimates([run.records], DEFAULT_PROFILE, source=run.source, targets=targets)
    return every


def targets_outputs(commands: object, build_dir: Path, targets: frozenset[str]) -> list[str]:
    """The objects of `targets` as Ninja names them in this build folder."""
    return [out for out in ninja_outputs(commands, build_dir) if cmake_target_of(out) in targets]


def ninja_argv(ninja: Path, build_dir: Path, plan: JobPlan, targets: Sequence[str]) -> list[str | os.PathLike[str]]:
    """Ninja itself, not `cmake --build`: the one CMake cached at the first configure may be the
    stock one, and only the duration-weighted one starts the longest objects first."""
    return [ninja, "-C", build_dir, "-j", str(plan.concurrent_jobs), *targets]


def build_targets(
    spec: TargetBuild, targets: Sequence[str], runner: Runner, log: Path, run: CompileRun
) -> TargetsBuilt:
    """Configure, build `targets` alone as the source build compiles, install each one's component
    into `spec.stage`; the stage and the compile's record. `spec.jobs` is the most jobs the CPUs
    take: the plan runs fewer where memory binds, `--jobs` (`run.jobs_override`) wins."""
    if not targets:
        raise UsageError("no extension target to build", hint="name the targets the wheel lacks")
    configure_targets(spec, runner, log, run.cache_env)
    env, note = _environment(spec, run.cache_env)
    wanted = frozenset(targets)
    try:
        commands: object = json.loads((spec.build_dir / "compile_commands.json").read_text())
    except (OSError, ValueError):
        commands = None
    estimates = target_estimates(run, wanted)
    objects = planned_objects(commands, spec.build_dir, estimates, wanted)
    plan = plan_jobs(
        run.available_bytes(),
        run.reserve_bytes,
        estimates.peaks,
        spec.jobs,
        jobs_override=run.jobs_override,
        mem_budget=run.mem_budget,
    )
    run.note(f"{len(objects)} objects of {', '.join(targets)}; {plan.reason}; estimates: {estimates.origin}")
    if run.weighted:
        seeded = seed_ninja_log(
            spec.build_dir / ".ninja_log", targets_outputs(commands, spec.build_dir, wanted), estimates.seconds
        )
        if seeded:
            run.note(f"seeded Ninja with {len(seeded)} durations, the longest first")
    before = objects_recorded(spec.build_dir)
    governed = GovernedCompile(
        estimates=estimates,
        source=run.source,
        objects=objects,
        build_tree=spec.build_dir,
        jobs_json=run.run_folder.jobs,
        journal=GovernorJournal(run.run_folder.governor_journal),
        reserve_bytes=run.reserve_bytes,
        log=log,
        on_forecast=run.on_forecast,
    )

    def ninja(at: JobPlan, on_start: Callable[[int], None]) -> int:
        argv = ninja_argv(run.ninja, spec.build_dir, at, targets)
        return runner.run(argv, log=log, step="complete", env=env, env_note=note, on_start=on_start, check=False)

    outcome = governed_compile(governed, plan, ninja, run.note)
    built = objects_recorded(spec.build_dir) - before
    for target in targets:
        install: list[str | os.PathLike[str]] = [
            spec.cmake,
            "--install",
            spec.build_dir,
            "--prefix",
            spec.stage,
            "--component",
            target,
        ]
        runner.run(install, log=log, step="complete", env=env)
    record = {
        **outcome.to_dict(plan),
        "objects_built": built,
        "objects_total": len(objects),
        "jobs": str(run.run_folder.jobs),
    }
    return TargetsBuilt(spec.stage, record)
