"""`invoke doctor` as a user runs it on this machine (no GPU): it says whether a build can start."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "doctor", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def test_with_a_named_arch_the_example_can_start_here_and_the_json_says_why(tmp_path):
    result = doctor("--workdir", str(tmp_path), "--arch", "12.1a", "--example", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["can_build"] is True
    assert checks["nvcc probe sm_121a"]["severity"] == "ok"
    assert checks["gpu"]["severity"] == "warning", "no GPU here: the serve check must run on the Spark"
    # spark-build's own venv has no torch, so no Triton whose bundled ptxas could lack sm_121a
    assert checks["triton ptxas"]["severity"] == "ok" and "lacks" not in checks["triton ptxas"]["value"]


def test_without_a_gpu_or_an_arch_no_build_can_start_and_the_fix_names_arch(tmp_path):
    result = doctor("--workdir", str(tmp_path))
    assert result.returncode == 1
    assert "--arch" in result.stdout and "a build cannot start" in result.stdout
