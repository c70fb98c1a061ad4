"""Build only some extension targets of a release, with the release's own CMake: what completing
a prebuilt wheel compiles (`wheel.complete` swaps the results in).

The release's CMakeLists.txt, not a copy of its logic, decides each target's sources, flags and
arch handling (vLLM's `cuda_archs_loose_intersection`, its `VLLM_GPU_FLAGS`): spark-build only
configures it for the target arch and asks Ninja for the named targets, so their objects get the
compile commands a full build would give them and nothing else is compiled. The build folder is
kept, so a completion that was interrupted reuses every object Ninja had finished.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spark_build.errors import UsageError
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


def _environment(spec: TargetBuild) -> tuple[dict[str, str], dict[str, str]]:
    """The environment the release's CMake reads, and the part of it the log names."""
    env = {
        **os.environ,
        **spec.env,
        "TORCH_CUDA_ARCH_LIST": spec.arch_list,
        "CUDA_HOME": str(spec.cuda_home),
        "PATH": os.pathsep.join([str(spec.cmake.parent), str(spec.cuda_home / "bin"), os.environ.get("PATH", "")]),
    }
    return env, {"TORCH_CUDA_ARCH_LIST": spec.arch_list, "CUDA_HOME": str(spec.cuda_home), **spec.env}


def configure_targets(spec: TargetBuild, runner: Runner, log: Path) -> Path:
    """Configure the release's source (no compile); its compile_commands.json, which says which
    sources each target compiles (`arch.target_sources`) before anything is built."""
    if not (spec.source / "CMakeLists.txt").is_file():
        raise UsageError(
            f"{spec.source} has no CMakeLists.txt: not the source of a release with CMake extensions",
            hint="give the release's source tree (its sdist or its tag's checkout)",
        )
    env, note = _environment(spec)
    spec.build_dir.mkdir(parents=True, exist_ok=True)
    runner.run(configure_argv(spec), log=log, step="complete", env=env, env_note=note)
    return spec.build_dir / "compile_commands.json"


def build_targets(spec: TargetBuild, targets: Sequence[str], runner: Runner, log: Path) -> Path:
    """Configure, build `targets` alone, install each one's component into `spec.stage`; the stage."""
    if not targets:
        raise UsageError("no extension target to build", hint="name the targets the wheel lacks")
    configure_targets(spec, runner, log)
    env, note = _environment(spec)
    build: list[str | os.PathLike[str]] = [
        spec.cmake,
        "--build",
        spec.build_dir,
        "-j",
        str(spec.jobs),
        *(f"--target={t}" for t in targets),
    ]
    runner.run(build, log=log, step="complete", env=env, env_note=note)
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
    return spec.stage
