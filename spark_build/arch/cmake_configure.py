"""vLLM's own CMake configure, run for what it decides, never to compile.

The arch plan reads what `cmake` decides (per-object `-gencode` flags in
`compile_commands.json`, the `Building … for archs` messages); benchmarks configure the same
way and then run Ninja in the folder. This module is the process side: the cmake command
vLLM's `setup.py` would run, and stand-ins for the driver libraries a machine without a GPU
lacks (safe only because a configure links nothing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spark_build.errors import StepFailed
from spark_build.proc import Runner
from spark_build.venv import find_tool


@dataclass(frozen=True)
class StubLibrary:
    """A driver library CMake insists on finding although a configure never links it."""

    cmake_var: str
    soname: str


def cuda_major(cuda_home: Path) -> int:
    """The toolkit's major version from `include/cuda.h` (`#define CUDA_VERSION 13000`)."""
    header = cuda_home / "include" / "cuda.h"
    found = (
        re.search(r"#define\s+CUDA_VERSION\s+(\d+)", header.read_text(errors="replace")) if header.is_file() else None
    )
    if found is None:
        raise StepFailed(f"cannot read the CUDA version from {header}", hint="point --cuda-home at a CUDA toolkit")
    return int(found[1]) // 1000


def missing_link_libraries(cuda_home: Path) -> list[StubLibrary]:
    """Libraries CMake's FindCUDAToolkit must find for vLLM's targets (`CUDA::cuda_driver` for
    `cumem_allocator`, nvrtc through torch) but a toolkit without a driver may lack: a build
    machine with no GPU has no `libcuda.so`, and a trimmed toolkit may ship neither it nor
    its `lib64/stubs/` copy."""
    lib_dirs = [cuda_home / "lib64", cuda_home / "lib", *sorted((cuda_home / "targets").glob("*/lib"))]

    def present(name: str) -> bool:
        return any((d / name).exists() or (d / "stubs" / name).exists() for d in lib_dirs)

    missing = []
    if not present("libcuda.so"):
        missing.append(StubLibrary("CUDA_cuda_driver_LIBRARY", "libcuda.so.1"))
    if not present("libnvrtc.so"):
        missing.append(StubLibrary("CUDA_nvrtc_LIBRARY", f"libnvrtc.so.{cuda_major(cuda_home)}"))
    return missing


def build_stubs(
    missing: Sequence[StubLibrary], stub_dir: Path, runner: Runner, log: Path, step: str
) -> dict[str, Path]:
    """Empty shared objects with the real sonames: for a configure-only run (the arch plan
    stops after configure), and for linking a completion's extensions on a host without the
    driver (`nightly.completion_build` says why that is sound). Never loaded. The source
    build's compile, which also runs setup.py's other targets, is not given them.
    """
    stub_dir.mkdir(parents=True, exist_ok=True)
    source = stub_dir / "empty.c"
    source.write_text("/* configure-only stand-in for a CUDA library; never linked */\n")
    made: dict[str, Path] = {}
    for lib in missing:
        out = stub_dir / (lib.soname.split(".so")[0] + ".so")
        runner.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{lib.soname}", "-o", out, source], log=log, step=step)
        made[lib.cmake_var] = out
    return made


