"""`invoke build-vllm` end to end on the example upstream: real git, uv venvs, CPU torch from a
loopback index, CMake + Ninja + nvcc for sm_121a, a real wheel — and real kills."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from spark_build.errors import BuildLocked
from spark_build.lock import WorkdirLock
from spark_build.steps.compile import ninja_log_entries
from tests.conftest import Build, _env, ok, published_wheel
from tests.servers import git_server

STEPS = [
    "preflight",
    "venv",
    "torch",
    "clone",
    "patch",
    "changes",
    "use-existing-torch",
    "build-deps",
    "sources",
    "arch-plan",
    "ninja",
    "compile",
    "validate",
    "publish",
]


def record_hashes(wheel: Path) -> dict[str, str]:
    """The wheel's contents as its RECORD states them (file → sha256), RECORD itself left out."""
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        rows = [line.split(",") for line in archive.read(record).decode().splitlines() if line]
    return {path: digest for path, digest, _size in rows if path != record}


def build_processes(workdir: Path) -> list[psutil.Process]:
    """Every live process that belongs to a build in `workdir` (by its command line or cwd)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        text = " ".join(info["cmdline"] or []) + " " + (info["cwd"] or "")
        if str(workdir) in text:
            found.append(proc)
    return found


def objects_finished(workdir: Path) -> int:
    """Objects Ninja has finished and recorded (a `.o` on disk may still be half written).

    Polled while CMake's configure makes and deletes its TryCompile scratch folders in the same
    tree: a folder gone between listing and reading is that configure, before any object."""
    try:
        return ninja_log_entries(workdir / "src")
    except FileNotFoundError:
        return 0


def test_a_fresh_build_publishes_a_wheel_that_imports_in_a_fresh_venv(baseline):
    wheel = published_wheel(baseline)
    summary = baseline.first_summary
    assert [s["name"] for s in summary["steps"]] == STEPS
    assert all(s["status"] == "done" and s["seconds"] > 0 for s in summary["steps"])
    assert summary["wheel_sha256"] == (wheel.with_name(wheel.name + ".sha256").read_text().split()[0])
    assert summary["max_jobs"] == 2
    # The example is not vLLM: the memory plan says whose measurements it stands on.
    assert "vLLM's measured objects stand in for this source's own" in baseline.output
    assert "ninja: the stock Ninja" in baseline.output
    trace = json.loads((baseline.workdir / "logs" / summary["run_id"] / "trace.json").read_text())
    kinds = {(e["ph"], e.get("name") if e["ph"] == "C" else e.get("cat")) for e in trace["traceEvents"]}
    assert {("X", "step"), ("X", "compile"), ("C", "available memory"), ("C", "jobs running")} <= kinds
    install = next(line for line in baseline.output.splitlines() if "install with:" in line)
    line = install.split("install with: ", 1)[1]
    assert "torch==2.13.0+cpu" in line  # the torch the wheel was validated with

    # Typed as printed in a new shell: no venv active, no spark-build venv (nor uv) on PATH. pip is
    # told (by its own environment variables, not by the line) to resolve without installing: a
    # 700 MB torch install costs CI minutes; test_prebuilt.py runs a line to a finished install.
    env = {k: v for k, v in _env().items() if k != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"}
    env |= {"PIP_DRY_RUN": "1", "PIP_NO_DEPS": "1"}
    typed = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=600)
    assert typed.returncode == 0, typed.stdout + typed.stderr
    would = next(x for x in typed.stdout.splitlines() if x.startswith("Would install "))
    got = {name.replace("_", "-").lower() for name in would.split()[2:]}
    assert got == {f"spark-example-{wheel.name.split('-')[1]}", "torch-2.13.0+cpu"}, would
    venv = baseline.workdir / "vllm-venv"
    assert (venv / "bin" / "python").exists(), "the line made its venv"
    # The published wheel itself (its _C needs no torch) imports in that venv.
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", wheel]
    subprocess.run(pip, check=True, env={k: v for k, v in env.items() if k != "PIP_DRY_RUN"})
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import spark_example._C as c; print(c.compiled_archs(), c.device_count())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["12.1a", "0"]


def test_resume_of_a_finished_build_skips_every_step_and_keeps_the_wheel(baseline):
    wheel = published_wheel(baseline)
    before = wheel.stat().st_mtime_ns
    result = ok(baseline.run("--resume"))
    steps = {s["name"]: s["status"] for s in baseline.summary()["steps"]}
    assert steps.pop("preflight") == "done"
    assert set(steps.values()) == {"skipped"}
    assert wheel.stat().st_mtime_ns == before
    assert "↷ compile skipped" in result.stdout


def test_dry_run_prints_the_plan_and_changes_nothing(baseline):
    state_before = (baseline.workdir / "state.json").read_text()
    logs = baseline.workdir / "logs"
    runs_before, latest_before = sorted(logs.iterdir()), (logs / "latest").resolve()
    result = ok(baseline.run("--resume", "--dry-run"))
    assert "build plan" in result.stdout
    for step in STEPS:
        assert step in result.stdout
    assert (baseline.workdir / "state.json").read_text() == state_before
    assert sorted(logs.iterdir()) == runs_before and (logs / "latest").resolve() == latest_before


def test_kill_9_during_clone_then_resume_completes_without_redoing_venv_or_torch(
    tmp_path, upstream, torch_index, uv_cache, warm_compiler_cache
):
    # A copy of the upstream with a 3 MB file, served at 1 MB/s: the clone takes seconds.
    served = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(upstream), str(served / "example.git")], check=True)
    heavy = tmp_path / "heavy"
    subprocess.run(["git", "clone", "-q", str(served / "example.git"), str(heavy)], check=True)
    (heavy / "model-card.bin").write_bytes(__import__("os").urandom(3 << 20))
    git = ["git", "-C", str(heavy), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "add", "model-card.bin"], check=True)
    subprocess.run([*git, "commit", "-qm", "big file"], check=True)
    subprocess.run([*git, "tag", "v0.3.0"], check=True)
    subprocess.run([*git, "push", "-q", "origin", "HEAD:refs/heads/main", "v0.3.0"], check=True)

    with git_server(served, rate=1 << 20) as base_url:
        build = Build(
            tmp_path / "work", base_url + "example.git", torch_index, uv_cache, compiler_cache=warm_compiler_cache
        )
        proc = build.start("--ref", "v0.3.0")
        build.kill_when(proc, lambda: (build.workdir / "src" / ".git").exists(), signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert build.step_status("clone") == "running"
        assert build.step_status("torch") == "done"

        ok(build.run("--ref", "v0.3.0", "--resume"))
    steps = {s["name"]: s["status"] for s in build.summary()["steps"]}
    assert steps["venv"] == steps["torch"] == "skipped"
    assert steps["clone"] == steps["compile"] == steps["publish"] == "done"
    assert (build.workdir / "src" / "model-card.bin").stat().st_size == 3 << 20


def test_kill_9_during_build_deps_then_resume_keeps_the_clone(make_build, warm_compiler_cache):
    build = make_build(compiler_cache=warm_compiler_cache)
    proc = build.start()
    build.kill_when(proc, lambda: build.step_status("build-deps") == "running", signal.SIGKILL)
    proc.communicate(timeout=60)
    commit = build.state()["steps"]["clone"]["result"]["commit"]

    ok(build.run("--resume"))
    steps = {s["name"]: s["status"] for s in build.summary()["steps"]}
    assert [steps[s] for s in ("venv", "torch", "clone", "patch", "use-existing-torch")] == ["skipped"] * 5
    assert steps["build-deps"] == steps["compile"] == "done"
    assert build.state()["steps"]["clone"]["result"]["commit"] == commit


def test_kill_9_mid_compile_then_resume_builds_fewer_objects_and_the_same_wheel(make_build, baseline):
    build = make_build()
    proc = build.start()
    build.kill_when(proc, lambda: objects_finished(build.workdir) >= 3, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert build.step_status("compile") == "running"

    result = ok(build.run("--resume"))
    assert "leftover process" in result.stdout or not build_processes(build.workdir)
    resumed = build.state()["steps"]["compile"]["result"]["objects_built"]
    full = baseline.state()["steps"]["compile"]["result"]["objects_built"]
    assert 0 < resumed < full, (resumed, full)
    assert record_hashes(published_wheel(build)) == record_hashes(published_wheel(baseline))


def test_a_second_build_in_the_same_workdir_is_refused_naming_the_holder(make_build):
    build = make_build()
    lock = WorkdirLock(build.workdir)
    with lock.held():
        result = build.run()
        assert result.returncode == 2
        assert f"another build (PID {__import__('os').getpid()})" in result.stderr
        with pytest.raises(BuildLocked):
            WorkdirLock(build.workdir).acquire()


def kill_one_device_stage(workdir: Path) -> bool:
    """The kernel's OOM killer, played by a real SIGKILL of one running nvcc stage of the build.

    Only the device-code stages are candidates: ccache's preprocessor pass runs cc1plus too, and
    ccache answers a killed preprocessor by running the real compiler, so that kill is no OOM.
    """
    for candidate in psutil.process_iter(["name", "cmdline", "status"]):
        if candidate.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if candidate.info["name"] in {"cicc", "ptxas"} and str(workdir) in " ".join(candidate.info["cmdline"] or []):
            candidate.send_signal(signal.SIGKILL)
            return True
    return False


def test_ctrl_c_mid_compile_exits_130_and_the_printed_resume_completes_retrying_a_job_killed_for_memory(
    make_build,
):
    """Two interruptions of one compile, as a user meets them: Ctrl-C, then, in the resume run
    exactly as printed, a compile job killed for memory. One build shows both (each used to
    cost a full build of its own), and the resume must keep every object either run finished."""
    build = make_build()
    proc = build.start()
    build.kill_when(proc, lambda: objects_finished(build.workdir) >= 1, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert build.step_status("compile") == "interrupted"
    assert build_processes(build.workdir) == []

    # The hint is the user's own command line with --resume: run exactly as printed, it resumes.
    (hint,) = [
        line.split("continue where it stopped with: ", 1)[1] for line in out.splitlines() if "continue where" in line
    ]
    argv = shlex.split(hint)
    assert argv[0] == "invoke" and "--workdir" in argv and "--example" in argv and argv[-1] == "--resume"
    finished_before = objects_finished(build.workdir)
    resumed = subprocess.Popen(
        [sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    # Once the resumed compile has finished an object of its own, one of its jobs dies for memory.
    deadline = time.monotonic() + 300
    while not (objects_finished(build.workdir) > finished_before and kill_one_device_stage(build.workdir)):
        assert resumed.poll() is None, "the resumed build ended before a compile job could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert build.summary()["steps"][STEPS.index("compile")]["status"] == "done"
    compiled = build.state()["steps"]["compile"]["result"]
    assert compiled["oom_retries"] == 1 and compiled["max_jobs"] == 1, compiled
    assert "killed for memory; rerunning with 1 jobs" in out
    ninja_log = next((build.workdir / "src" / "build").glob("*/.ninja_log"))
    built = [line.split("\t")[3] for line in ninja_log.read_text().splitlines() if not line.startswith("#")]
    assert len(built) == len(set(built)), "no object was compiled twice, across the Ctrl-C, the resume and the retry"
