"""What the real GPU-machine build of vLLM 0.13.0 (2026-12-07) printed wrongly, replayed from its own
files (`tests/data/gpu-run-2026-12-07/`, cut from the shipped run; its README says what was kept).

The run's last heartbeat read `158/165 objects · 98% of CPU work · ETA 1m46s · 0 running` after
Ninja had built all 165, its timing table `MAX_JOBS 16, 169 objects; no cache off`, its jobs.json
kept CMake's compiler checks as unfinished objects, and `--resume` opened with a stale progress line.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from spark_build.compile.eta import RunningJob, finished_in, forecast
from spark_build.compile.jobplan import DEFAULT_PROFILE, JobRecord, estimates_from, load_estimates, write_jobs_json
from spark_build.compile.ninjalog import parse_ninja_lines, parse_ninja_log
from spark_build.pipeline.progress import Progress, forecast_line
from spark_build.steps.compile import Compile, ninja_log_entries

RUN = Path(__file__).parents[1] / "data" / "gpu-run-2026-12-07"
QUTLASS_GEMM = "_C.dir/tmp/w/work/cache/sources/qutlass/830d2c4537c7396e14a02a46fbddd18b5d107c65/qutlass/csrc/gemm.cu.o"


def summary() -> dict[str, Any]:
    return json.loads((RUN / "summary.json").read_text())


def console_line(starting: str) -> str:
    return next(line for line in (RUN / "console.txt").read_text().splitlines() if line.startswith(starting))


def the_runs_estimates() -> dict[str, float]:
    """The durations the run planned with: the shipped profile, for the targets setup.py built."""
    targets = frozenset(summary()["results"]["arch-plan"]["built_targets"])
    return dict(load_estimates([], DEFAULT_PROFILE, targets=targets).seconds)


def test_the_real_runs_last_heartbeat_was_short_of_the_objects_ninja_built() -> None:
    # The defect as the run printed it, so the test below is known to replay the same build.
    assert "158/165 objects · 98% of CPU work · ETA 1m46s · 0 running" in console_line("… compile 20m01s")
    built = finished_in(parse_ninja_lines((RUN / "ninja_log").read_text()))
    assert len(built) == 169  # 165 objects and 4 links


def test_when_ninja_has_built_every_object_the_forecast_says_all_done_with_no_time_left() -> None:
    built = finished_in(parse_ninja_lines((RUN / "ninja_log").read_text()))
    outlook = forecast(the_runs_estimates(), built, [], slots=16)
    assert (outlook.objects_done, outlook.objects_total) == (165, 165)
    assert outlook.eta_s == 0.0
    assert forecast_line(outlook).startswith("165/165 objects · 100% of CPU work · ETA 0.0s · 0 running")


def test_the_total_stays_at_the_builds_objects_while_links_and_renamed_objects_run() -> None:
    estimates = the_runs_estimates()
    assert QUTLASS_GEMM not in estimates  # the profile names it after the machine that measured it
    jobs = [
        RunningJob(QUTLASS_GEMM, 30.0, held=False),
        RunningJob("_C.abi3.so", 5.0, held=False),  # a link
        RunningJob("cmTC_efe49.dir/CMakeCUDACompilerABI.cu.o", 0.5, held=False),  # CMake's compiler check
    ]
    outlook = forecast(estimates, {}, jobs, slots=16)
    assert (outlook.objects_done, outlook.objects_total, outlook.running) == (0, 165, 3)
    # the running qutlass object is not queued a second time under the profile's name
    assert outlook.remaining_s[QUTLASS_GEMM] > 0


def test_the_timing_table_counts_the_objects_ninja_built_and_says_the_cache_was_off(tmp_path: Path) -> None:
    assert console_line("│ compile").count("MAX_JOBS 16, 169 objects; no cache off") == 1  # as printed
    tree = tmp_path / "src" / "build" / "temp.linux-x86_64-cpython-312"
    tree.mkdir(parents=True)
    shutil.copy(RUN / "ninja_log", tree / ".ninja_log")
    built = ninja_log_entries(tmp_path / "src")
    result = {**summary()["results"]["compile"], "objects_built": built}
    assert Compile().detail(result) == "MAX_JOBS 16, 165 objects; compiler cache off"


def test_jobs_json_leaves_out_cmakes_compiler_checks(tmp_path: Path) -> None:
    rows = json.loads((RUN / "jobs.json").read_text())["objects"]
    probes = [r for r in rows if r["object"].startswith("cmTC_")]
    assert len(probes) == 3 and not any(r["finished"] for r in probes)  # as the run wrote them
    records = [JobRecord(r["object"], r["peak_rss_bytes"], r["duration_s"]) for r in rows if r["peak_rss_bytes"]]
    tree = tmp_path / "ninja_log"
    shutil.copy(RUN / "ninja_log", tree)
    path = tmp_path / "jobs.json"
    write_jobs_json(path, records, parse_ninja_log(tree), source="vllm@69cce473 12.1a")
    written = {r["object"] for r in json.loads(path.read_text())["objects"]}
    assert not any(name.startswith("cmTC_") for name in written)
    assert QUTLASS_GEMM in written


def test_an_older_jobs_json_with_compiler_checks_does_not_plan_them_as_objects() -> None:
    doc = json.loads((RUN / "jobs.json").read_text())
    estimates = estimates_from([doc], None)
    assert not any(name.startswith("cmTC_") for name in estimates.peaks)
    bindings = QUTLASS_GEMM.replace("gemm.cu.o", "bindings.cpp.o")
    assert estimates.peaks[bindings] == 904_261_632


@pytest.mark.parametrize("uptime_s", [1443.0, 0.0])
def test_a_command_run_before_the_first_step_prints_no_progress_line(uptime_s: float) -> None:
    # `--resume` checks the patch series before the first step: the run printed the line below,
    # timed from the clock's zero, ahead of its `build …` line.
    assert console_line("…  24m03s  + git -C /tmp/w/work/src apply --verbose --reverse --check")
    out, now = io.StringIO(), [uptime_s]
    progress = Progress(Console(file=out, force_terminal=False, width=200), clock=lambda: now[0])
    now[0] += 31.0
    progress.command(["git", "-C", "/tmp/w/work/src", "apply", "--verbose", "--reverse", "--check", "0001.patch"])
    assert out.getvalue() == ""
    progress.begin("preflight", "read the host")
    progress.end("preflight", "done", 0.1)
    now[0] += 31.0
    progress.command(["git", "status"])
    assert "…" not in out.getvalue()
