"""The toolchain a completion compiles with: the interpreter with exactly the torch the official
wheel pins (its extensions link against that torch's libraries, so another torch is ABI drift),
a CMake the release accepts, and what a build host without a GPU lacks.

Two things a GPU-less host may lack, both found on the machines we build on:
- the driver library `libcuda.so.1` (vLLM links `CUDA::cuda_driver`): a stand-in with its soname
  is linked instead. An extension is a shared object, so the driver's symbols stay undefined in
  it and `libcuda.so.1` stays in its NEEDED list; the real driver binds them at load, as with the
  toolkit's own `lib64/stubs/libcuda.so`. The validate step's linkage check reads that list.
- the math libraries' headers (`cusparse.h`, which torch's `ATen/cuda` headers include) in a
  toolkit trimmed to the compiler: torch's own `nvidia-*` packages carry the same CUDA
  release's headers, so they are put on `CPATH` — no compile command changes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from spark_build.arch.cmake_configure import build_stubs, missing_link_libraries
from spark_build.errors import StepFailed
from spark_build.host.query import run_command
from spark_build.proc import Runner
from spark_build.venv import Installer

MIN_CMAKE = Version("3.26")  # vLLM's and the example's cmake_minimum_required
_PROBE = (
    "import json, sysconfig\ntry:\n import torch; version = torch.__version__\nexcept ImportError:\n version = ''\n"
    "print(json.dumps({'torch': version, 'purelib': sysconfig.get_paths()['purelib'], "
    "'scripts': sysconfig.get_paths()['scripts']}))"
)


@dataclass(frozen=True)
class Toolchain:
    python: Path
    torch: str
    cmake: Path
    env: dict[str, str]  # CPATH for headers the toolkit lacks
    cmake_args: tuple[str, ...]  # the driver stand-ins, -DVLLM_PYTHON_EXECUTABLE
    notes: tuple[str, ...]


def _probe(python: Path) -> dict[str, str] | None:
    status, output = run_command([str(python), "-c", _PROBE])
    lines = output.strip().splitlines()
    if status != 0 or not lines:
        return None
    found: dict[str, str] = json.loads(lines[-1])
    return found


def _local_less(version: str) -> str:
    return version.split("+", 1)[0]


def build_python(
    torch_pin: str | None,
    *,
    existing: Path | None,
    base: str,
    venv: Path,
    installer: Installer,
    index: str | None,
    run: Callable[[Sequence[str | os.PathLike[str]]], int],
    say: Callable[[str], None],
) -> tuple[Path, dict[str, str]]:
    """The interpreter to build with and what it says of itself: `existing` (--torch existing)
    when its torch is the pin, else `venv`, made from `base` once with torch==pin, cmake and ninja and
    reused while its torch is still the pin (a reinstall would touch every torch header and
    Ninja would recompile what an interrupted completion had finished). A wheel that pins no
    torch (its extensions include no torch header) is built with `existing` or `base` as it is."""
    if torch_pin is None:
        python = existing or Path(base)
        found = _probe(python)
        if found is None:
            raise StepFailed(f"{python} does not start", step="complete", hint="give --python a working interpreter")
        return python, found
    if existing is not None:
        found = _probe(existing)
        if found is None or _local_less(found["torch"]) != torch_pin:
            raise StepFailed(
                f"the official wheel pins torch {torch_pin} and {existing} has "
                f"{found['torch'] if found else 'no importable torch'}",
                step="complete",
                hint=f"give --python an interpreter with torch {torch_pin}, or drop --torch existing",
            )
        return existing, found
    python = venv / "bin" / "python"
    found = _probe(python) if python.exists() else None
    if found is None or _local_less(found["torch"]) != torch_pin:
        say(f"prebuilt: making the completion's build venv with torch {torch_pin} (once)")
        if run(installer.venv_argv(base, venv, seed=False)) != 0:
            raise StepFailed(f"cannot make the venv {venv}", step="complete")
        if run(installer.install_argv(python, f"torch=={torch_pin}", "cmake>=3.26", "ninja", index=index)) != 0:
            raise StepFailed(
                f"cannot install torch {torch_pin} with cmake and ninja into {venv}",
                step="complete",
                hint="the log names the package; give --wheels a folder that has it, or --torch-index",
            )
        found = _probe(python)
        if found is None:
            raise StepFailed(f"torch {torch_pin} installed into {venv} does not import", step="complete")
    return python, found


def cmake_version(cmake: Path) -> Version | None:
    status, output = run_command([str(cmake), "--version"])
    found = re.search(r"cmake version (\d+\.\d+(?:\.\d+)?)", output) if status == 0 else None
    try:
        return Version(found[1]) if found else None
    except InvalidVersion:
        return None


def toolchain(
    python: Path,
    found: dict[str, str],
    *,
    cuda_home: Path,
    stub_dir: Path,
    runner: Runner,
    log: Path,
) -> Toolchain:
    """CMake (the interpreter's own first, then PATH's), the headers and driver stand-ins."""
    on_path = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    candidates = [Path(found["scripts"]) / "cmake", *(folder / "cmake" for folder in on_path)]
    usable = [(c, cmake_version(c)) for c in candidates if c.is_file() and os.access(c, os.X_OK)]
    cmake = next((c for c, v in usable if v is not None and v >= MIN_CMAKE), None)
    if cmake is None:
        seen = ", ".join(f"{c} ({v})" for c, v in usable) or "none"
        raise StepFailed(
            f"no cmake >= {MIN_CMAKE} for the release's CMake (found: {seen})",
            step="complete",
            hint=f"{python} -m pip install 'cmake>=3.26' ninja",
        )
    notes: list[str] = [f"build interpreter {python} (torch {found['torch'] or 'none'}), {cmake}"]
    env: dict[str, str] = {}
    if not (cuda_home / "include" / "cusparse.h").is_file():
        headers = sorted(Path(found["purelib"]).glob("nvidia/*/include/cusparse.h"))
        if headers:
            env["CPATH"] = os.pathsep.join([str(headers[0].parent), *filter(None, [os.environ.get("CPATH")])])
            notes.append(f"{cuda_home} lacks the math libraries' headers; from torch's packages: {headers[0].parent}")
    stubs = build_stubs(missing_link_libraries(cuda_home), stub_dir, runner, log, "complete")
    for var, path in sorted(stubs.items()):
        notes.append(f"{var}: {path} stands in at link time (no driver here; the loader binds the real one)")
    args = (
        f"-DVLLM_PYTHON_EXECUTABLE={python}",
        *(f"-D{var}={path}" for var, path in sorted(stubs.items())),
    )
    return Toolchain(python, found["torch"], cmake, env, args, tuple(notes))
