"""The GPU-machine scripts, run for real against folders laid out as the machine leaves them.

A device call brings back at most 8 files from $OUT and deletes the carried folders (`.whl`,
`.device`) a later call does not name: `device_poll.sh` returns the run as one archive, and
`device_build.sh` copies what the run reads onto the machine's disk before it starts. The GPU
machine itself cannot be reached from CI: the build's own start (venv, vLLM) is not run here,
its staging is (`device_build.sh WORK stage`).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

RUN = ROOT / "tests" / "data" / "gpu-run-2026-12-07"
RUN_ID = "20261207-081006-537"
BUILD = ROOT / "benchmarks" / "device_build.sh"
POLL = ROOT / "benchmarks" / "device_poll.sh"


def script(path: Path, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(path), *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def finished_run(work: Path) -> None:
    """WORK as device_build.sh leaves it after the real run: its console, run folder, build tree."""
    folder = work / "logs" / RUN_ID
    folder.mkdir(parents=True)
    for name in ("summary.json", "jobs.json"):
        shutil.copy(RUN / name, folder / name)
    (folder / "compile.log").write_bytes(b"x" * (9 * 2**20))  # over the 8 MiB a file keeps
    (work / "logs" / "latest").symlink_to(RUN_ID)
    tree = work / "work" / "src" / "build" / "temp.linux-x86_64-cpython-312"
    tree.mkdir(parents=True)
    shutil.copy(RUN / "ninja_log", tree / ".ninja_log")
    (work / "work" / "dist").mkdir()
    (work / "work" / "dist" / "vllm-0.13.0+cu130-cp312-cp312-linux_x86_64.whl").write_bytes(b"PK")
    (work / "work" / "state.json").write_text("{}")
    (work / "build.out").write_text((RUN / "console.txt").read_text() + f"logs: {folder}  summary: summary.json\n")


def test_both_scripts_parse() -> None:
    for path in (BUILD, POLL):
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, path


def test_the_poll_returns_a_finished_run_as_one_archive(tmp_path: Path) -> None:
    work, out = tmp_path / "w", tmp_path / "out"
    finished_run(work)
    result = script(POLL, str(work), "30", OUT=str(out))
    assert result.returncode == 0, result.stderr
    assert "build ended (timing table printed) after 0s" in result.stdout
    assert [p.name for p in out.iterdir()] == ["run-logs.tgz"]
    with tarfile.open(out / "run-logs.tgz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
        big = archive.getmember(f"./logs/{RUN_ID}/compile.log.tail").size
    expected = {"build.out", "ninja_log", "state.json", "dist.txt", "poll.txt", f"logs/{RUN_ID}/summary.json"}
    assert expected <= names
    assert f"logs/{RUN_ID}/jobs.json" in names and f"logs/{RUN_ID}/compile.log" not in names
    assert big == 8 * 2**20


def test_the_poll_returns_at_once_when_the_build_died_without_its_timing_table(tmp_path: Path) -> None:
    work, out = tmp_path / "w", tmp_path / "out"
    work.mkdir()
    (work / "build.out").write_text("▶ compile: compile the extensions\nKilled\n")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (work / "build.pid").write_text(f"{dead.pid}\n")
    result = script(POLL, str(work), "540", OUT=str(out))
    assert "build ended without a timing table after 0s" in result.stdout
    with tarfile.open(out / "run-logs.tgz") as archive:
        assert "./build.out" in archive.getnames()


def test_the_poll_waits_no_longer_than_asked_while_the_build_runs(tmp_path: Path) -> None:
    work, out = tmp_path / "w", tmp_path / "out"
    work.mkdir()
    (work / "build.out").write_text("▶ compile: compile the extensions\n")
    build = subprocess.Popen(["sleep", "60"])
    try:
        (work / "build.pid").write_text(f"{build.pid}\n")
        result = script(POLL, str(work), "2", OUT=str(out), POLL_EVERY="1")
    finally:
        build.kill()
        build.wait()
    assert "build running after 2s" in result.stdout
    assert [p.name for p in out.iterdir()] == ["run-logs.tgz"]


def checkout(root: Path) -> Path:
    """A checkout as a device call lays it out: the project, its git folder, a local venv, and
    the carried wheels and mirrors."""
    for rel, text in {
        "tasks.py": "# tasks\n",
        "spark_build/__init__.py": "",
        "patches/vllm/series": "0001-x.patch\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".venv/bin/python": "",
        ".whl/invoke-2.2.0-py3-none-any.whl": "wheel",
        ".device/mirror/vllm-0.13.0.tar.gz": "sdist",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_build_copies_checkout_wheels_and_mirrors_onto_the_machines_disk(tmp_path: Path) -> None:
    root, work = checkout(tmp_path / "checkout"), tmp_path / "w"
    result = script(BUILD, str(work), "stage", cwd=root)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(root)  # the next call replaces the checkout and drops what it does not carry
    stage = work / "stage"
    assert (stage / "checkout" / "tasks.py").read_text() == "# tasks\n"
    assert (stage / "checkout" / "patches" / "vllm" / "series").is_file()
    assert (stage / "wheels" / "invoke-2.2.0-py3-none-any.whl").read_text() == "wheel"
    assert (stage / "mirror" / "vllm-0.13.0.tar.gz").read_text() == "sdist"
    for left_out in (".git", ".venv", ".whl", ".device"):
        assert not (stage / "checkout" / left_out).exists(), left_out
    assert not [p for p in stage.rglob("*") if p.is_symlink()]


def test_the_build_refuses_to_restage_under_a_build_still_running(tmp_path: Path) -> None:
    root, work = checkout(tmp_path / "checkout"), tmp_path / "w"
    work.mkdir()
    build = subprocess.Popen(["sleep", "60"])
    try:
        (work / "build.pid").write_text(f"{build.pid}\n")
        result = script(BUILD, str(work), "stage", cwd=root)
    finally:
        build.kill()
        build.wait()
    assert result.returncode == 2
    assert f"is still running (pid {build.pid})" in result.stderr and "device_poll.sh" in result.stderr
    assert not (work / "stage").exists()


def fake_spark_build_venv(work: Path) -> Path:
    """WORK/sb as a first start leaves it, with an `invoke` that writes what it was asked and
    the timing table's last line, as the real one ends: the venv's own install needs the wheels
    of the GPU machine's carry, which CI does not have."""
    site = work / "sb" / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    bin_dir = work / "sb" / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    invoke = bin_dir / "invoke"
    invoke.write_text('#!/bin/sh\necho "invoke $*"\necho "logs: $PWD/logs/latest  summary: summary.json"\n')
    invoke.chmod(0o755)
    return site


