"""The governor's forecast over a real Ninja build: objects counted from the `.ninja_log` Ninja
writes, jobs named from the command lines Ninja runs, the ETA falling to nothing at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from spark_build.compile.eta import FinishedObjects, Forecast
from spark_build.compile.governor import Governor

GIB = 2**30
SECONDS = {"_C.dir/a.cu.o": 0.8, "_C.dir/b.cu.o": 0.3, "_C.dir/c.cu.o": 0.3, "_C.dir/d.cu.o": 0.3}
JOB = "import sys, time; time.sleep(float(sys.argv[1])); open(sys.argv[3], 'w').close()"


def manifest(python: str) -> str:
    lines = ["rule cc", f'  command = {python} -c "{JOB}" $secs -o $out', ""]
    for obj, secs in SECONDS.items():
        lines += [f"build CMakeFiles/{obj}: cc", f"  secs = {secs}", ""]
    return "\n".join(lines)


@pytest.mark.skipif(shutil.which("ninja") is None, reason="needs ninja")
def test_the_forecast_counts_what_ninja_built_and_ends_at_zero(tmp_path: Path) -> None:
    (tmp_path / "CMakeFiles" / "_C.dir").mkdir(parents=True)
    (tmp_path / "build.ninja").write_text(manifest(sys.executable))
    forecasts: list[Forecast] = []
    build = subprocess.Popen(["ninja", "-j2"], cwd=tmp_path, stdout=subprocess.DEVNULL, process_group=0)
    try:
        with Governor(
            build.pid,
            budget_bytes=8 * GIB,
            default_peak=GIB // 8,
            interval_s=0.05,
            read_available=lambda tree_rss: 8 * GIB - tree_rss,
            install_signal_handlers=False,
            seconds=SECONDS,
            slots=2,
            finished=FinishedObjects(tmp_path, search_every_s=0.05),
            on_forecast=forecasts.append,
        ):
            build.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.pid, signal.SIGKILL)
        build.wait()
    assert build.returncode == 0
    assert {f.objects_total for f in forecasts} == {4}
    assert forecasts[0].objects_done == 0 and max(f.objects_done for f in forecasts) >= 3
    assert any(f.running == 2 for f in forecasts)  # jobs named from Ninja's `sh -c … -o obj`
    built = FinishedObjects(tmp_path)()
    assert set(built) == set(SECONDS)
    assert all(built[obj] >= secs for obj, secs in SECONDS.items())
    assert forecasts[-1].eta_s < forecasts[0].eta_s
