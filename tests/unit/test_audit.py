"""The wheel audits' pure half: what cuobjdump prints (recorded from cuobjdump 13.5), parsed;
where cuobjdump is found; and the usage errors raised before any work. The audits of real
libraries are in tests/integration/test_audit.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spark_build.arch.compat import ComputeCapability
from spark_build.errors import UsageError
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump, parse_fatbin_dump, parse_listing
from spark_build.wheel.linkage import LibrarySearch, cuda_major_of, linkage_audit

SPARK = ComputeCapability(12, 1)

CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))


# --------------------------------------------------------------------------------------------
# Parsing what cuobjdump prints (recorded from cuobjdump 13.5 on libraries nvcc 13.0 built)

LIST_ELF = """\
ELF file    1: mix.1.sm_120a.cubin
ELF file    2: mix.2.sm_120.cubin
"""

LIST_PTX = "PTX file    1: mix.1.sm_120a.ptx\nPTX file    2: mix.2.sm_80.ptx\n"

SYMBOLS_AND_PTX = """
Fatbin elf code:
================
arch = sm_120a
code version = [1,8]
host = linux
compile_size = 64bit

symbols:
OBJECT        WEAK    DEFAULT    -                                 U  .nv.reservedSmem.offset0
FUNC          GLOBAL  DEFAULT    ENTRY                                _Z15fp4_gemm_kernelPff

Fatbin elf code:
================
arch = sm_120f
code version = [1,8]
host = linux
compile_size = 64bit

symbols:
FUNC          GLOBAL  DEFAULT    ENTRY                                _Z16moe_align_kernelPff

Fatbin ptx code:
================
arch = sm_80
code version = [9,0]
host = linux
compile_size = 64bit
compressed
ptxasOptions =

.version 9.0
.target sm_80
.address_size 64
.visible .entry _Z15fp4_gemm_kernelPff(
.param .u64 _Z15fp4_gemm_kernelPff_param_0,
)
"""


def test_listing_names_cubins_and_ptx_by_arch_and_ptx_becomes_a_compute_code() -> None:
    assert [c.name for c in parse_listing(LIST_ELF.splitlines())] == ["sm_120a", "sm_120"]
    assert [c.name for c in parse_listing(LIST_PTX.splitlines())] == ["compute_120a", "compute_80"]


def test_fatbin_dump_keeps_the_family_suffix_that_the_listing_drops_and_names_kernels() -> None:
    images = parse_fatbin_dump(SYMBOLS_AND_PTX.splitlines())
    assert [(i.code.name, i.kernels) for i in images] == [
        ("sm_120a", ("_Z15fp4_gemm_kernelPff",)),
        ("sm_120f", ("_Z16moe_align_kernelPff",)),
        ("compute_80", ("_Z15fp4_gemm_kernelPff",)),
    ]


@pytest.mark.parametrize(
    ("soname", "major"),
    [
        ("libcudart.so.12", 12),
        ("libcublas.so.13", 13),
        ("libcublasLt.so.12", 12),
        ("libnvrtc-builtins.so.13.0", 13),
        ("libnvJitLink.so.13", 13),
        ("libcufft.so.11", None),  # cuFFT numbers its soname on its own
        ("libcudnn.so.9", None),
        ("libnccl.so.2", None),
        ("libcuda.so.1", None),  # the driver, not the toolkit
        ("libcudart.so", None),
    ],
    ids=lambda v: str(v),
)
def test_cuda_major_is_read_only_from_sonames_that_track_the_toolkit(soname: str, major: int | None) -> None:
    assert cuda_major_of(soname) == major


# --------------------------------------------------------------------------------------------
# Finding cuobjdump


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_cuobjdump_in_cuda_home_wins_over_path_and_venv(tmp_path: Path) -> None:
    in_cuda = _executable(tmp_path / "cuda" / "bin" / "cuobjdump")
    _executable(tmp_path / "elsewhere" / "cuobjdump")
    env = {"PATH": str(tmp_path / "elsewhere")}
    assert find_cuobjdump(tmp_path / "cuda", env) == in_cuda


def test_cuobjdump_on_path_is_used_when_cuda_home_lacks_it(tmp_path: Path) -> None:
    on_path = _executable(tmp_path / "elsewhere" / "cuobjdump")
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    assert find_cuobjdump(tmp_path / "cuda", {"PATH": str(on_path.parent)}) == on_path


def test_cuobjdump_from_the_pypi_package_is_found_through_its_record(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    binary = _executable(site / "nvidia" / "cu13" / "bin" / "cuobjdump")
    dist_info = site / "nvidia_cuda_cuobjdump-13.0.85.dist-info"
    dist_info.mkdir()
    (dist_info / "RECORD").write_text("nvidia/cu13/bin/cuobjdump,sha256=x,1\n")
    python = _executable(tmp_path / "venv" / "bin" / "python")
    assert find_cuobjdump(None, {"PATH": ""}, python) == binary


def test_missing_cuobjdump_is_a_usage_error_that_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        find_cuobjdump(tmp_path, {"PATH": ""}, tmp_path)
    assert "nvidia-cuda-cuobjdump" in (err.value.hint or "")


def test_a_promised_code_with_a_bad_name_is_rejected_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="12.0f"):
        arch_audit(tmp_path, SPARK, Path("/nonexistent/cuobjdump"), promised={"_C": ["12.0f"]})


def test_a_file_that_is_neither_wheel_nor_directory_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "vllm.tar.gz"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="neither a directory nor a wheel"):
        linkage_audit(bogus, LibrarySearch(), cuda_major=13)
