"""The compile's forecast: objects done, share of CPU work, ETA and each job's slack.

`forecast` is pure; `FinishedObjects` follows a `.ninja_log` in a temporary folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build.compile.eta import FinishedObjects, RunningJob, finished_in, forecast, schedule_end
from spark_build.compile.ninjalog import NinjaLine

GIB = 2**30


def test_objects_done_count_only_planned_objects_the_log_says_were_built() -> None:
    seconds = {"_C.dir/a.cu.o": 100.0, "_C.dir/b.cu.o": 100.0, "_C.dir/c.cu.o": 200.0}
    done = {"_C.dir/a.cu.o": 100.0, "_C.abi3.so": 2.0}  # a link is no object to count
    outlook = forecast(seconds, done, [], slots=4)
    assert (outlook.objects_done, outlook.objects_total) == (1, 3)
    assert outlook.work_done == pytest.approx(100 / 400)


def test_the_longest_remaining_object_sets_the_eta_when_cpus_are_plenty() -> None:
    seconds = {"_C.dir/long.o": 900.0, **{f"_C.dir/short{i}.o": 60.0 for i in range(10)}}
    outlook = forecast(seconds, {}, [RunningJob("_C.dir/long.o", 300.0, held=False)], slots=20)
    assert outlook.eta_s == pytest.approx(600.0)
    assert outlook.slack_s("_C.dir/long.o") == 0.0
    assert outlook.slack_s("_C.dir/short3.o") == pytest.approx(600.0)


def test_the_eta_is_the_work_over_the_cpus_when_many_equal_objects_remain() -> None:
    seconds = {f"_C.dir/o{i}.o": 100.0 for i in range(40)}
    assert forecast(seconds, {}, [], slots=4).eta_s == pytest.approx(1000.0)


def test_running_jobs_count_their_own_progress_in_the_share_of_work_done() -> None:
    seconds = {"_C.dir/a.o": 100.0, "_C.dir/b.o": 300.0}
    outlook = forecast(seconds, {"_C.dir/a.o": 100.0}, [RunningJob("_C.dir/b.o", 150.0, held=False)], slots=2)
    assert outlook.work_done == pytest.approx(250 / 400)
    assert outlook.remaining_s == {"_C.dir/b.o": 150.0}
    assert outlook.eta_s == pytest.approx(150.0)


def test_a_machine_slower_than_the_estimates_stretches_the_rest_of_the_build() -> None:
    seconds = {f"_C.dir/o{i}.o": 100.0 for i in range(8)}
    done = {f"_C.dir/o{i}.o": 120.0 for i in range(4)}  # this machine's cores: 1.2× the profile's
    outlook = forecast(seconds, done, [], slots=4)
    assert outlook.speed == pytest.approx(1.2)
    assert outlook.eta_s == pytest.approx(120.0)


def test_compiler_cache_hits_do_not_make_the_machine_look_faster() -> None:
    seconds = {f"_C.dir/o{i}.o": 100.0 for i in range(8)}
    done = {f"_C.dir/o{i}.o": 0.2 for i in range(4)}
    assert forecast(seconds, done, [], slots=4).speed == 1.0


def test_held_jobs_wait_for_a_cpu_after_the_running_ones() -> None:
    seconds = {"_C.dir/run.o": 100.0, "_C.dir/held.o": 100.0}
    jobs = [RunningJob("_C.dir/run.o", 0.0, held=False), RunningJob("_C.dir/held.o", 0.0, held=True)]
    outlook = forecast(seconds, {}, jobs, slots=1)
    assert (outlook.running, outlook.held, outlook.eta_s) == (1, 1, 200.0)


def test_where_memory_binds_the_eta_is_the_memory_time_over_the_budget() -> None:
    seconds = {f"_C.dir/o{i}.o": 100.0 for i in range(10)}
    peaks = {f"_C.dir/o{i}.o": 8 * GIB for i in range(10)}
    outlook = forecast(seconds, {}, [], slots=10, peaks=peaks, budget_bytes=16 * GIB)
    assert outlook.eta_s == pytest.approx(500.0)  # 2 at a time fit, not 10


def test_a_job_the_governor_holds_keeps_its_ninja_slot_so_a_small_one_behind_it_waits() -> None:
    jobs = [(100.0, 8 * GIB), (10.0, 8 * GIB), (100.0, GIB), (100.0, GIB)]
    # B waits in its slot for A's memory; C and D start only as slots free, not at once.
    assert schedule_end([], jobs, slots=2, budget=10 * GIB) == 210.0


def test_a_job_without_an_estimate_takes_the_median_duration_but_is_no_object_to_count() -> None:
    seconds = {"_C.dir/a.o": 10.0, "_C.dir/b.o": 50.0, "_C.dir/c.o": 90.0}
    jobs = [RunningJob("_C.dir/new.o", 0.0, held=False), RunningJob("_C.abi3.so", 0.0, held=False)]
    outlook = forecast(seconds, {}, jobs, slots=8)
    assert (outlook.objects_done, outlook.objects_total) == (0, 3)
    assert outlook.remaining_s == {"_C.dir/new.o": 50.0, "_C.abi3.so": 50.0}


def test_log_lines_without_an_mtime_such_as_a_seeded_log_are_not_progress() -> None:
    lines = [
        NinjaLine("a.o", 0, 900_000, None),  # seeded: expected duration, nothing built
        NinjaLine("b.o", 0, 60_000, None),
        NinjaLine("b.o", 5_000, 65_000, 1.7e9),  # built since
    ]
    assert finished_in(lines) == {"b.o": 60.0}


def test_finished_objects_are_read_once_setup_py_creates_the_build_tree(tmp_path: Path) -> None:
    now = [0.0]
    follow = FinishedObjects(tmp_path / "build", clock=lambda: now[0], search_every_s=10.0)
    assert follow() == {}
    log = tmp_path / "build" / "temp.linux-aarch64-cpython-312" / ".ninja_log"
    log.parent.mkdir(parents=True)
    log.write_text("# ninja log v7\n0\t1500\t1700000000000000000\tCMakeFiles/_C.dir/a.cu.o\tdeadbeef\n")
    assert follow() == {}  # not looked for again within 10 s
    now[0] = 10.0
    assert follow() == {"_C.dir/a.cu.o": 1.5}
    with log.open("a") as handle:
        handle.write("1500\t4000\t1700000000000000001\tCMakeFiles/_C.dir/b.cu.o\tfeed\n")
    assert follow() == {"_C.dir/a.cu.o": 1.5, "_C.dir/b.cu.o": 2.5}


def test_a_log_that_cannot_be_read_for_a_moment_keeps_what_was_read_last(tmp_path: Path) -> None:
    log = tmp_path / ".ninja_log"
    log.write_text("# ninja log v7\n0\t1500\t1700000000000000000\tCMakeFiles/_C.dir/a.cu.o\tdeadbeef\n")
    follow = FinishedObjects(tmp_path, clock=lambda: 0.0)
    assert follow() == {"_C.dir/a.cu.o": 1.5}
    log.unlink()  # Ninja swaps in a recompacted log
    assert follow() == {"_C.dir/a.cu.o": 1.5}
