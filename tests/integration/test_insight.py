"""`invoke report` asks the real ninja for the dependency graph while a real build tree exists."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from spark_build.insight.report import report_main
from spark_build.insight.trace import write_trace
from tests.unit.test_insight import DATA, console
from tests.unit.test_trace import trace_problems


def test_report_asks_ninja_for_the_graph_while_a_real_build_tree_exists(tmp_path: Path) -> None:
    ninja = shutil.which("ninja")
    if ninja is None:
        pytest.fail("ninja is not on PATH (the build venv and CI install it)")
    tree = tmp_path / "work" / "src" / "build" / "temp"
    tree.mkdir(parents=True)
    (tree / "build.ninja").write_text(
        "rule job\n  command = sleep $secs && touch $out\n"
        "build gen.h: job\n  secs = 0.2\n"
        "build CMakeFiles/x.dir/a.o: job gen.h\n  secs = 0.2\n"
        "build CMakeFiles/x.dir/b.o: job\n  secs = 0.05\n"
        "build lib.so: job CMakeFiles/x.dir/a.o CMakeFiles/x.dir/b.o\n  secs = 0.05\n"
    )
    started = time.time()
    subprocess.run([ninja, "-C", str(tree), "-j", "2"], check=True, capture_output=True)
    ended = time.time()
    run_id = "20261125-190000-1"
    folder = tmp_path / "logs" / run_id
    folder.mkdir(parents=True)
    summary = json.loads((DATA / "example.summary.json").read_text()) | {"run_id": run_id}
    (folder / "summary.json").write_text(json.dumps(summary))
    state: dict[str, Any] = {"schema": 1, "run_id": run_id, "steps": {}}
    state["steps"]["compile"] = {"run_id": run_id, "started": started - 0.5, "ended": ended + 0.5, "status": "done"}
    (tmp_path / "work" / "state.json").write_text(json.dumps(state))
    doc = json.loads(
        write_trace(folder, state_file=tmp_path / "work" / "state.json", build_root=tree.parent).read_text()
    )
    assert trace_problems(doc) == []  # system Ninja writes log v5: mtimes of outputs, not start times
    assert doc["otherData"]["objects_built"] == 2  # a.o and b.o; gen.h and the link are no objects

    out_console, out = console()
    assert report_main(tmp_path / "logs", run_id, True, out_console) == 0
    crit = json.loads(out.getvalue())["critical_path"]
    assert crit["method"] == "Ninja's dependency graph"
    assert crit["chain"][-1] == "lib.so"
    deps = {"lib.so": {"x.dir/a.o", "x.dir/b.o"}, "x.dir/a.o": {"gen.h"}}
    assert all(earlier in deps[later] for earlier, later in zip(crit["chain"], crit["chain"][1:], strict=False))
