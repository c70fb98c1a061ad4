"""`invoke report` and `invoke history` read back real example builds (tests/data/example*):
built from scratch, interrupted during the compile, and resumed."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from spark_build.compile.ninjalog import parse_ninja_lines
from spark_build.errors import UsageError
from spark_build.insight.critical_path import critical_path, parse_ninja_graph
from spark_build.insight.history import HistoryRow, compare, describe_change, history_rows, load_runs
from spark_build.insight.report import find_run, history_main, load_run, report_data, report_main
from spark_build.insight.trace import write_trace
from tests.unit.test_trace import FULL_RUN, RESUMED_RUN

DATA = Path(__file__).parents[1] / "data"

INTERRUPTED_RUN = "20261125-181541-6878"


def ccache(hits: int, misses: int) -> dict:
    """summary.json's `compiler_cache` as the compile step records it (these builds predate it)."""
    stats = {"hits": hits, "misses": misses, "uncacheable": 0, "hit_rate": hits / (hits + misses)}
    return {"tool": "ccache", "storage": "local", "stats": stats}


# What the compiler cache did in each recorded build that compiled.
COMPILER_CACHE = {"example": ccache(0, 13), "example-resumed": ccache(1, 3)}


def add_run(logs: Path, variant: str, run_id: str, *, traced: bool = True) -> Path:
    """logs/<run-id>/ as the build leaves it: summary.json, jobs.json where the run wrote one,
    and trace.json (written from the real state.json and .ninja_log; the build tree is gone)."""
    folder = logs / run_id
    folder.mkdir(parents=True)
    summary = json.loads((DATA / f"{variant}.summary.json").read_text())
    if variant in COMPILER_CACHE:
        summary["compiler_cache"] = COMPILER_CACHE[variant]
    (folder / "summary.json").write_text(json.dumps(summary))
    if (DATA / f"{variant}.jobs.json").exists():
        shutil.copy(DATA / f"{variant}.jobs.json", folder / "jobs.json")
    if traced:
        build_root = logs.parent / f"build-{run_id}"
        (build_root / "temp").mkdir(parents=True)
        shutil.copy(DATA / f"{variant}.ninja_log", build_root / "temp" / ".ninja_log")
        write_trace(folder, state_file=DATA / f"{variant}.state.json", build_root=build_root)
        shutil.rmtree(build_root)
    return folder


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, highlight=False), out


def example_seconds() -> dict[str, float]:
    return {
        line.object: (line.end_ms - line.start_ms) / 1000
        for line in parse_ninja_lines((DATA / "example.ninja_log").read_text())
    }


def test_report_names_the_slowest_objects_utilisation_cache_and_verdicts_of_a_real_build(tmp_path: Path) -> None:
    folder = add_run(tmp_path / "logs", "example", FULL_RUN)
    data = report_data(load_run(folder))
    seconds = example_seconds()
    assert data["outcome"] == "ok"
    assert [o["object"] for o in data["slowest"]] == sorted(seconds, key=lambda o: -seconds[o])[:10]
    assert data["slowest"][0] == {"object": "_C.dir/csrc/elementwise_half.cu.o", "seconds": 18.652}
    util = data["cpu_utilisation"]
    assert util["jobs"] == 2
    assert util["object_seconds"] == pytest.approx(sum(seconds.values()), abs=1e-3)
    assert util["share"] == pytest.approx(sum(seconds.values()) / (59.057 - 0.001) / 2, abs=1e-3)
    assert data["cache"]["hit_rate"] == 0.0  # a fresh build finds nothing in a fresh cache
    assert data["validation"]["verdicts"] == {"12.1": "native"}
    assert data["validation"]["linkage_ok"] is True
    assert data["hungriest"] == []  # this build predates jobs.json


def test_without_the_build_tree_the_critical_path_falls_back_to_the_longest_object_and_says_so(
    tmp_path: Path,
) -> None:
    folder = add_run(tmp_path / "logs", "example", FULL_RUN)
    code = report_main(tmp_path / "logs", FULL_RUN, True, (out := console())[0])
    assert code == 0
    crit = json.loads(out[1].getvalue())["critical_path"]
    assert crit["chain"] == ["_C.dir/csrc/elementwise_half.cu.o"]
    assert "longest single object" in crit["method"] and "build tree is gone" in crit["method"]
    assert folder.exists()


def test_critical_path_follows_ninjas_real_dependency_graph() -> None:
    deps = parse_ninja_graph((DATA / "example.ninja_graph.dot").read_text())
    assert "_C.dir/csrc/topk.cu.o" in deps["_C.abi3.so"]
    seconds = example_seconds()
    total, chain = critical_path(seconds, deps)
    assert chain == ["_C.dir/csrc/elementwise_half.cu.o", "_C.abi3.so"]  # every object links into the .so
    assert total == pytest.approx(seconds["_C.dir/csrc/elementwise_half.cu.o"] + seconds["_C.abi3.so"])


def test_critical_path_ends_even_when_a_graph_has_a_cycle() -> None:
    total, chain = critical_path({"a": 1.0, "b": 2.0, "c": 4.0}, {"a": {"b"}, "b": {"a"}, "c": {"b"}})
    assert chain[-1] == "c" and total >= 6.0


