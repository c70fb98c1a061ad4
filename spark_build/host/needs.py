"""What one build needs of the host: memory for its heaviest compile job, disk for its trees.

Numbers of their own, apart from the rules that compare them with the host, because they are
measurements and estimates to be replaced as better ones come in (the compile profile, a `du`
of a finished Spark build), and both preflight and `invoke doctor` pick one set per upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spark_build.sizes import GIB

# --- Memory -------------------------------------------------------------------------------
# A build at MAX_JOBS=1 still compiles its heaviest object. The heaviest measured for vLLM
# 0.13.0 at 12.1a is csrc/quantization/fp4/nvfp4_scaled_mm_sm120_kernels.cu at 9,138 MB peak
# RSS (../shared/data/vllm-0.13.0-sm121a-compile-profile.json; median object 2.6 GB). On the
# Spark the GPU draws on the same memory, so a reserve for the OS, the build's own Python,
# CMake and ninja, and whatever else runs is kept on top.
HEAVIEST_JOB_PEAK_BYTES = 9_138 * 1024**2
MEMORY_RESERVE_BYTES = 2 * GIB
ONE_JOB_MIN_AVAILABLE_BYTES = HEAVIEST_JOB_PEAK_BYTES + MEMORY_RESERVE_BYTES

# --- Disk ---------------------------------------------------------------------------------
# An estimate, not a measurement: only the sdist (17.8 MB, 51 MB unpacked) and the object
# count (~390, of which 93 were profiled) were measured; the sizes below are rounded up from
# typical cu130 installs and CUTLASS-heavy object files and should be replaced by `du` of a
# finished Spark build. (item, GiB, where it lives)
DISK_BUDGET: tuple[tuple[str, float, Literal["workdir", "cache"]], ...] = (
    ("vLLM checkout (shallow clone; sdist unpacks to 51 MB)", 0.5, "workdir"),
    ("build venv: torch cu130 + CUDA 13 wheels + build deps", 6.0, "workdir"),
    ("validate venv: a second torch + the wheel", 6.0, "workdir"),
    ("CMake build tree: ~390 objects for one arch + linked .so", 3.0, "workdir"),
    ("CMake-fetched sources: CUTLASS, vllm-flash-attn, FlashMLA, qutlass, triton_kernels", 2.0, "workdir"),
    ("wheel in dist/ and its copy in the wheelhouse", 1.0, "workdir"),
    ("uv cache (unpacked torch and CUDA wheels)", 6.0, "cache"),
    ("compiler cache: a copy of every object", 3.0, "cache"),
    ("source cache for the sources step (git mirrors)", 2.0, "cache"),
    ("small model for the serve check", 1.0, "cache"),
)
WORKDIR_DISK_NEED_BYTES = int(sum(gib for _, gib, where in DISK_BUDGET if where == "workdir") * GIB)
CACHE_DISK_NEED_BYTES = int(sum(gib for _, gib, where in DISK_BUDGET if where == "cache") * GIB)
BUILD_DISK_NEED_BYTES = WORKDIR_DISK_NEED_BYTES + CACHE_DISK_NEED_BYTES  # ~30.5 GiB


@dataclass(frozen=True)
class BuildNeeds:
    """What one build needs of the host; vLLM's by default, far less for the built-in example."""

    workdir_bytes: int
    cache_bytes: int
    one_job_bytes: int
    heaviest_job_bytes: int


VLLM_NEEDS = BuildNeeds(
    WORKDIR_DISK_NEED_BYTES, CACHE_DISK_NEED_BYTES, ONE_JOB_MIN_AVAILABLE_BYTES, HEAVIEST_JOB_PEAK_BYTES
)
# The example upstream: a CPU torch venv twice (~0.8 GB each), a build tree of a dozen small
# objects, one wheel; its nvcc units include no torch headers and stay far below vLLM's (an estimate).
EXAMPLE_NEEDS = BuildNeeds(int(3 * GIB), int(1 * GIB), MEMORY_RESERVE_BYTES // 2, GIB // 2)
