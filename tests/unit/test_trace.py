"""`logs/<run-id>/trace.json`: a real example build's `.ninja_log`, `summary.json` and
`state.json` (tests/data/example*, from `invoke build-vllm --example --jobs 2`, one of them
interrupted and resumed) become a Chrome trace a viewer can open."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from spark_build.compile.ninjalog import NinjaLine, parse_ninja_lines
from spark_build.insight.buildlog import BuiltObject, GovernorEvent, MemorySample, ninja_runs, read_governor_log
from spark_build.insight.trace import PID_BUILD, PID_COMPILE, PID_MEMORY, assign_slots, trace_events, write_trace

DATA = Path(__file__).parents[1] / "data"
FULL_RUN = "20261125-181130-767"  # the example built from scratch, 11 objects and a link on 2 jobs
RESUMED_RUN = "20261125-181638-9077"  # Ctrl-C after 8 objects, then --resume built the last 3 and the link
META_NAMES = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


def trace_problems(doc: Mapping[str, Any]) -> list[str]:
    """What Perfetto's and chrome://tracing's JSON importers need of each event, as a list of
    violations (empty when the trace is valid)."""
    problems: list[str] = []
    events = doc.get("traceEvents")
    if not isinstance(events, list) or not events:
        return ["traceEvents is not a non-empty list"]
    named_pids: set[int] = set()
    named_threads: set[tuple[int, int]] = set()
    used_pids: set[int] = set()
    used_threads: set[tuple[int, int]] = set()
    slices: dict[tuple[int, int], list[tuple[int, int, str]]] = {}

    def whole_us(e: Mapping[str, Any], key: str) -> bool:
        return isinstance(e.get(key), int) and not isinstance(e.get(key), bool) and e[key] >= 0

    for e in events:
        ph = e.get("ph")
        if not isinstance(e.get("name"), str) or not isinstance(e.get("pid"), int):
            problems.append(f"no name or pid: {e}")
            continue
        if ph == "M":
            if e["name"] not in META_NAMES or not isinstance(e.get("args"), dict):
                problems.append(f"bad metadata: {e}")
            elif e["name"] == "process_name":
                named_pids.add(e["pid"])
            elif e["name"] == "thread_name":
                named_threads.add((e["pid"], e["tid"]))
            continue
        if not whole_us(e, "ts"):
            problems.append(f"ts is not whole µs >= 0: {e}")
        used_pids.add(e["pid"])
        if ph == "X":
            if not whole_us(e, "dur") or not isinstance(e.get("tid"), int) or not isinstance(e.get("cat"), str):
                problems.append(f"bad complete event: {e}")
                continue
            if not isinstance(e.get("args"), dict):
                problems.append(f"complete event without args: {e}")
            used_threads.add((e["pid"], e["tid"]))
            slices.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["dur"], e["name"]))
        elif ph == "i":
            if e.get("s") not in ("g", "p", "t") or not isinstance(e.get("tid"), int):
                problems.append(f"bad instant event: {e}")
                continue
            used_threads.add((e["pid"], e["tid"]))
        elif ph == "C":
            args = e.get("args")
            if not isinstance(args, dict) or not args:
                problems.append(f"counter without values: {e}")
            elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args.values()):
                problems.append(f"counter with a non-numeric value: {e}")
        else:
            problems.append(f"unknown phase {ph!r}: {e}")
    for track, items in slices.items():
        items.sort()
        for (ts, dur, name), (next_ts, _, next_name) in zip(items, items[1:], strict=False):
            if next_ts < ts + dur:
                problems.append(f"{name} and {next_name} overlap on track {track}")
    problems += [f"pid {pid} has no process_name" for pid in sorted(used_pids - named_pids)]
    problems += [f"thread {t} has no thread_name" for t in sorted(used_threads - named_threads)]
    return problems


def run_folder(tmp_path: Path, variant: str, run_id: str, *, jobs: bool = False) -> tuple[Path, Path, Path]:
    """A logs/<run-id>/ with the real summary, and a workdir with the real state and .ninja_log."""
    log_dir = tmp_path / "logs" / run_id
    log_dir.mkdir(parents=True)
    shutil.copy(DATA / f"{variant}.summary.json", log_dir / "summary.json")
    if jobs:
        shutil.copy(DATA / f"{variant}.jobs.json", log_dir / "jobs.json")
    build_root = tmp_path / "work" / "src" / "build"
    (build_root / "temp.linux-x86_64-cpython-311").mkdir(parents=True)
    shutil.copy(DATA / f"{variant}.ninja_log", build_root / "temp.linux-x86_64-cpython-311" / ".ninja_log")
    state = tmp_path / "work" / "state.json"
    shutil.copy(DATA / f"{variant}.state.json", state)
    return log_dir, state, build_root


def written_trace(tmp_path: Path, variant: str = "example", run_id: str = FULL_RUN, **kw: Any) -> dict[str, Any]:
    log_dir, state, build_root = run_folder(tmp_path, variant, run_id, **kw)
    path = write_trace(log_dir, state_file=state, build_root=build_root)
    assert path == log_dir / "trace.json"
    return json.loads(path.read_text())


def of(doc: Mapping[str, Any], ph: str, pid: int | None = None) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] == ph and (pid is None or e["pid"] == pid)]


def thread_names(doc: Mapping[str, Any], pid: int) -> dict[int, str]:
    return {e["tid"]: e["args"]["name"] for e in of(doc, "M", pid) if e["name"] == "thread_name"}


def test_trace_of_a_real_example_build_is_a_valid_chrome_trace(tmp_path: Path) -> None:
    doc = written_trace(tmp_path)
    assert trace_problems(doc) == []
    assert doc["displayTimeUnit"] == "ms"
    processes = {e["pid"]: e["args"]["name"] for e in of(doc, "M") if e["name"] == "process_name"}
    assert processes == {PID_BUILD: "build", PID_COMPILE: "compile"}  # no governor samples: no memory track


def test_every_object_ninja_built_is_a_slice_with_its_real_duration_on_one_of_two_slots(tmp_path: Path) -> None:
    doc = written_trace(tmp_path)
    lines = parse_ninja_lines((DATA / "example.ninja_log").read_text())
    logged = {line.object: (line.end_ms - line.start_ms) * 1000 for line in lines}
    slices = {e["args"]["object"]: e for e in of(doc, "X", PID_COMPILE)}
    assert {name: e["dur"] for name, e in slices.items()} == logged
    assert slices["_C.dir/csrc/scan.cu.o"]["name"] == "scan.cu.o"
    assert thread_names(doc, PID_COMPILE) == {1: "slot 1", 2: "slot 2"}  # --jobs 2
    assert max(e["args"]["jobs"] for e in of(doc, "C", PID_COMPILE) if e["name"] == "jobs running") == 2
    assert doc["otherData"]["objects_built"] == doc["otherData"]["objects_total"] == 11  # the link is no object


def test_steps_sit_at_their_recorded_times_with_the_compile_around_its_objects(tmp_path: Path) -> None:
    doc = written_trace(tmp_path)
    state = json.loads((DATA / "example.state.json").read_text())["steps"]
    t0 = doc["otherData"]["t0_epoch"]
    steps = {e["name"]: e for e in of(doc, "X", PID_BUILD)}
    summary = json.loads((DATA / "example.summary.json").read_text())
    assert list(thread_names(doc, PID_BUILD).values()) == [s["name"] for s in summary["steps"]]
    assert steps["venv"]["ts"] == round((state["venv"]["started"] - t0) * 1e6)
    assert steps["venv"]["args"]["timing"] == "recorded"
    # preflight is never checkpointed: placed from its duration, ending where venv starts
    assert steps["preflight"]["ts"] == 0
    assert steps["preflight"]["dur"] == steps["venv"]["ts"]
    assert steps["preflight"]["args"]["timing"] != "recorded"
    compile_step = steps["compile"]
    for obj in of(doc, "X", PID_COMPILE):
        assert compile_step["ts"] <= obj["ts"] and obj["ts"] + obj["dur"] <= compile_step["ts"] + compile_step["dur"]


def test_resumed_build_traces_only_the_objects_its_own_ninja_run_compiled(tmp_path: Path) -> None:
    doc = written_trace(tmp_path, "example-resumed", RESUMED_RUN, jobs=True)
    assert trace_problems(doc) == []
    built = {e["args"]["object"]: e["args"] for e in of(doc, "X", PID_COMPILE)}
    assert set(built) == {
        "_C.dir/csrc/elementwise_float.cu.o",
        "_C.dir/csrc/elementwise_half.cu.o",
        "_C.dir/csrc/topk.cu.o",
        "_C.abi3.so",
    }
    assert built["_C.dir/csrc/topk.cu.o"]["peak_rss_bytes"] == 426713088  # the governor's jobs.json
    assert "peak_rss_bytes" not in built["_C.abi3.so"]  # too short to be sampled
    assert (doc["otherData"]["objects_built"], doc["otherData"]["objects_total"]) == (3, 11)  # links drawn, not counted
    skipped = {e["name"] for e in of(doc, "i", PID_BUILD)}
    assert "clone skipped" in skipped and "torch skipped" in skipped
    assert of(doc, "C", PID_MEMORY)[0]["name"] == "budget"  # the plan's budget from summary.json


def test_a_resumed_logs_two_ninja_runs_are_told_apart_by_their_clock_origins() -> None:
    runs = ninja_runs(parse_ninja_lines((DATA / "example-resumed.ninja_log").read_text()))
    assert [len(r.lines) for r in runs] == [8, 4]
    assert runs[0].origin is not None and runs[1].origin is not None
    assert 30 < runs[1].origin - runs[0].origin < 60  # the interrupted run, then --resume


@pytest.mark.parametrize(
    "column", ["start_ms", "end_ms"], ids=["ninja-1.13-log-v7-start-time", "ninja-1.11-log-v5-output-mtime"]
)
def test_either_meaning_of_ninjas_mtime_column_anchors_a_run(column: str) -> None:
    origin = 1_800_000_000.0
    spans = [(0, 900), (5, 4000), (900, 2500), (2500, 9000), (4000, 4100)]
    lines = [
        NinjaLine(f"o{i}.o", s, e, origin + (s if column == "start_ms" else e) / 1000) for i, (s, e) in enumerate(spans)
    ]
    (run,) = ninja_runs(lines)
    assert run.origin == pytest.approx(origin, abs=1e-3)


def test_objects_are_given_the_lowest_free_slot_and_never_overlap_on_one() -> None:
    objs = [
        BuiltObject("a.o", 0.0, 4.0),
        BuiltObject("b.o", 0.0, 1.0),
        BuiltObject("c.o", 0.5, 2.0),
        BuiltObject("d.o", 1.0, 3.0),  # starts the instant b.o ends: b.o's slot
        BuiltObject("e.o", 4.0, 5.0),
    ]
    slots = assign_slots(objs, lambda t: round(t * 1e6))
    assert slots == [1, 2, 3, 2, 1]


def test_governor_samples_and_events_become_counters_and_instants() -> None:
    summary = json.loads((DATA / "example.summary.json").read_text())
    gib = 2**30
    t = 1_800_000_000.0
    objects = [BuiltObject("_C.dir/a.cu.o", t, t + 3, 2 * gib), BuiltObject("_C.dir/b.cu.o", t + 1, t + 2)]
    samples = [
        MemorySample(t + 0.5, available_bytes=10 * gib, budget_bytes=8 * gib, used_bytes=gib, running=2, held=0),
        MemorySample(t + 1.5, available_bytes=3 * gib, budget_bytes=8 * gib, used_bytes=5 * gib, running=1, held=1),
    ]
    happenings = [
        GovernorEvent(t + 1.5, "pause", "_C.dir/b.cu.o", "SIGSTOP: 0.4 GiB left"),
        GovernorEvent(t + 2.5, "oom-kill", "_C.dir/a.cu.o", "cicc died due to signal 9"),
        GovernorEvent(t + 2.6, "retry", None, "rerunning with 1 job"),
    ]
    events = trace_events(summary, objects, samples, happenings, {"compile": (t - 1, t + 4)})
    doc = {"traceEvents": events}
    assert trace_problems(doc) == []
    counters = {e["name"] for e in of(doc, "C")}
    assert {"available memory", "budget", "jobs running", "jobs held back"} <= counters
    assert [e["args"]["GiB"] for e in of(doc, "C", PID_MEMORY) if e["name"] == "available memory"] == [10.0, 3.0]
    instants = {e["name"]: e for e in of(doc, "i", PID_COMPILE)}
    assert instants["oom-kill a.cu.o"]["s"] == "p"  # marks the whole compile process
    assert instants["pause b.cu.o"]["args"]["detail"].startswith("SIGSTOP")
    assert "retry" in instants
    assert next(e for e in of(doc, "X", PID_COMPILE) if e["name"] == "a.cu.o")["args"]["peak_rss_gib"] == 2.0


def test_a_torn_last_line_of_the_governor_log_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "governor.jsonl"
    log.write_text(
        '{"t": 1.0, "available_bytes": 100, "running": 2, "held": 0}\n'
        '{"t": 2.0, "event": "pause", "object": "x.o"}\n'
        '{"t": 3.0, "availa'
    )
    samples, happenings = read_governor_log(log)
    assert samples == [MemorySample(1.0, available_bytes=100, running=2, held=0)]
    assert happenings == [GovernorEvent(2.0, "pause", "x.o")]


def test_without_state_json_steps_are_laid_end_to_end_from_their_durations(tmp_path: Path) -> None:
    log_dir, _, build_root = run_folder(tmp_path, "example", FULL_RUN)
    doc = json.loads(write_trace(log_dir, state_file=tmp_path / "gone.json", build_root=build_root).read_text())
    assert trace_problems(doc) == []
    steps = of(doc, "X", PID_BUILD)
    assert all(a["ts"] + a["dur"] == b["ts"] for a, b in zip(steps, steps[1:], strict=False))
    assert of(doc, "X", PID_COMPILE) == []  # without the compile's times no Ninja run can be placed


def test_a_pause_by_slack_shows_the_paused_job_and_its_slack_in_the_trace(tmp_path: Path) -> None:
    t = 1_800_000_000.0
    journal = tmp_path / "governor.jsonl"
    journal.write_text(
        json.dumps(
            {
                "t": t + 1.0,
                "event": "pause",
                "object": "_C.dir/a.cu.o",
                "slack_s": 870.0,
                "detail": "slack 870 s, off the critical path: delaying it costs nothing",
            }
        )
        + "\n"
    )
    _, happenings = read_governor_log(journal)
    summary = json.loads((DATA / "example.summary.json").read_text())
    objects = [BuiltObject("_C.dir/a.cu.o", t, t + 30)]
    events = trace_events(summary, objects, [], happenings, {"compile": (t - 1, t + 40)})
    pause = next(e for e in of({"traceEvents": events}, "i", PID_COMPILE) if e["name"] == "pause a.cu.o")
    assert pause["args"]["detail"].startswith("slack 870 s, off the critical path")
