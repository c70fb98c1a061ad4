"""The toolchain and the compile of a completion.

The toolchain: the interpreter with exactly the torch the official wheel pins (its extensions
link against that torch's libraries, so another torch is ABI drift), a CMake the release
accepts, and what a build host without a GPU lacks:
- the driver library `libcuda.so.1` (vLLM links `CUDA::cuda_driver`): a stand-in with its soname
  that defines the driver API is linked instead (`arch.cmake_configure.driver_link_stub`), so
  the driver's symbols stay undefined in the extension and `libcuda.so.1` stays in its NEEDED
  list, as with the toolkit's own `lib64/stubs/libcuda.so`; the real driver binds them at load.
  libnvrtc comes from torch's own `nvidia-*` package.
- the math libraries' headers (`cusparse.h`, which torch's `ATen/cuda` headers include) in a
  toolkit trimmed to the compiler: torch's own `nvidia-*` packages carry the same CUDA
  release's headers, so they are put on `CPATH` — no compile command changes.

The compile, set up from the build's own options as the compile step sets up its compile: the
compiler cache (`--cache`, its folder, Redis, sccache-dist), the memory reserve and budget,
`--jobs`, the duration-weighted Ninja the ninja step built once per machine, earlier runs'
`jobs.json`, and a step line with the live status (objects done/total, ETA) and its duration.
A completion is minutes of nvcc on a machine that may be serving a model: planned like the source
build, it neither OOMs the machine nor recompiles what the last, interrupted run had finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from packaging.version import InvalidVersion, Version

from spark_build.arch.cmake_configure import build_stubs, driver_link_stub, missing_link_libraries
from spark_build.compile import cache as compiler_cache
from spark_build.compile import ninjabuild
from spark_build.compile.extension_targets import CompileRun, TargetBuild, TargetsBuilt, build_targets
from spark_build.config import BuildConfig
from spark_build.errors import Interrupted, StepFailed
from spark_build.host.query import run_command
from spark_build.layout import RunFolder, user_cache
from spark_build.nightly.completion import BuildTargets
from spark_build.pipeline.progress import Progress, forecast_line
from spark_build.proc import InterruptSignal, Runner, interrupt_signals
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
    cmake: Path
    ninja: Path  # the stock one beside cmake or on PATH; the duration-weighted one is used where built
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


def find_ninja(scripts: Path) -> Path | None:
    """The stock Ninja a completion configures with: the interpreter's own (`pip install ninja`),
    else PATH's."""
    on_path = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return next((f / "ninja" for f in (scripts, *on_path) if (f / "ninja").is_file()), None)


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
    """CMake and Ninja (the interpreter's own first, then PATH's), the headers and driver stand-ins."""
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
    ninja = find_ninja(Path(found["scripts"]))
    if ninja is None:
        raise StepFailed("no ninja for the release's CMake", step="complete", hint=f"{python} -m pip install ninja")
    notes: list[str] = [f"build interpreter {python} (torch {found['torch'] or 'none'}), {cmake}, {ninja}"]
    env: dict[str, str] = {}
    if not (cuda_home / "include" / "cusparse.h").is_file():
        headers = sorted(Path(found["purelib"]).glob("nvidia/*/include/cusparse.h"))
        if headers:
            env["CPATH"] = os.pathsep.join([str(headers[0].parent), *filter(None, [os.environ.get("CPATH")])])
            notes.append(f"{cuda_home} lacks the math libraries' headers; from torch's packages: {headers[0].parent}")
    stubs: dict[str, Path] = {}
    for lib in missing_link_libraries(cuda_home):
        if lib.cmake_var == "CUDA_cuda_driver_LIBRARY":
            stubs[lib.cmake_var] = driver_link_stub(cuda_home, stub_dir, runner, log, "complete")
            notes.append(f"no driver here: {lib.soname} is linked against a stand-in that defines the driver API")
            continue
        real = sorted(Path(found["purelib"]).glob(f"nvidia/*/lib/{lib.soname}"))
        if real:  # nvrtc: torch's own package ships the real library
            stubs[lib.cmake_var] = real[0]
            notes.append(f"{lib.soname} from torch's packages: {real[0]}")
        else:
            stubs.update(build_stubs([lib], stub_dir, runner, log, "complete"))
            notes.append(f"{lib.soname}: an empty stand-in (configure only; a target linking it would lose it)")
    args = (
        f"-DVLLM_PYTHON_EXECUTABLE={python}",
        *(f"-D{var}={path}" for var, path in sorted(stubs.items())),
    )
    return Toolchain(python, cmake, ninja, env, args, tuple(notes))


STEP = "complete"