def test_report_of_the_resumed_build_counts_reused_objects_and_ranks_the_hungriest(tmp_path: Path) -> None:
    folder = add_run(tmp_path / "logs", "example-resumed", RESUMED_RUN)
    data = report_data(load_run(folder))
    # One definition of the hit rate, the compiler cache's own; Ninja's reuse is said beside it.
    assert data["cache"]["hit_rate"] == 0.25
    assert data["cache"]["note"] == "ccache: 1 hits, 3 misses; Ninja reused 8 of 11 objects"
    assert data["objects_built"] == 3  # and the link
    assert [h["object"] for h in data["hungriest"]] == [
        "_C.dir/csrc/topk.cu.o",
        "_C.dir/csrc/elementwise_float.cu.o",
        "_C.dir/csrc/elementwise_half.cu.o",
    ]
    assert data["memory"]["peak_bytes"] == 1188728832  # the governor's process-tree peak


def test_report_prints_timing_objects_path_cache_and_validation(tmp_path: Path) -> None:
    add_run(tmp_path / "logs", "example-resumed", RESUMED_RUN)
    out_console, out = console()
    assert report_main(tmp_path / "logs", None, False, out_console) == 0
    text = out.getvalue()
    for expected in (
        "build 20261125-181638-9077: ok for 12.1a",
        "compile",
        "elementwise_half.cu.o",
        "407 MiB",  # topk's peak
        "CPU utilisation:",
        "critical path: 9.7s — elementwise_half.cu.o [longest single object",
        "cache hit rate: 25% — ccache: 1 hits, 3 misses; Ninja reused 8 of 11 objects",
        "validation (done): GPU code 12.1: native; imports ok; linkage ok",
    ):
        assert expected in text, expected


def test_report_says_imports_not_proven_where_the_validating_host_had_no_driver(tmp_path: Path) -> None:
    folder = add_run(tmp_path / "logs", "example", FULL_RUN, traced=False)
    summary = json.loads((folder / "summary.json").read_text())
    summary["results"]["validate"]["imports"] = {"spark_example": True, "spark_example._C": False}
    summary["results"]["validate"]["imports_unproven"] = ["spark_example._C"]
    (folder / "summary.json").write_text(json.dumps(summary))
    out_console, out = console()
    report_main(tmp_path / "logs", None, False, out_console)
    assert "imports 1 ok, 1 not proven on the validating host (spark_example._C);" in out.getvalue()
    assert "FAILED" not in out.getvalue()
    summary["results"]["validate"]["imports_unproven"] = []  # a real failure stays one
    (folder / "summary.json").write_text(json.dumps(summary))
    out_console, out = console()
    report_main(tmp_path / "logs", None, False, out_console)
    assert "imports FAILED;" in out.getvalue()


def test_report_of_an_unknown_run_exits_2_and_lists_the_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_run(tmp_path / "logs", "example", FULL_RUN)
    with pytest.raises(UsageError) as raised:
        report_main(tmp_path / "logs", "20991231", False, console()[0])
    assert raised.value.exit_code == 2
    assert FULL_RUN in "\n".join(raised.value.lines())