_DECLARED = re.compile(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(")


def driver_link_stub(cuda_home: Path, stub_dir: Path, runner: Runner, log: Path, step: str) -> Path:
    """A `libcuda.so.1` that defines every function `cuda.h` declares (its `_v2` names as the
    header maps them), as the toolkit's own `lib64/stubs/libcuda.so` does, for linking on a host
    without the driver. An empty stand-in is not enough for a link: torch's CMake links with
    `-Wl,--as-needed`, which drops a library that defines nothing the objects use, and the
    extension would lose `libcuda.so.1` from its NEEDED list while calling the driver
    (`cuTensorMapEncodeTiled` in qutlass)."""
    stub_dir.mkdir(parents=True, exist_ok=True)
    header = stub_dir / "cuda-declarations.i"
    runner.run(["gcc", "-E", "-P", "-o", header, cuda_home / "include" / "cuda.h"], log=log, step=step)
    names = sorted(set(_DECLARED.findall(header.read_text(errors="replace"))))
    source = stub_dir / "libcuda-stub.c"
    source.write_text(
        "/* link-time stand-in for the CUDA driver; never loaded */\n"
        + "".join(f"void {n}(void) {{}}\n" for n in names)
    )
    out = stub_dir / "libcuda.so"
    runner.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", out, source], log=log, step=step)
    return out


def cmake_args(
    source: Path,
    build_dir: Path,
    *,
    python: Path,
    cuda_home: Path,
    build_type: str = "RelWithDebInfo",
    jobs: int = 1,
    nvcc_threads: int | None = None,
    stubs: Mapping[str, Path] | None = None,
) -> list[str]:
    """The cmake command vLLM's `setup.py` (`cmake_build_ext.configure`) would run, plus
    `CMAKE_EXPORT_COMPILE_COMMANDS` so the per-object flags can be read back.

    Left out on purpose: ccache/sccache launchers (they change no flag that decides an arch)
    and `VLLM_PYTHON_PATH` (only machete's Hopper generator reads it, and the venv's own
    interpreter already has its site-packages on its path).
    """
    args = [
        str(source),
        "-G",
        "Ninja",
        f"-DCMAKE_BUILD_TYPE={build_type}",
        "-DVLLM_TARGET_DEVICE=cuda",
        f"-DVLLM_PYTHON_EXECUTABLE={python}",
        # setup.py uses <source>/.deps; ours stays in the build folder so the source tree
        # (which the patch step reverse-checks) gets no new folder.
        f"-DFETCHCONTENT_BASE_DIR={build_dir / '.deps'}",
    ]
    if nvcc_threads:
        args.append(f"-DNVCC_THREADS={nvcc_threads}")
    args += [
        "-DCMAKE_JOB_POOL_COMPILE:STRING=compile",
        f"-DCMAKE_JOB_POOLS:STRING=compile={jobs}",
        f"-DCMAKE_CUDA_COMPILER={cuda_home / 'bin' / 'nvcc'}",
        "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
    ]
    args += [f"-D{var}={path}" for var, path in sorted((stubs or {}).items())]
    return args


@dataclass(frozen=True)
class Configured:
    build_dir: Path
    log: Path
    compile_commands: Path
    stubs: Mapping[str, Path] = field(default_factory=dict)


def configure(
    source: Path,
    build_dir: Path,
    arch: str,
    *,
    venv: Path,
    cuda_home: Path,
    runner: Runner,
    log: Path,
    env: Mapping[str, str] | None = None,
    step: str = "arch-plan",
    build_type: str = "RelWithDebInfo",
    jobs: int = 1,
    bin_dirs: Sequence[Path] = (),
) -> Configured:
    """Run vLLM's real CMake configure (nothing is compiled) into a fresh `build_dir`.

    `venv` must hold the CUDA torch and the build requirements (cmake ≥ 3.26 among them), or
    see them in `bin_dirs` (the scripts of an interpreter whose packages it inherits);
    `env` adds the sources' `*_SRC_DIR` variables so nothing is fetched from the network.
    Missing driver libraries are replaced by stubs, which is safe only because this stops
    after configure. The build folder starts empty: a stale CMakeCache from another arch or
    an unpatched tree would answer for the wrong source. `jobs` sizes CMake's compile pool, as
    setup.py sizes it from MAX_JOBS, for a caller that goes on to run Ninja in this folder.
    """
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    missing = missing_link_libraries(cuda_home)
    stubs = build_stubs(missing, build_dir / "configure-only-stubs", runner, log, step) if missing else {}
    python = venv / "bin" / "python"
    paths = [venv / "bin", *bin_dirs]
    cmake = find_tool("cmake", paths)
    argv = [str(cmake or "cmake")]
    argv += cmake_args(
        source, build_dir, python=python, cuda_home=cuda_home, build_type=build_type, jobs=jobs, stubs=stubs
    )
    variables = {**setup_variables(arch, cuda_home, paths), **dict(env or {})}
    note = {k: v for k, v in variables.items() if k != "PATH"}
    runner.run(argv, log=log, step=step, cwd=build_dir, env={**os.environ, **variables}, env_note=note)
    commands = build_dir / "compile_commands.json"
    if not commands.is_file():
        raise StepFailed("CMake configured but wrote no compile_commands.json", step=step, log=log)
    return Configured(build_dir, log, commands, stubs)


# setup.py decides which CMake targets it builds (`cmake --build --target …`) from its own
# ext_modules list; run it with `--name` (no build) and read that list back.
_EXTENSIONS_PROBE = """
import json, runpy, sys
out = sys.argv[1]
sys.argv = ["setup.py", "--name"]
scope = runpy.run_path("setup.py", run_name="__main__")
json.dump([getattr(ext, "name", str(ext)) for ext in scope.get("ext_modules", [])], open(out, "w"))
"""


def setup_variables(arch: str, cuda_home: Path, bin_dirs: Sequence[Path]) -> dict[str, str]:
    """What vLLM's setup.py and CMake read to choose a CUDA build for `arch`, with the build's
    tools (`bin_dirs`: the venv's, then inherited ones) and nvcc first on PATH."""
    return {
        "TORCH_CUDA_ARCH_LIST": arch,
        "CUDA_HOME": str(cuda_home),
        "VLLM_TARGET_DEVICE": "cuda",
        "PATH": os.pathsep.join([*map(str, bin_dirs), str(cuda_home / "bin"), os.environ.get("PATH", "")]),
    }


def setup_extensions(
    source: Path,
    venv: Path,
    arch: str,
    *,
    cuda_home: Path,
    runner: Runner,
    log: Path,
    step: str = "arch-plan",
    bin_dirs: Sequence[Path] = (),
) -> frozenset[str] | None:
    """The CMake targets the source's setup.py builds for `arch` (`_C`, `_vllm_fa2_C`, …), or
    None when setup.py cannot be asked (then every configured target counts as built)."""
    out = log.with_suffix(".extensions.json")
    env = {**os.environ, **setup_variables(arch, cuda_home, [venv / "bin", *bin_dirs])}
    argv: list[str | os.PathLike[str]] = [venv / "bin" / "python", "-c", _EXTENSIONS_PROBE, out]
    if runner.run(argv, log=log, step=step, cwd=source, env=env, check=False) != 0 or not out.is_file():
        return None
    return frozenset(str(name).rsplit(".", 1)[-1] for name in json.loads(out.read_text()))