def sdist(path: Path) -> None:
    """A source archive laid out as vLLM's sdist: one top folder."""
    with tarfile.open(path, "w:gz") as archive:
        data = b"from setuptools import setup\nsetup()\n"
        info = tarfile.TarInfo("vllm-0.13.0/setup.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def test_the_started_build_reads_only_the_staged_copies_and_the_poll_finds_it(tmp_path: Path) -> None:
    root, work, out = checkout(tmp_path / "checkout"), tmp_path / "w", tmp_path / "out"
    mirror = root / ".device" / "mirror"
    sdist(mirror / "vllm-0.13.0.tar.gz")
    for name in ("cutlass-v4.2.1-headers.tar.gz", "cutlass-62750a2b-headers.tar.gz", "triton-kernels-standin.tar.gz"):
        (mirror / name).write_bytes(name.encode())
    site = fake_spark_build_venv(work)

    result = script(BUILD, str(work), "build-vllm", "--jobs", "16", cwd=root, TORCH_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(root)  # the poll's call carries nothing and runs in a new checkout
    for _ in range(100):
        if "logs: " in (work / "build.out").read_text():
            break
        time.sleep(0.1)

    stage = work / "stage"
    argv = (work / "build.out").read_text().splitlines()[0]
    assert f"-r {stage / 'checkout'} " in argv and f"--wheels {stage / 'wheels'} " in argv
    assert argv.endswith("--jobs 16") and str(root) not in argv
    assert (site / "spark_build_inherit.pth").read_text().splitlines()[0] == str(stage / "checkout")
    yaml = (work / "invoke.yaml").read_text()
    assert f"qutlass: {stage / 'mirror'}/qutlass.bundle" in yaml and str(root) not in yaml
    assert (
        subprocess.run(["git", "-C", str(work / "vllm"), "tag"], capture_output=True, text=True).stdout == "v0.13.0\n"
    )
    assert (work / "build.pid").read_text().strip().isdigit()

    polled = script(POLL, str(work), "30", OUT=str(out), POLL_EVERY="1")
    assert "build ended (timing table printed)" in polled.stdout
    with tarfile.open(out / "run-logs.tgz") as archive:
        assert "./build.out" in archive.getnames()


@pytest.mark.parametrize("missing", [".whl", ".device"])
def test_the_build_says_which_carried_folder_is_missing(tmp_path: Path, missing: str) -> None:
    root, work = checkout(tmp_path / "checkout"), tmp_path / "w"
    shutil.rmtree(root / missing)
    result = script(BUILD, str(work), "stage", cwd=root)
    assert result.returncode == 2
    assert f"{missing}" in result.stderr and "carry" in result.stderr
