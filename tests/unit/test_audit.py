"""The wheel audits' pure half: what cuobjdump prints (recorded from cuobjdump 13.5), parsed;
where cuobjdump is found; and the usage errors raised before any work. The audits of real
libraries are in tests/integration/test_audit.py.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from rich.console import Console

from spark_build.arch.compat import ComputeCapability, Verdict
from spark_build.errors import HostProblem, UsageError
from spark_build.wheel.archaudit import (
    ArchReport,
    ExtensionArch,
    FamilyArch,
    arch_audit,
    cuobjdump_candidates,
    find_cuobjdump,
    parse_fatbin_dump,
    parse_listing,
)
from spark_build.wheel.dispatch import VLLM_DISPATCH, dispatch_of
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


def _starts(path: Path) -> str | None:
    return None


def test_cuobjdump_in_cuda_home_wins_over_path_and_venv(tmp_path: Path) -> None:
    in_cuda = _executable(tmp_path / "cuda" / "bin" / "cuobjdump")
    _executable(tmp_path / "elsewhere" / "cuobjdump")
    env = {"PATH": str(tmp_path / "elsewhere")}
    assert find_cuobjdump(tmp_path / "cuda", env, cannot_start=_starts) == in_cuda


def test_cuobjdump_on_path_is_used_when_cuda_home_lacks_it(tmp_path: Path) -> None:
    on_path = _executable(tmp_path / "elsewhere" / "cuobjdump")
    (tmp_path / "cuda" / "bin").mkdir(parents=True)
    assert find_cuobjdump(tmp_path / "cuda", {"PATH": str(on_path.parent)}, cannot_start=_starts) == on_path


def _packaged_cuobjdump(tmp_path: Path) -> tuple[Path, Path]:
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    binary = _executable(site / "nvidia" / "cu13" / "bin" / "cuobjdump")
    dist_info = site / "nvidia_cuda_cuobjdump-13.0.85.dist-info"
    dist_info.mkdir()
    (dist_info / "RECORD").write_text("nvidia/cu13/bin/cuobjdump,sha256=x,1\n")
    return binary, _executable(tmp_path / "venv" / "bin" / "python")


def test_cuobjdump_from_the_pypi_package_is_found_through_its_record(tmp_path: Path) -> None:
    binary, python = _packaged_cuobjdump(tmp_path)
    assert find_cuobjdump(None, {"PATH": ""}, python, cannot_start=_starts) == binary


def test_each_cuobjdump_is_tried_once_and_the_first_that_starts_wins(tmp_path: Path) -> None:
    """The package's 13.5.37 aarch64 binary needs glibc 2.38: a toolkit one that starts is taken
    before it, and one that does not start is passed over for the next."""
    in_cuda = _executable(tmp_path / "cuda" / "bin" / "cuobjdump")
    packaged, python = _packaged_cuobjdump(tmp_path)
    tried: list[Path] = []

    def toolkit_broken(path: Path) -> str | None:
        tried.append(path)
        return "version `GLIBC_2.38' not found" if path == in_cuda else None

    assert cuobjdump_candidates(tmp_path / "cuda", {"PATH": str(in_cuda.parent)}, python) == [in_cuda, packaged]
    assert find_cuobjdump(tmp_path / "cuda", {"PATH": ""}, python, cannot_start=toolkit_broken) == packaged
    assert tried == [in_cuda, packaged]


def test_no_cuobjdump_that_starts_is_a_host_problem_naming_each_and_the_loader_s_message(tmp_path: Path) -> None:
    packaged, python = _packaged_cuobjdump(tmp_path)
    glibc = f"{packaged}: /lib/aarch64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found (required by {packaged})"
    with pytest.raises(HostProblem) as err:
        find_cuobjdump(None, {"PATH": ""}, python, cannot_start=lambda path: glibc)
    assert err.value.exit_code == 1
    assert err.value.message == f"cuobjdump cannot start here: {packaged}: {glibc}"
    assert "CUDA 13 toolkit" in (err.value.hint or "") and "nvidia-cuda-cuobjdump" in (err.value.hint or "")


def test_missing_cuobjdump_is_a_host_problem_that_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(HostProblem) as err:
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


# --------------------------------------------------------------------------------------------
# Which extensions a GPU ever runs (vLLM 0.33.0's dispatch), and a host without the driver


@pytest.mark.parametrize(
    ("extension", "gpu", "used"),
    [
        ("vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "12.1", False),  # FA3: Hopper only
        ("vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "9.0", True),
        ("vllm/_flashmla_C.abi3.so", "12.1", False),  # FlashMLA: 9.x and 10.x
        ("vllm/_flashmla_extension_C.abi3.so", "10.3", True),
        ("vllm/_deepselect_C.abi3.so", "12.1", False),  # DeepSelect: 10.x
        ("vllm/_deepselect_C.abi3.so", "10.0", True),
        ("vllm/_qutlass_C.abi3.so", "12.1", True),  # FP-Quant: every GPU from 10.0 on
        ("vllm/_qutlass_C.abi3.so", "9.0", False),
    ],
    ids=lambda v: str(v),
)
def test_vllm_dispatches_each_gated_extension_only_to_its_gpus(extension: str, gpu: str, used: bool) -> None:
    row = dispatch_of(extension, VLLM_DISPATCH)
    assert row is not None and row.used_on(ComputeCapability.parse(gpu)) is used


def test_an_extension_the_table_does_not_know_is_taken_as_used_everywhere() -> None:
    assert dispatch_of("vllm/_C_stable_libtorch.abi3.so", VLLM_DISPATCH) is None
    assert dispatch_of("pkg/_vllm_fa3_C.abi3.so", VLLM_DISPATCH) is None, "another project's file of that name"


def _family(extension: str, codes: tuple[str, ...], verdict: Verdict, unused: str | None = None) -> FamilyArch:
    module = extension.rsplit("/", 1)[-1].split(".")[0]
    return FamilyArch(module, extension, codes, verdict, 1, (), unused)


def test_families_the_target_never_uses_are_listed_apart_and_do_not_set_the_verdict() -> None:
    fa3 = _family("vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", ("sm_90a",), Verdict.CANNOT_RUN, "9.x only (…)")
    fa2 = _family("vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", ("compute_80", "sm_80"), Verdict.JIT)
    core = _family("vllm/_C_stable_libtorch.abi3.so", ("sm_120f",), Verdict.NATIVE)
    extensions = tuple(ExtensionArch(f.extension, f.codes, (), f.verdict) for f in (fa3, fa2, core))
    report = ArchReport("vllm.whl", SPARK, extensions, (fa3, fa2, core))
    assert report.unused == (fa3,) and report.used == (fa2, core)
    assert report.verdict is Verdict.JIT, "FA2 on a 12.1 runs only through PTX JIT; FA3 does not count"
    buffer = io.StringIO()
    report.render(Console(file=buffer, width=200, color_system=None))
    table, apart = buffer.getvalue().split("Not used on 12.1")
    assert "PTX JIT only" in table and "native SASS" in table and "_vllm_fa3_C" not in table
    assert "_vllm_fa3_C" in apart and "9.x only" in apart
    assert report.to_dict()["families"][0]["used"] is False


# A real ELF file (1.5 kB), made with `gcc -shared -fPIC -nostdlib -Wl,--no-as-needed -l:libcuda.so.1`
# against a stub libcuda and stripped: NEEDED names only the driver's libcuda.so.1.
NEEDS_DRIVER = Path(__file__).parent.parent / "data" / "needs-driver"


def test_a_missing_driver_library_is_not_a_linkage_problem_of_the_wheel() -> None:
    report = linkage_audit(NEEDS_DRIVER, LibrarySearch(ld_cache=None, default_dirs=()), cuda_major=13)
    (lib,) = report.libraries
    assert (lib.library, lib.resolved, lib.problem) == ("libcuda.so.1", None, None)
    assert report.ok and report.needs_driver == ("pkg/_C.abi3.so",)
