"""Build script for spark_example, shaped like vLLM 0.13.0's setup.py.

spark-build drives vLLM through this interface, and its tests drive this
project through the same one: `import torch` at build time (so the build runs
with --no-build-isolation in a venv that has torch), a CMake extension built
with Ninja in setuptools' build_temp, and the environment knobs MAX_JOBS,
NVCC_THREADS, TORCH_CUDA_ARCH_LIST, CMAKE_BUILD_TYPE and CUDA_HOME.

build_temp is build/temp.<platform>-<python> inside the source tree, so it
survives an interrupted build: the next run re-configures and Ninja rebuilds
only the objects it had not finished.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from shutil import which

import torch
from packaging.version import Version
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from torch.utils.cpp_extension import CUDA_HOME

VERSION = "0.1.0"


def log(message: str) -> None:
    print(f"spark_example setup: {message}", file=sys.stderr, flush=True)


def cuda_home() -> str:
    """The CUDA toolkit to build with: env CUDA_HOME, else torch's guess, else nvcc on PATH.

    torch.utils.cpp_extension.CUDA_HOME (what vLLM uses) is None under a CPU
    torch, and spark-build's tests build this project against CPU torch.
    """
    nvcc = which("nvcc")
    for candidate in (
        os.environ.get("CUDA_HOME"),
        CUDA_HOME,
        os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None,
        "/usr/local/cuda",
    ):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    raise RuntimeError("no CUDA toolkit found; set CUDA_HOME=/usr/local/cuda (the directory holding bin/nvcc)")


def get_nvcc_cuda_version() -> Version:
    """The CUDA release of $CUDA_HOME/bin/nvcc, e.g. 13.0 from '... release 13.0, V13.0.88'."""
    output = subprocess.check_output([os.path.join(cuda_home(), "bin", "nvcc"), "--version"], text=True)
    match = re.search(r"release (\d+\.\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the CUDA release from nvcc --version:\n{output}")
    return Version(match.group(1))


def get_version() -> str:
    """The version plus a local label saying what it was built with, vLLM-style: 0.1.0+cu130."""
    cuda = get_nvcc_cuda_version()
    return f"{VERSION}+cu{cuda.major}{cuda.minor}"


def compute_num_jobs() -> tuple[int, int]:
    """(compile jobs, nvcc threads per job): MAX_JOBS or the usable cores, divided by NVCC_THREADS."""
    max_jobs = os.environ.get("MAX_JOBS")
    num_jobs = int(max_jobs) if max_jobs else len(os.sched_getaffinity(0))
    nvcc_threads = int(os.environ.get("NVCC_THREADS") or 1)
    return max(1, num_jobs // nvcc_threads), nvcc_threads


class CMakeExtension(Extension):
    def __init__(self, name: str, cmake_lists_dir: str = ".") -> None:
        super().__init__(name, sources=[], py_limited_api=True)
        self.cmake_lists_dir = os.path.abspath(cmake_lists_dir)


class cmake_build_ext(build_ext):
    # CMake directories configured by this process (one configure per CMakeLists.txt).
    did_config: dict[str, bool] = {}

    def configure(self, ext: CMakeExtension) -> None:
        if ext.cmake_lists_dir in cmake_build_ext.did_config:
            return
        cmake_build_ext.did_config[ext.cmake_lists_dir] = True

        build_type = os.environ.get("CMAKE_BUILD_TYPE") or "Release"
        num_jobs, nvcc_threads = compute_num_jobs()
        log(
            f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), {num_jobs} jobs x "
            f"{nvcc_threads} nvcc threads, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}, "
            f"{build_type}"
        )

        # TORCH_CUDA_ARCH_LIST reaches CMake through the environment, as it
        # reaches vLLM's CMake through torch's: CMakeLists.txt translates it, so
        # a bare `cmake` configure (spark-build's arch plan) sees the same archs.
        cmake_args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DCMAKE_CUDA_COMPILER={os.path.join(cuda_home(), 'bin', 'nvcc')}",
            # The exact interpreter, so CMake finds this venv's Python and not another.
            f"-DSPARK_EXAMPLE_PYTHON_EXECUTABLE={sys.executable}",
            f"-DNVCC_THREADS={nvcc_threads}",
        ]
        if os.environ.get("VERBOSE"):
            cmake_args.append("-DCMAKE_VERBOSE_MAKEFILE=ON")
        # As vLLM: sccache first, unless VLLM_DISABLE_SCCACHE=1 (then ccache if present).
        use_sccache = which("sccache") and os.getenv("VLLM_DISABLE_SCCACHE", "0") == "0"
        launcher = use_sccache and "sccache" or which("ccache") and "ccache"
        if launcher:
            cmake_args += [
                f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}",
                f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
                f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher}",
            ]
        if which("ninja") is None:
            raise RuntimeError("ninja not found on PATH; it is a build requirement (requirements/build.txt)")
        # The job pool caps compiles without changing any compile command, so a
        # rerun with another MAX_JOBS still reuses every finished object.  (Not
        # so NVCC_THREADS: it is an nvcc flag, and changing it recompiles all.)
        cmake_args += [
            "-G",
            "Ninja",
            "-DCMAKE_JOB_POOL_COMPILE:STRING=compile",
            f"-DCMAKE_JOB_POOLS:STRING=compile={num_jobs}",
        ]
        # As vLLM: extra CMake arguments from the environment, last, so they win.
        cmake_args += os.environ.get("CMAKE_ARGS", "").split()
        subprocess.check_call(["cmake", ext.cmake_lists_dir, *cmake_args], cwd=self.build_temp)

    def build_extensions(self) -> None:
        if which("cmake") is None:
            raise RuntimeError("cmake not found on PATH; it is a build requirement (requirements/build.txt)")
        os.makedirs(self.build_temp, exist_ok=True)

        targets = []
        for ext in self.extensions:
            assert isinstance(ext, CMakeExtension)
            self.configure(ext)
            targets.append(ext.name.removeprefix("spark_example."))

        num_jobs, _ = compute_num_jobs()
        build_args = ["--build", ".", "-j", str(num_jobs), *[f"--target={t}" for t in targets]]
        subprocess.check_call(["cmake", *build_args], cwd=self.build_temp)

        # Install each module where setuptools expects the built extension.
        for ext, target in zip(self.extensions, targets, strict=True):
            outdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
            prefix = outdir.parents[ext.name.count(".") - 1]
            install_args = ["--install", ".", "--prefix", str(prefix), "--component", target]
            subprocess.check_call(["cmake", *install_args], cwd=self.build_temp)


setup(
    version=get_version(),
    packages=find_packages(include=["spark_example"]),
    ext_modules=[CMakeExtension(name="spark_example._C")],
    cmdclass={"build_ext": cmake_build_ext},
    # One abi3 wheel for every CPython >= 3.8 (vLLM's wheels are cp38-abi3 too).
    options={"bdist_wheel": {"py_limited_api": "cp38"}},
)
