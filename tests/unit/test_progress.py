"""What a person watching a build sees: the compile's forecast in the status and heartbeat lines."""

from __future__ import annotations

import io

from rich.console import Console

from spark_build.compile.eta import Forecast
from spark_build.pipeline.progress import Progress, forecast_line

GIB = 2**30


def outlook() -> Forecast:
    return Forecast(
        objects_done=136,
        objects_total=165,
        work_done=0.512,
        eta_s=570.0,
        speed=1.2,
        remaining_s={},
        running=18,
        held=2,
        used_bytes=53 * GIB,
        budget_bytes=89 * GIB,
    )


def test_the_forecast_line_says_objects_work_eta_jobs_and_memory() -> None:
    assert forecast_line(outlook()) == (
        "136/165 objects · 51% of CPU work · ETA 9m30s · 18 running, 2 held · 53.0 GiB of 89.0 GiB"
    )


def test_the_heartbeat_off_a_terminal_carries_the_compiles_forecast() -> None:
    out, now = io.StringIO(), [0.0]
    progress = Progress(Console(file=out, force_terminal=False, width=200), clock=lambda: now[0])
    progress.begin("compile", "compile the extensions")
    progress.progress(forecast_line(outlook()))
    now[0] = 31.0
    progress.line("[37/169] Building CUDA object CMakeFiles/_C.dir/csrc/cache_kernels.cu.o")
    beat = out.getvalue().splitlines()[-1]
    assert beat.startswith("… compile 31.0s  136/165 objects · 51% of CPU work · ETA 9m30s")
    assert beat.endswith("[37/169] Building CUDA object CMakeFiles/_C.dir/csrc/cache_kernels.cu.o")


def test_a_new_step_starts_without_the_last_steps_progress() -> None:
    out, now = io.StringIO(), [0.0]
    progress = Progress(Console(file=out, force_terminal=False, width=200), clock=lambda: now[0])
    progress.begin("compile", "compile")
    progress.progress("165/165 objects")
    progress.begin("validate", "validate")
    now[0] = 31.0
    progress.tick()
    assert "objects" not in out.getvalue().splitlines()[-1]
