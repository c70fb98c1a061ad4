"""Every test in this folder runs real processes (git, uv, CMake, nvcc, Redis, loopback HTTP),
so every one is marked `integration`: `pytest -m "not integration"` leaves the folder out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import git
import pytest

from spark_build.compile import ninjabuild
from tests.artifacts import vllm_sdist
from tests.servers import OfficialHost, official_server

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def scheduling_ninja(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The duration-weighted Ninja, built once per test session from the package index's
    ninja 1.13.2 source distribution (real pip download, real C++ bootstrap)."""
    folder = tmp_path_factory.mktemp("ninja-sdist")
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*download, "-d", str(folder), ninjabuild.NINJA_REQUIREMENT], check=True)
    sdist = ninjabuild.find_sdist(folder)
    assert sdist is not None, f"pip download left no ninja-{ninjabuild.NINJA_VERSION}.tar.gz"

    def run(argv: Sequence[str | os.PathLike[str]], cwd: Path) -> None:
        subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)

    dest = ninjabuild.cached_binary(tmp_path_factory.mktemp("machine-cache"))
    return ninjabuild.build_from_sdist(sdist, dest, Path(sys.executable), run)


@pytest.fixture
def official_host() -> Iterator[OfficialHost]:
    """The stand-in for PyPI and GitHub where vLLM publishes its official wheels."""
    with official_server() as host:
        yield host


# The CUDA 13 torch (5.5 GB) installs from this machine's disk in about a minute; the venv is
# kept between runs at this path (override with SPARK_BUILD_TEST_CU130_VENV) so a rerun is instant.
CU130_VENV = Path(os.environ.get("SPARK_BUILD_TEST_CU130_VENV", "/tmp/spark-build-cu130-venv"))

# torch, and what vLLM 0.13.0's setup.py imports (the arch plan asks it which targets it builds).
CU130_PACKAGES = [
    "torch==2.14.1",
    "cmake>=3.26.1",
    "ninja",
    "nvidia-cutlass==4.2.0",
    "packaging>=24.2",
    "setuptools>=77.0.3,<81.0.0",
    "setuptools-scm>=8",
    "wheel",
    "jinja2>=3.1.6",
    "regex",
]


@pytest.fixture(scope="session")
def cu130_venv() -> Path:
    """A venv with the CUDA 13.0 torch, cmake ≥ 3.26 and the nvidia-cutlass headers."""
    ready = CU130_VENV / ".spark-build-test-ready"
    wanted = "\n".join(CU130_PACKAGES)
    if ready.is_file() and ready.read_text() == wanted and (CU130_VENV / "bin" / "python").exists():
        return CU130_VENV
    shutil.rmtree(CU130_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", CU130_VENV], check=True)
    install = [CU130_VENV / "bin" / "python", "-m", "pip", "install", "-q", *CU130_PACKAGES]
    subprocess.run(install, check=True)
    probe = subprocess.run(
        [CU130_VENV / "bin" / "python", "-c", "import torch; print(torch.version.cuda)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip().startswith("13."), f"torch is built for CUDA {probe.stdout.strip()}, not 13.x"
    ready.write_text(wanted)
    return CU130_VENV


@pytest.fixture(scope="session")
def vllm_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """vLLM 0.13.0's sdist as a git repository tagged v0.13.0, as the clone step leaves it; made
    once for the session (≈ 15 s of unpacking and committing 150 MB), since the tests that
    configure it either clone it or only ever change its work tree, never its commits."""
    sdist = vllm_sdist("0.13.0")
    root = tmp_path_factory.mktemp("vllm")
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    source = root / "vllm-0.13.0"
    repo = git.Repo.init(source, initial_branch="main")
    repo.git.add("-A", "-f")
    with repo.config_writer() as config:
        config.set_value("user", "name", "spark-build tests")
        config.set_value("user", "email", "tests@spark-build.invalid")
    repo.index.commit("vLLM 0.13.0 sdist")
    repo.create_tag("v0.13.0")
    yield source
    shutil.rmtree(root, ignore_errors=True)  # ~150 MB with its git objects; pytest keeps tmp dirs


def triton_stand_in(root: Path) -> Path:
    """Triton itself is not mirrored; vLLM only copies the .py files of its triton_kernels."""
    repo = git.Repo.init(root, initial_branch="main")
    package = root / "python" / "triton_kernels" / "triton_kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# stand-in for Triton v3.5.0's triton_kernels\n")
    repo.index.add([str(package / "__init__.py")])
    repo.index.commit("triton_kernels stand-in")
    repo.create_tag("v3.5.0")
    return root