def test_a_run_is_found_by_id_prefix_path_or_latest(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    first = add_run(logs, "example", FULL_RUN, traced=False)
    second = add_run(logs, "example-resumed", RESUMED_RUN, traced=False)
    assert find_run(logs, "20261125-1811") == first
    assert find_run(logs, str(second)) == second
    assert find_run(logs, None) == second  # no logs/latest link: the newest
    (logs / "latest").symlink_to(first.name)
    assert find_run(logs, "latest") == first


def test_history_has_one_row_per_build_oldest_first_compared_with_the_last_build_of_its_inputs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    add_run(logs, "example-resumed", RESUMED_RUN)
    add_run(logs, "example-interrupted", INTERRUPTED_RUN, traced=False)
    add_run(logs, "example", FULL_RUN)
    (logs / "latest").symlink_to(RESUMED_RUN)
    rows = history_rows(load_runs(logs))
    assert [r.run_id for r in rows] == [FULL_RUN, INTERRUPTED_RUN, RESUMED_RUN]
    assert [r.outcome for r in rows] == ["ok", "interrupted at compile", "ok"]
    assert {(r.ref, r.arch) for r in rows} == {("v0.2.0", "12.1a")}
    assert rows[0].date == "2026-11-25 18:11"
    assert [r.cache_hit_rate for r in rows] == [0.0, None, 0.25]
    assert [r.peak_memory_bytes for r in rows] == [None, None, 1188728832]
    assert rows[0].change == {"previous": None}
    resumed = rows[2].change
    assert resumed["previous"] == INTERRUPTED_RUN
    assert resumed["wall_s"] == pytest.approx(23.76 - 56.297)
    assert resumed["outcome_was"] == "interrupted at compile"
    assert describe_change(resumed).startswith("−32.5s (−58%)")


def test_builds_of_other_inputs_are_not_compared() -> None:
    summary = json.loads((DATA / "example.summary.json").read_text())
    other_arch = summary | {"run_id": "20261126-000000-1", "arch": "12.0"}
    rows = history_rows([summary, other_arch])
    assert [describe_change(r.change) for r in rows] == ["first build of these inputs"] * 2


def test_compare_reports_only_what_changed() -> None:
    before = HistoryRow("r1", "", "v1", "abc", "12.1a", 100.0, 4, 8 * 2**30, 0.0, "", "failed at compile", "abc 12.1a")
    after = HistoryRow("r2", "", "v1", "abc", "12.1a", 80.0, 4, 6 * 2**30, 0.5, "", "ok", "abc 12.1a")
    change = compare(after, before)
    assert change == {
        "previous": "r1",
        "wall_s": -20.0,
        "wall_pct": -20.0,
        "peak_memory_bytes": -2 * 2**30,
        "cache_hit_points": 50.0,
        "outcome_was": "failed at compile",
    }
    assert describe_change(change) == "−20.0s (−20%); peak −2.0 GiB; cache +50 pts; was failed at compile"


def test_history_prints_a_line_per_build_and_json_on_request(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    add_run(logs, "example", FULL_RUN)
    add_run(logs, "example-resumed", RESUMED_RUN)
    (logs / "broken").mkdir()
    (logs / "broken" / "summary.json").write_text('{"run_id": ')  # a build killed mid-write
    out_console, out = console()
    assert history_main(logs, False, out_console) == 0
    lines = [line for line in out.getvalue().splitlines() if "v0.2.0" in line]
    assert len(lines) == 2 and "first build of these inputs" in lines[0]
    out_console, out = console()
    assert history_main(logs, True, out_console) == 0
    assert [r["run_id"] for r in json.loads(out.getvalue())] == [FULL_RUN, RESUMED_RUN]


def test_html_timeline_draws_every_slice_and_needs_no_network(tmp_path: Path) -> None:
    add_run(tmp_path / "logs", "example", FULL_RUN)
    page = tmp_path / "timeline.html"
    assert report_main(tmp_path / "logs", FULL_RUN, False, console()[0], html=page) == 0
    text = page.read_text()
    doc = json.loads((tmp_path / "logs" / FULL_RUN / "trace.json").read_text())
    assert text.count("<rect ") == sum(1 for e in doc["traceEvents"] if e["ph"] == "X")
    for label in ("preflight", "compile", "slot 1", "slot 2", "jobs running"):
        assert f">{label}<" in text or f">{label} (" in text, label
    assert "<script" not in text and "src=" not in text and "href=" not in text
    # the figures beside the drawing: timing, slowest objects, the cache, validation
    assert "cache hit rate: 0% — ccache: 0 hits, 13 misses" in text and "elementwise_half.cu.o" in text


def test_the_html_page_of_a_failed_run_shows_its_error(tmp_path: Path) -> None:
    folder = add_run(tmp_path / "logs", "example", FULL_RUN)
    summary = json.loads((folder / "summary.json").read_text())
    summary |= {"exit_code": 1, "error": "`uv pip install …` exited with status 2"}
    (folder / "summary.json").write_text(json.dumps(summary))
    page = tmp_path / "timeline.html"
    assert report_main(tmp_path / "logs", FULL_RUN, False, console()[0], html=page) == 0
    assert "error: `uv pip install …` exited with status 2" in page.read_text()


@pytest.mark.parametrize(
    ("status", "rate", "note"),
    [
        ("skipped", None, "no compile in this run (an earlier run's wheel was reused)"),
        ("failed", None, "no compiler-cache figures (compile failed)"),
        ("done", 0.25, "ccache: 1 hits, 3 misses"),
    ],
    ids=["no-op-resume-is-not-100-percent", "failed-compile-has-no-figure", "finished-compile"],
)
def test_the_cache_hit_rate_is_the_compiler_caches_own_and_only_for_a_compile_this_run_finished(
    status: str, rate: float | None, note: str
) -> None:
    from spark_build.insight.history import cache_hits

    summary = {"steps": [{"name": "compile", "status": status}], "compiler_cache": COMPILER_CACHE["example-resumed"]}
    assert cache_hits(summary) == (rate, note)


def test_a_build_is_not_compared_in_percent_with_a_run_that_compiled_nothing() -> None:
    no_op = HistoryRow("r1", "", "v1", "abc", "12.1a", 0.2, None, None, None, "", "ok", "abc 12.1a")
    rebuilt = HistoryRow("r2", "", "v1", "abc", "12.1a", 12.9, 2, None, 0.0, "", "ok", "abc 12.1a", compiled=True)
    change = compare(rebuilt, no_op)
    assert "wall_pct" not in change
    assert describe_change(change) == "+12.7s"


def test_the_report_repeats_the_install_line_of_the_published_wheel(tmp_path: Path) -> None:
    add_run(tmp_path / "logs", "example-resumed", RESUMED_RUN)
    out_console, out = console()
    assert report_main(tmp_path / "logs", None, False, out_console) == 0
    assert (
        "install with: uv pip install --extra-index-url file:///tmp/ex-work/wheelhouse/ 'spark-example==0.2.0+cu130'"
        in out.getvalue()
    )
