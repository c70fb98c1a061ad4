"""The FA3 gate on the real vLLM 0.33.0 and 0.34.0 sdists: the patches the product picks for
the release (`find_series`: for 0.34.0, newer than the series was tested on, the FA3 gate beyond
its tested range), applied with `git apply` as the patch step applies them, then setup.py asked
which extensions it builds, through the arch plan's own probe (`setup_extensions`), for a 12.x
arch list and for lists that may ask for Hopper.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from spark_build.arch.cmake_configure import setup_extensions
from spark_build.proc import Runner
from spark_build.upstream.patches import find_series
from spark_build.upstream.recipe import recipe_for
from tests.artifacts import vllm_sdist
from tests.conftest import ROOT

CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))

FA3_PATCH = "0006-build-fa3-only-for-9.x-archs-0.17.patch"

# vLLM 0.33.0's setup.py (and tools/build_rust.py, which it loads) import setuptools_rust for
# its Rust frontend; the CUDA test venv has no setuptools-rust, and asking setup.py for its
# extensions builds nothing, so a stand-in with the names they import is put on PYTHONPATH.
_SETUPTOOLS_RUST_STAND_IN = {
    "__init__.py": """import enum


class Binding(enum.Enum):
    PyO3 = 0
    PyO3Bin = 1
    NoBinding = 2
    Exec = 3


class RustExtension:
    def __init__(self, target, path="Cargo.toml", binding=Binding.PyO3, **kwargs):
        self.target, self.path, self.binding = target, path, binding
""",
    "build.py": """from setuptools import Command


class build_rust(Command):
    user_options = []

    def initialize_options(self):
        pass

    def finalize_options(self):
        pass

    def run(self):
        pass
""",
}


def _run(argv: Sequence[str | Path], cwd: Path) -> None:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        command = " ".join(map(str, argv))
        pytest.fail(f"{command} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


@dataclass
class Fa3Source:
    source: Path  # the sdist tree with the series applied
    venv: Path
    stand_in: Path
    logs: Path
    applied: list[str]
    pristine: frozenset[str]  # what the pristine setup.py builds for 12.1a
    pristine_log: Path


def _extensions(fa3: Fa3Source, arch: str, name: str) -> tuple[frozenset[str], str]:
    """The CMake targets setup.py builds for `arch`, and the probe's log."""
    log = fa3.logs / f"{name}.log"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(fa3.stand_in))
        env.delenv("VLLM_USE_PRECOMPILED", raising=False)
        built = setup_extensions(fa3.source, fa3.venv, arch, cuda_home=CUDA_HOME, runner=Runner(), log=log)
    text = log.read_text(errors="replace") if log.is_file() else ""
    assert built is not None, f"setup.py could not be asked for its extensions ({arch}):\n{text[-3000:]}"
    return built, text


@pytest.fixture(scope="module", params=["0.33.0", "0.34.0"])
def fa3(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cu130_venv: Path
) -> Iterator[Fa3Source]:
    """The release's sdist as the clone step leaves it, asked once pristine, then patched."""
    version = str(request.param)
    sdist = vllm_sdist(version)
    root = tmp_path_factory.mktemp("fa3")
    stand_in = root / "stand-in"
    (stand_in / "setuptools_rust").mkdir(parents=True)
    for name, text in _SETUPTOOLS_RUST_STAND_IN.items():
        (stand_in / "setuptools_rust" / name).write_text(text)
    with tarfile.open(sdist) as tar:
        tar.extractall(root, filter="data")
    source = root / f"vllm-{version}"
    git = ["git", "-c", "user.name=spark-build tests", "-c", "user.email=tests@spark-build.invalid"]
    _run([*git, "init", "-q", "-b", "main"], source)
    _run([*git, "add", "-A", "-f"], source)
    _run([*git, "commit", "-q", "-m", f"vLLM {version} sdist"], source)
    logs = root / "logs"
    logs.mkdir()
    fa3 = Fa3Source(source, cu130_venv, stand_in, logs, [], frozenset(), logs / "pristine-12.1a.log")
    fa3.pristine, _ = _extensions(fa3, "12.1a", "pristine-12.1a")

    recipe = recipe_for(source, f"v{version}")
    series = find_series(ROOT / "patches", recipe.dist, recipe.version)
    assert series is not None, f"no patch series for {recipe.dist}"
    for patch in series.to_try():
        _run(["git", "-C", source, "apply", "--check", patch.path], source)
        _run(["git", "-C", source, "apply", patch.path], source)
        _run(["git", "-C", source, "apply", "--reverse", "--check", patch.path], source)  # how the patch step sees it
        fa3.applied.append(patch.name)
    yield fa3
    shutil.rmtree(root, ignore_errors=True)  # ~300 MB with its git objects; pytest keeps tmp dirs


def test_pristine_vllm_builds_fa3_for_12_1a_although_fa3_has_only_9_0a_kernels(fa3: Fa3Source) -> None:
    assert {"_vllm_fa2_C", "_vllm_fa3_C", "_C_stable_libtorch"} <= fa3.pristine


def test_the_series_for_0_33_and_0_34_is_the_fa3_gate_and_it_applies_then_reverse_applies(fa3: Fa3Source) -> None:
    assert fa3.applied == [FA3_PATCH]


def test_patched_vllm_builds_no_fa3_for_12_1a_says_why_and_builds_everything_else(fa3: Fa3Source) -> None:
    built, log = _extensions(fa3, "12.1a", "patched-12.1a")
    assert "_vllm_fa3_C" not in built and "_vllm_fa2_C" in built
    assert built == fa3.pristine - {"_vllm_fa3_C"}
    assert "Not building _vllm_fa3_C: TORCH_CUDA_ARCH_LIST=12.1a has no 9.x arch." in log


@pytest.mark.parametrize("arch", ["9.0a;12.1a", "Hopper"], ids=["a 9.x arch in the list", "a named entry"])
def test_patched_vllm_still_builds_fa3_when_the_arch_list_may_ask_for_hopper(fa3: Fa3Source, arch: str) -> None:
    built, log = _extensions(fa3, arch, f"patched-{arch.replace(';', '_')}")
    assert {"_vllm_fa2_C", "_vllm_fa3_C"} <= built
    assert built == fa3.pristine
    assert "Not building _vllm_fa3_C" not in log
