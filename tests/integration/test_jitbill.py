"""The JIT bill of a real wheel: nvcc builds a vLLM-like wheel here — `_C` with a native
`sm_121a` kernel beside an `sm_80` + PTX Marlin-named kernel, and a PTX-only `_vllm_fa2_C` —
then the real cuobjdump reads it through the arch audit and `wheel_jit_bill`, as the validate
step does, and the tables it prints are checked, and that each extension's PTX is dumped once.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from rich.console import Console

from spark_build.arch.compat import Verdict
from spark_build.arch.jitcost import MB, JitRate
from spark_build.wheel.archaudit import arch_audit, find_cuobjdump
from spark_build.wheel.dispatch import VLLM_DISPATCH
from spark_build.wheel.jitbill import wheel_jit_bill
from tests.unit.test_audit import CUDA_HOME, SPARK

NVCC = CUDA_HOME / "bin" / "nvcc"
RATE = JitRate(4.0, "test rate")

# Enough PTX (an unrolled loop) that the bill is not all header; names as vLLM's kernels mangle.
KERNEL = """
namespace {namespace} {{
__global__ void {name}(float* x, int n) {{
  float acc = 0.f;
  #pragma unroll 8
  for (int i = 0; i < 32; ++i) acc += x[(threadIdx.x + i * 7) % n] * (i + 1);
  x[threadIdx.x] = acc;
}}
}}
"""


def _nvcc(*argv: str | Path, cwd: Path) -> None:
    result = subprocess.run([str(NVCC), *map(str, argv)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel, and the PTX nvcc writes for the FA2 source (to check the bill's size against)."""
    if not os.access(NVCC, os.X_OK):
        pytest.skip(f"needs nvcc at {NVCC}")
    work = tmp_path_factory.mktemp("jitbill")
    (work / "fa2.cu").write_text(KERNEL.format(namespace="flash", name="flash_fwd_kernel"))
    (work / "marlin.cu").write_text(KERNEL.format(namespace="marlin", name="Marlin"))
    (work / "norm.cu").write_text(KERNEL.format(namespace="vllm", name="rms_norm_kernel"))
    ptx80 = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_80,code=compute_80"]
    _nvcc("-Xcompiler", "-fPIC", "-c", *ptx80, "marlin.cu", "-o", "marlin.o", cwd=work)
    sm121a = ["-gencode", "arch=compute_121a,code=sm_121a"]
    _nvcc("-Xcompiler", "-fPIC", "-c", *sm121a, "norm.cu", "-o", "norm.o", cwd=work)
    _nvcc("-shared", "marlin.o", "norm.o", "-o", "_C.abi3.so", cwd=work)
    ptx_only = ["-gencode", "arch=compute_80,code=compute_80"]
    _nvcc("-shared", "-Xcompiler", "-fPIC", *ptx_only, "fa2.cu", "-o", "fa2.so", cwd=work)
    _nvcc("-ptx", "-arch=compute_80", "fa2.cu", "-o", "fa2.ptx", cwd=work)
    path = work / "vllm-0.13.0-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(work / "_C.abi3.so", "vllm/_C.abi3.so")
        archive.write(work / "fa2.so", "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so")
        archive.writestr("vllm-0.13.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: vllm\nVersion: 0.13.0\n")
    return path, work / "fa2.ptx"


def test_validate_bills_the_ptx_only_modules_by_family_at_the_measured_rate(wheel: tuple[Path, Path]) -> None:
    path, fa2_ptx = wheel
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, Path(sys.prefix))
    report = arch_audit(path, SPARK, cuobjdump, dispatch=VLLM_DISPATCH, keep_ptx=True)
    assert {e.path: e.verdict for e in report.extensions} == {
        "vllm/_C.abi3.so": Verdict.NATIVE,  # judged by its best code: the Marlin kernel's JIT hides here
        "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so": Verdict.JIT,
    }
    bill = wheel_jit_bill(report, RATE, {}).bill
    lines = {line.family: line for line in bill.lines}
    assert set(lines) == {"vllm/_C.abi3.so: GPTQ Marlin", "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so: FA2"}
    fa2 = lines["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so: FA2"]
    text = fa2_ptx.read_text()
    from_version = len(text[text.index(".version") :].encode())
    # cuobjdump prints the embedded PTX without nvcc's comments and indentation: a bit smaller.
    assert 0.6 * from_version < fa2.ptx_bytes <= from_version
    assert fa2.objects == 1 and fa2.seconds == pytest.approx(fa2.ptx_bytes / MB * 4.0)
    assert bill.seconds == pytest.approx(sum(line.ptx_bytes for line in bill.lines) / MB * 4.0)


def test_validate_prints_the_bill_beside_the_gpu_code_table(wheel: tuple[Path, Path]) -> None:
    path, _ = wheel
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, Path(sys.prefix))
    report = arch_audit(path, SPARK, cuobjdump, dispatch=VLLM_DISPATCH, keep_ptx=True)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    report.render(console)
    wheel_jit_bill(report, RATE, {}).render(console)
    text = out.getvalue()
    assert "PTX JIT only" in text and "native SASS" in text
    assert f"PTX JIT at first load on 12.1: {path.name}" in text
    assert "vllm/_C.abi3.so: GPTQ Marlin" in text and "_vllm_fa2_C.abi3.so: FA2" in text
    assert "other families 4 (test rate)" in text


def test_a_wheel_with_native_code_only_owes_no_jit(tmp_path: Path) -> None:
    if not os.access(NVCC, os.X_OK) or shutil.which("gcc") is None:
        pytest.skip(f"needs nvcc at {NVCC}")
    (tmp_path / "norm.cu").write_text(KERNEL.format(namespace="vllm", name="rms_norm_kernel"))
    native = ["-gencode", "arch=compute_120,code=sm_120", "-gencode", "arch=compute_120,code=compute_120"]
    _nvcc("-shared", "-Xcompiler", "-fPIC", *native, "norm.cu", "-o", "_C.abi3.so", cwd=tmp_path)
    (tmp_path / "vllm").mkdir()
    shutil.move(tmp_path / "_C.abi3.so", tmp_path / "vllm" / "_C.abi3.so")
    cuobjdump = find_cuobjdump(CUDA_HOME, os.environ, Path(sys.prefix))
    report = arch_audit(tmp_path / "vllm", SPARK, cuobjdump, dispatch=VLLM_DISPATCH, keep_ptx=True)
    assert wheel_jit_bill(report, RATE, {}).bill.lines == ()


def test_the_audit_and_the_bill_dump_each_extension_once(wheel: tuple[Path, Path], tmp_path: Path) -> None:
    """The real cuobjdump behind a script that notes each call: a dump decompresses every
    image (minutes on vLLM's `_C`), so the bill reads the audit's one `-symbols -ptx` pass."""
    path, _ = wheel
    calls = tmp_path / "calls"
    logged = tmp_path / "cuobjdump"
    real = find_cuobjdump(CUDA_HOME, os.environ, Path(sys.prefix))
    logged.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {real} "$@"\n')
    logged.chmod(0o755)
    report = arch_audit(path, SPARK, logged, dispatch=VLLM_DISPATCH, keep_ptx=True)
    assert len(wheel_jit_bill(report, RATE, {}).bill.lines) == 2
    dumps = [line.split() for line in calls.read_text().splitlines() if "-symbols" in line.split()]
    assert sorted((Path(argv[-1]).name, "-ptx" in argv) for argv in dumps) == [
        ("_C.abi3.so", True),
        ("_vllm_fa2_C.abi3.so", True),
    ]