class CompletionTools:
    """The compiler cache's view of the completion (`cache.StepContext`): a small venv of its own
    under `WORKDIR/completion/tools` holds ccache, installed as the build installs (uv or pip,
    index or `--wheels`), since a completion has no build venv."""

    def __init__(self, cfg: BuildConfig, venv: Path, run_folder: RunFolder, runner: Runner) -> None:
        self.cfg, self._venv, self.run_folder, self.runner = cfg, venv, run_folder, runner
        self.notes: list[str] = []

    @property
    def venv(self) -> Path:
        return self._venv

    @property
    def python(self) -> Path:
        return self._venv / "bin" / "python"

    def log(self, step: str) -> Path:
        return self.run_folder.log(step)

    def run(self, step: str, argv: list[str | os.PathLike[str]], **kwargs: Any) -> int:
        return self.runner.run(argv, log=self.log(step), step=step, **kwargs)

    def install(self, step: str, *args: str | os.PathLike[str], **kwargs: Any) -> int:
        installer = self.cfg.installer
        if not self.python.exists():
            self.run(step, installer.venv_argv(self.cfg.python, self._venv, seed=False), env=installer.env())
        return self.run(step, installer.install_argv(self.python, *args), env=installer.env(), **kwargs)


def scheduling_ninja(stock: Path) -> tuple[Path, bool]:
    """The duration-weighted Ninja when the ninja step has built it on this machine, else `stock`;
    and whether it is the weighted one. A completion never builds it: 35 s of bootstrap for a
    compile of a few minutes."""
    ours = ninjabuild.cached_binary(user_cache())
    return (ours, True) if ninjabuild.is_ours(ours) else (stock, False)


def completion_builder(
    cfg: BuildConfig,
    run_folder: RunFolder,
    runner: Runner,
    progress: Progress,
    say: Callable[[str], None],
    spec_for: Callable[[Sequence[str]], tuple[TargetBuild, Path]],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> BuildTargets:
    """The builder `--prefer-wheel` completes a wheel with: `spec_for(targets)` gives the release
    source's build (in the kept `WORKDIR/completion/build`) and the stock Ninja; the targets are
    compiled as the compile step compiles. `runner` reports to `progress` and records its process
    groups in the workdir's lock, so a run after a `kill -9` stops the Ninja this one left behind."""
    arch = cfg.arch or ""
    token = cfg.dist_token_file.read_text().strip() if cfg.dist_token_file else None

    def compile_run(cache_env: dict[str, str], ninja: Path) -> CompileRun:
        weighted_ninja, weighted = scheduling_ninja(ninja)
        return CompileRun(
            source=f"{cfg.ref} {arch} completion",
            ninja=weighted_ninja,
            weighted=weighted,
            cache_env=cache_env,
            records=cfg.logs_dir,
            run_folder=run_folder,
            reserve_bytes=cfg.mem_reserve,
            mem_budget=cfg.mem_budget,
            jobs_override=cfg.jobs,
            available_bytes=lambda: psutil.virtual_memory().available,
            on_forecast=lambda outlook: progress.progress(forecast_line(outlook)),
            note=lambda line: say(f"complete: {line}"),
        )

    def complete(targets: Sequence[str]) -> TargetsBuilt:
        spec, ninja = spec_for(targets)
        shutil.rmtree(spec.stage, ignore_errors=True)  # only what this build installs goes into the wheel
        folder = spec.build_dir.parent
        tools = CompletionTools(cfg, folder / "tools", run_folder, runner)
        log = run_folder.log(STEP)
        progress.begin(STEP, f"build {', '.join(targets)} for {arch} from the source of {cfg.ref}; log: {log}")
        began, status = clock(), "failed"
        try:
            with interrupt_signals():
                cache = compiler_cache.start(
                    tools,
                    STEP,
                    mode=cfg.cache,
                    size_limit=cfg.cache_size,
                    workdir=cfg.workdir,
                    cache_dir=cfg.cache_dir,
                    dist=cfg.dist,
                    dist_token=token,
                )
                try:
                    built = build_targets(spec, targets, runner, log, compile_run(cache.env, ninja))
                finally:
                    cache_record = compiler_cache.finish(tools, STEP, cache)
            status = "done"
        except InterruptSignal as sig:
            status = "interrupted"
            raise Interrupted(
                f"stopped by {sig} while completing the wheel",
                step=STEP,
                log=log,
                hint="run the same command again: the kept build folder resumes where Ninja stopped",
            ) from None
        finally:
            seconds = clock() - began
            progress.end(STEP, status, seconds)
            for line in tools.notes:
                say(f"complete: {line}")
        result = {**built.result, "cache": cache_record, "seconds": round(seconds, 3), "log": str(log)}
        return TargetsBuilt(built.stage, result)

    return complete
