"""Every test in this folder runs real processes (git, uv, CMake, nvcc, Redis, loopback HTTP),
so every one is marked `integration`: `pytest -m "not integration"` leaves the folder out."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from spark_build.compile import ninjabuild
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
