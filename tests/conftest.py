"""Shared fixtures: a real example upstream, a loopback torch index, and a way to run
`invoke build-vllm` as a user would (a real process, real signals)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import wheel_index

ROOT = Path(__file__).resolve().parent.parent


def _cuda_home() -> Path | None:
    """The CUDA toolkit the integration tests compile with: $CUDA_HOME, else /usr/local/cuda."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if candidate and (Path(candidate) / "bin" / "nvcc").is_file():
            return Path(candidate)
    return None


CUDA_HOME = _cuda_home()
needs_nvcc = pytest.mark.skipif(CUDA_HOME is None, reason="needs nvcc (CUDA_HOME or /usr/local/cuda)")
CPU_TORCH_GLOB = "torch-2.13.0+cpu-*.whl"
CPU_TORCH = "torch==2.13.0+cpu"


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uv cache for the session: torch unpacks once, later venvs hardlink it."""
    return tmp_path_factory.mktemp("uv-cache")


@pytest.fixture(scope="session")
def cpu_torch_wheel() -> Path:
    """The CPU torch wheel this machine kind ships (see /work/.library/env); CUDA torch is
    several GB and cannot be what every test installs."""
    found = sorted(Path("/opt/wheels").glob(CPU_TORCH_GLOB))
    if not found:
        pytest.fail(f"no {CPU_TORCH_GLOB} in /opt/wheels: this machine lacks the CPU torch wheel the tests use")
    return found[-1]


@pytest.fixture(scope="session")
def torch_index(tmp_path_factory: pytest.TempPathFactory, cpu_torch_wheel: Path) -> Iterator[str]:
    """A real HTTP index on 127.0.0.1 standing in for download.pytorch.org (unreachable here)."""
    with wheel_index(tmp_path_factory.mktemp("torch-index"), [cpu_torch_wheel]) as url:
        yield url


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from spark_build.upstream.example import make_example_upstream

    return make_example_upstream(tmp_path_factory.mktemp("upstreams") / "example")


@dataclass
class Build:
    """Runs `invoke build-vllm` for one workdir, with the options every test shares."""

    workdir: Path
    repo: str
    torch_index: str
    uv_cache: Path
    output: str = ""
    seconds: float = 0.0
    first_summary: dict | None = None  # the fixture's own run (later runs move logs/latest)
    compiler_cache: Path | None = None  # None: the workdir's own, empty one

    def options(self) -> dict[str, str | None]:
        """The options every test build shares: the example (its small disk and memory needs)
        from a repo the test made, its tag, CPU torch, two jobs. None marks a flag."""
        return {
            "example": None,
            "workdir": str(self.workdir),
            "logs-dir": str(self.workdir / "logs"),
            # Each test its own compiler cache: the user's shared one would turn a test's
            # compile (the one a test interrupts or times) into cache hits. A test whose subject
            # is not the compile names `warm_compiler_cache` instead.
            "cache-dir": str(self.compiler_cache or self.workdir / "compiler-cache"),
            "repo": self.repo,
            "ref": "v0.2.0",
            "arch": "12.1a",
            "jobs": "2",
            "torch-index": self.torch_index,
            "torch-packages": CPU_TORCH,
            "torch-cuda": "cpu",
            "uv-cache-dir": str(self.uv_cache),
        }

    def argv(self, *extra: str) -> list[str]:
        """`invoke build-vllm` with the shared options; an option in `extra` replaces its default."""
        given = {arg[2:] for arg in extra if arg.startswith("--")}
        shared: list[str] = []
        for key, value in self.options().items():
            if key not in given:
                shared += [f"--{key}"] if value is None else [f"--{key}", value]
        return [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-vllm", *shared, *extra]

    def env(self) -> dict[str, str]:
        """The shared options as SPARK_BUILD_* variables, for tasks that read them that way."""
        skip = {"workdir", "logs-dir"}
        settings = {
            f"SPARK_BUILD_{k.replace('-', '_').upper()}": "true" if v is None else v
            for k, v in self.options().items()
            if k not in skip
        }
        return {**_env(), **settings}

    def run(self, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*extra), capture_output=True, text=True, timeout=timeout, env=_env())

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
        )

    def state(self) -> dict:
        path = self.workdir / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"steps": {}}

    def step_status(self, step: str) -> str | None:
        return self.state()["steps"].get(step, {}).get("status")

    def summary(self) -> dict:
        return json.loads((self.workdir / "logs" / "latest" / "summary.json").read_text())

    def kill_when(self, proc: subprocess.Popen[str], ready: Callable[[], bool], sig: int, timeout: float = 300) -> None:
        """Send `sig` to the orchestrator the moment `ready()` holds (polled every 50 ms)."""
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                out, _ = proc.communicate()
                raise AssertionError(f"the build ended (exit {proc.returncode}) before the kill point:\n{out}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.communicate()
                raise AssertionError("the kill point never came")
            time.sleep(0.05)
        os.kill(proc.pid, sig)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CUDA_HOME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture
def make_build(tmp_path: Path, upstream: Path, torch_index: str, uv_cache: Path) -> Callable[..., Build]:
    def make(name: str = "work", repo: str | None = None, compiler_cache: Path | None = None) -> Build:
        return Build(tmp_path / name, repo or str(upstream), torch_index, uv_cache, compiler_cache=compiler_cache)

    return make


@pytest.fixture(scope="session")
def baseline(tmp_path_factory: pytest.TempPathFactory, upstream: Path, torch_index: str, uv_cache: Path) -> Build:
    """One uninterrupted build of the example: the reference resumed builds are compared with,
    and the finished workdir that bad-input tests must leave intact."""
    build = Build(tmp_path_factory.mktemp("baseline") / "work", str(upstream), torch_index, uv_cache)
    started = time.monotonic()
    build.output = ok(build.run()).stdout
    build.seconds = time.monotonic() - started
    build.first_summary = build.summary()
    return build


@pytest.fixture(scope="session")
def warm_compiler_cache(baseline: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the baseline's ccache, for builds whose subject is not the compile (a kill
    before it, another torch): every object is a hit, as in a user's second workdir, which
    takes about as many seconds off each such build as the compile took. The copy keeps the
    baseline's own statistics untouched."""
    warm = tmp_path_factory.mktemp("warm-compiler-cache") / "ccache"
    shutil.copytree(baseline.workdir / "compiler-cache", warm)
    return warm


def published_wheel(build: Build) -> Path:
    wheels = list((build.workdir / "wheelhouse" / "spark-example").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result
