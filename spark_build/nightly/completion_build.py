"""The completion's compile, set up from the build's own options as the compile step sets up its
compile: the compiler cache (`--cache`, its folder, Redis, sccache-dist), the memory reserve and
budget, `--jobs`, the duration-weighted Ninja the ninja step built once per machine, earlier runs'
`jobs.json`, and a step line with the live status (objects done/total, ETA) and its duration.

A completion is minutes of nvcc on a machine that may be serving a model: planned like the source
build, it neither OOMs the machine nor recompiles what the last, interrupted run had finished.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from spark_build.compile import cache as compiler_cache
from spark_build.compile import ninjabuild
from spark_build.compile.extension_targets import CompileRun, TargetBuild, TargetsBuilt, build_targets
from spark_build.compile.jobplan import cpu_count
from spark_build.config import BuildConfig
from spark_build.errors import Interrupted
from spark_build.layout import RunFolder, user_cache
from spark_build.nightly.completion import BuildTargets, release_source
from spark_build.pipeline.progress import Progress, forecast_line
from spark_build.proc import InterruptSignal, Runner, interrupt_signals

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
    git: Callable[[list[str | os.PathLike[str]]], int],
    *,
    cmake: Path,
    ninja: Path,
    clock: Callable[[], float] = time.monotonic,
) -> BuildTargets:
    """The builder `--prefer-wheel` completes a wheel with: the release's source (`--repo` at
    `--ref`), its targets for `--arch` in the kept `WORKDIR/completion/build`, compiled as the
    compile step compiles. `runner` reports to `progress` and records its process groups in the
    workdir's lock, so a run after a `kill -9` stops the Ninja this one left behind."""
    folder = cfg.workdir / "completion"
    arch = cfg.arch or ""
    token = cfg.dist_token_file.read_text().strip() if cfg.dist_token_file else None

    def compile_run(cache_env: dict[str, str]) -> CompileRun:
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
        source = release_source(cfg.repo, cfg.ref, folder / "source", git)
        stage = folder / "stage"
        shutil.rmtree(stage, ignore_errors=True)  # only what this build installs goes into the wheel
        spec = TargetBuild(source, folder / "build", stage, arch, cmake, cfg.cuda_home, Path(cfg.python), cpu_count())
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
                    built = build_targets(spec, targets, runner, log, compile_run(cache.env))
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
