"""The installed `spark-build` command, run as a user would: from a folder that is not the
checkout, its logs and history kept in the workdir it built, its messages naming itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CPU_TORCH, _env

SPARK_BUILD = Path(sys.executable).parent / "spark-build"


@pytest.fixture
def spark_build() -> Path:
    if not SPARK_BUILD.is_file():
        pytest.fail(f"no {SPARK_BUILD}: reinstall the checkout (pip install -e '.[test]') to get the command")
    return SPARK_BUILD


def test_spark_build_lists_the_tasks_from_a_folder_outside_the_checkout(spark_build: Path, tmp_path: Path) -> None:
    listed = subprocess.run([spark_build, "--list"], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert listed.returncode == 0, listed.stderr
    for task in ("build-vllm", "arch-plan", "validate", "doctor", "nightly", "report", "history"):
        assert task in listed.stdout


def test_a_failed_build_keeps_its_logs_and_ref_in_the_workdir_and_history_finds_them_there(
    spark_build: Path, tmp_path: Path, upstream: Path, uv_cache: Path
) -> None:
    empty_index = tmp_path / "no-wheels"
    empty_index.mkdir()
    argv = [
        spark_build, "build-vllm", "--example", "--arch", "12.1a", "--repo", str(upstream), "--ref", "v0.2.0",
        "--torch-index", str(empty_index), "--torch-packages", CPU_TORCH, "--torch-cuda", "cpu",
        "--uv-cache-dir", str(uv_cache), "--cache-dir", str(tmp_path / "compiler-cache"),
    ]  # fmt: skip
    failed = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "log says: error: No solution found" in failed.stderr
    assert "fix: act on what the log says, then continue with: spark-build build-vllm" in failed.stderr
    assert not (tmp_path / "logs").exists()  # not the folder the user stood in
    summary = json.loads((tmp_path / "work" / "logs" / "latest" / "summary.json").read_text())
    assert (summary["ref"], summary["exit_code"]) == ("v0.2.0", 1)

    history = subprocess.run(
        [spark_build, "history", "--json"], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert history.returncode == 0, history.stderr
    (row,) = json.loads(history.stdout)
    assert (row["ref"], row["outcome"]) == ("v0.2.0", "failed at torch")
