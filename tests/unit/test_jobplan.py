"""The job plan: MAX_JOBS/NVCC_THREADS from memory available now, a reserve, per-object peaks
and CPUs — pure decisions, no processes, no machine of any particular size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spark_build.compile.jobplan import (
    DEFAULT_PROFILE,
    JobRecord,
    cpu_count,
    load_estimates,
    plan_jobs,
    write_jobs_json,
)
from spark_build.compile.ninjalog import NinjaLogEntry, parse_ninja_log
from spark_build.errors import SparkBuildError, UsageError
from spark_build.sizes import GIB, parse_mem_size

MIB = 2**20
# The per-object peaks measured on a GB10 (93 objects, the first measured profile).
PROFILE = Path(__file__).resolve().parents[1] / "data" / "vllm-0.13.0-sm121a-compile-profile.json"

# Ten ordinary 2 GiB objects and one 8 GiB CUTLASS-like one: the 75th percentile is 2 GiB.
TYPICAL = {f"_C.dir/csrc/k{i}.cu.o": 2 * GIB for i in range(10)} | {"_C.dir/csrc/cutlass_sm120.cu.o": 8 * GIB}


SIZES = [
    ("16G", 16 * GIB),
    ("16GB", 16 * GIB),
    ("16GiB", 16 * GIB),
    ("16g", 16 * GIB),
    ("1.5G", 3 * GIB // 2),
    ("512M", 512 * MIB),
    ("2T", 2 * 1024 * GIB),
    ("64K", 64 * 1024),
    (" 8 G ", 8 * GIB),
    ("4096B", 4096),
]


@pytest.mark.parametrize(("text", "expected"), SIZES, ids=[text.strip() for text, _ in SIZES])
def test_mem_size_accepts_binary_units_with_optional_b_and_decimals(text: str, expected: int) -> None:
    assert parse_mem_size(text) == expected


@pytest.mark.parametrize("text", ["0", "0G", "-3G", "lots", "", "16X", "1e9", "G", "nanG"])
def test_bad_mem_budget_is_a_one_line_usage_error_with_a_fix(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_mem_size(text)
    err = caught.value
    assert err.exit_code == 2
    assert "--mem-budget" in err.message and "\n" not in err.message
    assert err.hint and "16G" in err.hint


PLANS = {
    "limited-by-memory": (
        dict(available_bytes=12 * GIB, reserve_bytes=2 * GIB, estimates=TYPICAL, cpus=20),
        dict(max_jobs=5, limited_by="memory", budget_bytes=10 * GIB, per_job_bytes=2 * GIB),
    ),
    "limited-by-cores": (
        dict(available_bytes=119 * GIB, reserve_bytes=30 * GIB, estimates=TYPICAL, cpus=20),
        dict(max_jobs=20, limited_by="cpus", budget_bytes=89 * GIB),
    ),
    "mem-budget-caps-the-available-memory": (
        dict(available_bytes=119 * GIB, reserve_bytes=4 * GIB, estimates=TYPICAL, cpus=20, mem_budget=8 * GIB),
        dict(max_jobs=4, limited_by="memory", budget_bytes=8 * GIB),
    ),
    "mem-budget-above-available-changes-nothing": (
        dict(available_bytes=12 * GIB, reserve_bytes=2 * GIB, estimates=TYPICAL, cpus=20, mem_budget=64 * GIB),
        dict(max_jobs=5, budget_bytes=10 * GIB),
    ),
    "jobs-override-wins": (
        dict(available_bytes=12 * GIB, reserve_bytes=2 * GIB, estimates=TYPICAL, cpus=20, jobs_override=16),
        dict(max_jobs=16, limited_by="--jobs", budget_bytes=10 * GIB),
    ),
    "nvcc-threads-divides-jobs-and-multiplies-slot-size": (
        dict(available_bytes=100 * GIB, reserve_bytes=0, estimates=TYPICAL, cpus=20, nvcc_threads=4),
        dict(max_jobs=20, nvcc_threads=4, per_job_bytes=8 * GIB, limited_by="cpus"),
    ),
    "nvcc-threads-with-little-memory": (
        dict(available_bytes=20 * GIB, reserve_bytes=0, estimates=TYPICAL, cpus=20, nvcc_threads=2),
        dict(max_jobs=10, nvcc_threads=2, limited_by="memory"),
    ),
    "one-job-even-when-the-typical-object-does-not-fit": (
        dict(available_bytes=3 * GIB, reserve_bytes=2 * GIB, estimates=TYPICAL, cpus=20),
        dict(max_jobs=1, limited_by="memory"),
    ),
}


@pytest.mark.parametrize(("inputs", "expected"), PLANS.values(), ids=PLANS.keys())
def test_plan(inputs: dict, expected: dict) -> None:
    plan = plan_jobs(**inputs)
    assert {k: getattr(plan, k) for k in expected} == expected
    assert plan.env() == {"MAX_JOBS": str(plan.max_jobs), "NVCC_THREADS": str(plan.nvcc_threads)}
    assert plan.reason.startswith(f"MAX_JOBS={plan.max_jobs} ")


def test_ninja_gets_max_jobs_divided_by_nvcc_threads_as_vllm_setup_py_does() -> None:
    plan = plan_jobs(100 * GIB, 0, TYPICAL, cpus=20, nvcc_threads=4)
    assert plan.concurrent_jobs == 5


def test_reason_names_the_budget_sources_and_warns_about_an_object_larger_than_the_budget() -> None:
    plan = plan_jobs(9 * GIB, 2 * GIB, TYPICAL, cpus=4)
    assert "9.0 GiB available − 2.0 GiB reserve" in plan.reason
    assert "cutlass_sm120.cu.o peaks at 8.0 GiB" in plan.reason
    assert "may be OOM-killed even alone" in plan.reason


def test_no_memory_left_after_the_reserve_fails_before_compiling() -> None:
    with pytest.raises(SparkBuildError, match="no memory left") as caught:
        plan_jobs(20 * GIB, 30 * GIB, TYPICAL, cpus=20)
    assert caught.value.hint and "model" in caught.value.hint


def test_jobs_override_below_one_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        plan_jobs(20 * GIB, 0, TYPICAL, cpus=4, jobs_override=0)


def test_cpu_count_follows_affinity_not_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr("os.cpu_count", lambda: 128)
    assert cpu_count() == 3


def _profile(tmp_path: Path, peaks_mb: dict[str, int]) -> Path:
    path = tmp_path / "profile.json"
    rows = [{"object": k, "lang": "cuda", "wall_s": 60.0, "cpu_s": 60.0, "peak_rss_mb": v} for k, v in peaks_mb.items()]
    path.write_text(json.dumps({"objects": rows}))
    return path


def test_estimates_from_a_previous_build_beat_the_default_profile(tmp_path: Path) -> None:
    profile = _profile(tmp_path, {"_C.dir/a.cu.o": 2000, "_C.dir/b.cu.o": 3000})
    run = tmp_path / "logs" / "run-1"
    write_jobs_json(
        run / "jobs.json",
        [JobRecord("CMakeFiles/_C.dir/a.cu.o", 5 * GIB, 70.0)],
        [NinjaLogEntry("_C.dir/a.cu.o", 0, 71_000)],
        source="vllm@abc123",
    )
    est = load_estimates([run], profile)
    assert est.peaks["_C.dir/a.cu.o"] == 5 * GIB  # learned
    assert est.peaks["_C.dir/b.cu.o"] == 3000 * MIB  # never built: the profile
    assert est.seconds["_C.dir/a.cu.o"] == 71.0
    assert est.origin == "1 objects from 1 earlier build record(s), 1 from the default profile"


def test_a_killed_job_only_raises_its_estimate(tmp_path: Path) -> None:
    profile = _profile(tmp_path, {"_C.dir/a.cu.o": 4000, "_C.dir/b.cu.o": 1000})
    records = tmp_path / "jobs.json"
    # Neither finished (no .ninja_log line): their sampled peaks are lower bounds.
    write_jobs_json(records, [JobRecord("_C.dir/a.cu.o", 1 * GIB, 9.0), JobRecord("_C.dir/b.cu.o", 2 * GIB, 9.0)], [])
    est = load_estimates([records], profile)
    assert est.peaks["_C.dir/a.cu.o"] == 4000 * MIB
    assert est.peaks["_C.dir/b.cu.o"] == 2 * GIB


def test_records_are_read_oldest_first_keep_the_largest_peak_and_skip_unreadable_files(tmp_path: Path) -> None:
    old, new, bad = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "bad.json"
    done = [NinjaLogEntry("_C.dir/a.cu.o", 0, 1000), NinjaLogEntry("_C.dir/b.cu.o", 0, 1000)]
    write_jobs_json(old, [JobRecord("_C.dir/a.cu.o", 3 * GIB, 1.0), JobRecord("_C.dir/b.cu.o", 1 * GIB, 1.0)], done)
    write_jobs_json(new, [JobRecord("_C.dir/a.cu.o", 2 * GIB, 1.0), JobRecord("_C.dir/b.cu.o", 2 * GIB, 1.0)], done)
    bad.write_text("{not json")
    os.utime(old, (1, 1))
    est = load_estimates([new, bad, old], None)
    assert est.peaks == {"_C.dir/a.cu.o": 3 * GIB, "_C.dir/b.cu.o": 2 * GIB}


def test_no_records_and_no_profile_is_an_error_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(SparkBuildError) as caught:
        load_estimates([tmp_path / "missing.json"], tmp_path / "no-profile.json")
    assert caught.value.hint and "--jobs" in caught.value.hint


def test_measured_profile_plans_twenty_jobs_on_a_spark_with_a_30g_model_loaded() -> None:
    est = load_estimates([], PROFILE)
    assert len(est.peaks) == 93
    plan = plan_jobs(119 * GIB, 30 * GIB, est.peaks, cpus=20)
    assert (plan.max_jobs, plan.limited_by) == (20, "cpus")
    static_safe = plan.budget_bytes // max(est.peaks.values())
    assert static_safe == 9  # what the governor's plan more than doubles


def test_ninja_log_last_line_per_object_wins_and_cmakefiles_prefix_is_dropped(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    log.write_text(
        "# ninja log v5\n"
        "0\t71000\t0\tCMakeFiles/_C.dir/a.cu.o\t1a2b\n"
        "10\t500\t0\tCMakeFiles/_C.dir/b.cpp.o\t3c4d\n"
        "garbage line\n"
        "0\t65000\t0\tCMakeFiles/_C.dir/a.cu.o\t1a2b\n"  # the OOM rerun rebuilt it
    )
    assert parse_ninja_log(log) == [
        NinjaLogEntry("_C.dir/b.cpp.o", 10, 500),
        NinjaLogEntry("_C.dir/a.cu.o", 0, 65000),
    ]
    assert parse_ninja_log(tmp_path / "none") == []


def test_jobs_json_marks_finished_objects_and_keeps_time_only_rows(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "r" / "jobs.json"
    write_jobs_json(
        path,
        [
            JobRecord("_C.dir/a.cu.o", 3 * GIB, 60.0, stopped_s=4.0, times_stopped=1),
            JobRecord("_C.dir/killed.cu.o", 7 * GIB, 30.0),
        ],
        [NinjaLogEntry("_C.dir/a.cu.o", 0, 61_000), NinjaLogEntry("_C.dir/tiny.cpp.o", 0, 200)],
        source="vllm@abc",
    )
    doc = json.loads(path.read_text())
    rows = {r["object"]: r for r in doc["objects"]}
    assert doc["source"] == "vllm@abc"
    assert (rows["_C.dir/a.cu.o"]["finished"], rows["_C.dir/a.cu.o"]["duration_s"]) == (True, 61.0)
    assert rows["_C.dir/a.cu.o"]["times_stopped"] == 1
    assert rows["_C.dir/killed.cu.o"]["finished"] is False
    assert rows["_C.dir/tiny.cpp.o"]["peak_rss_bytes"] is None
    assert not list(path.parent.glob(".jobs.*"))  # no temp file left behind


def test_records_of_another_source_are_ignored_when_reading_a_logs_folder(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    done = [NinjaLogEntry("_C.dir/a.cu.o", 0, 1000)]
    write_jobs_json(logs / "r1" / "jobs.json", [JobRecord("_C.dir/a.cu.o", 3 * GIB, 1.0)], done, source="vllm@old")
    write_jobs_json(logs / "r2" / "jobs.json", [JobRecord("_C.dir/a.cu.o", 5 * GIB, 1.0)], done, source="vllm@new")
    assert load_estimates([logs], None, source="vllm@new").peaks == {"_C.dir/a.cu.o": 5 * GIB}
    assert load_estimates([logs], None, source="vllm@old").peaks == {"_C.dir/a.cu.o": 3 * GIB}


def test_a_cache_hit_build_never_lowers_an_object_estimate_an_earlier_build_measured():
    from spark_build.compile.jobplan import estimates_from
    from spark_build.compile.ninjalog import normalize_object

    real = {"objects": [{"object": "csrc/a.cu.o", "peak_rss_bytes": 3 << 30, "finished": True, "duration_s": 60}]}
    cached = {"objects": [{"object": "csrc/a.cu.o", "peak_rss_bytes": 20 << 20, "finished": True, "duration_s": 0.05}]}
    estimates = estimates_from([real, cached], None)
    assert estimates.peaks[normalize_object("csrc/a.cu.o")] == 3 << 30


def test_the_shipped_profile_is_the_full_compile_and_plans_only_the_targets_setup_py_builds() -> None:
    everything = load_estimates([], DEFAULT_PROFILE)
    assert len(everything.peaks) == 389
    built = frozenset({"_C", "_moe_C", "cumem_allocator", "_vllm_fa2_C"})  # after the FA3 patch
    planned = load_estimates([], DEFAULT_PROFILE, targets=built)
    assert len(planned.peaks) == 165
    assert not any(name.startswith("_vllm_fa3_C.dir/") for name in planned.peaks)
    assert round(sum(planned.seconds.values())) == 24_181  # wall seconds of the 165 objects (CPU-s: 24,124)


def test_a_size_without_a_unit_is_refused_not_taken_as_bytes() -> None:
    with pytest.raises(UsageError) as caught:
        parse_mem_size("64")
    assert caught.value.message == "--mem-budget '64' has no unit"
    assert "--mem-budget 64G" in (caught.value.hint or "")
    assert parse_mem_size("0", option="--mem-reserve", allow_zero=True) == 0
