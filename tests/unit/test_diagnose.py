"""Known build failures: each signature recognises a real-looking log excerpt and names the fix."""

from __future__ import annotations

import pytest

from spark_build.insight.diagnose import QUOTED_LINES, SIGNATURES, diagnose

# signature name -> (a log excerpt as the failing tool prints it, the line that must be quoted)
EXCERPTS: dict[str, tuple[str, str]] = {
    "cuda12-library-missing": (
        """\
Traceback (most recent call last):
  File "<string>", line 1, in <module>
  File "/work/venv/lib/python3.12/site-packages/torchaudio/__init__.py", line 2, in <module>
    from . import _extension
OSError: libcudart.so.12: cannot open shared object file: No such file or directory
""",
        "OSError: libcudart.so.12: cannot open shared object file: No such file or directory",
    ),
    "triton-ptxas-unknown-arch": (
        """\
triton.runtime.errors.PTXASError: PTXAS error: Internal Triton PTX codegen error
`ptxas` stderr:
ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'

Repro command: /work/venv/lib/python3.12/site-packages/triton/backends/nvidia/bin/ptxas -lineinfo -v \
--gpu-name=sm_121a /tmp/tmpkw7ug6t8.ptx -o /tmp/tmpkw7ug6t8.ptx.o
""",
        "ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'",
    ),
    "compiler-oom-killed": (
        """\
[212/388] Building CXX object CMakeFiles/_C.dir/csrc/torch_bindings.cpp.o
FAILED: CMakeFiles/_C.dir/csrc/torch_bindings.cpp.o
/usr/bin/c++ -DPy_LIMITED_API=3 -DTORCH_EXTENSION_NAME=_C -O3 -c csrc/torch_bindings.cpp
c++: fatal error: Killed signal terminated program cc1plus
compilation terminated.
ninja: build stopped: subcommand failed.
""",
        "c++: fatal error: Killed signal terminated program cc1plus",
    ),
    "nvcc-subprocess-oom-killed": (
        """\
[57/388] Building CUDA object CMakeFiles/_C.dir/csrc/quantization/fp4/nvfp4_scaled_mm_sm120_kernels.cu.o
FAILED: CMakeFiles/_C.dir/csrc/quantization/fp4/nvfp4_scaled_mm_sm120_kernels.cu.o
nvcc error   : 'cicc' died due to signal 9 (Kill signal)
ninja: build stopped: subcommand failed.
""",
        "nvcc error   : 'cicc' died due to signal 9 (Kill signal)",
    ),
    "nvcc-unsupported-arch": (
        """\
-- CUDA target architectures: 12.1a
[1/388] Building CUDA object CMakeFiles/_C.dir/csrc/cache_kernels.cu.o
FAILED: CMakeFiles/_C.dir/csrc/cache_kernels.cu.o
nvcc fatal   : Unsupported gpu architecture 'compute_121a'
""",
        "nvcc fatal   : Unsupported gpu architecture 'compute_121a'",
    ),
    "disk-full": (
        """\
[301/388] Linking CXX shared module _C.abi3.so
FAILED: _C.abi3.so
/usr/bin/ld: final link failed: No space left on device
collect2: error: ld returned 1 exit status
""",
        "/usr/bin/ld: final link failed: No space left on device",
    ),
    "cmake-nvcc-not-found": (
        """\
-- The CUDA compiler identification is unknown
CMake Error at /usr/share/cmake-3.28/Modules/CMakeDetermineCUDACompiler.cmake:180 (message):
  Failed to find nvcc.

  Compiler requires the CUDA toolkit.  Please set the CUDAToolkit_ROOT
  variable.
""",
        "Failed to find nvcc.",
    ),
    "cuda-home-not-set": (
        """\
  File "/work/venv/lib/python3.12/site-packages/torch/utils/cpp_extension.py", line 2416, in _join_cuda_home
    raise OSError('CUDA_HOME environment variable is not set. '
OSError: CUDA_HOME environment variable is not set. Please set it to your CUDA install root.
""",
        "raise OSError('CUDA_HOME environment variable is not set. '",
    ),
    "fetchcontent-network": (
        """\
-- FetchContent base directory: /work/vllm/.deps
[0/8] Performing download step (git clone) for 'cutlass-populate'
Cloning into 'cutlass-src'...
fatal: unable to access 'https://github.com/nvidia/cutlass.git/': Could not resolve host: github.com
Cloning into 'cutlass-src'...
fatal: unable to access 'https://github.com/nvidia/cutlass.git/': Could not resolve host: github.com
-- Had to git clone more than once: 3 times.
CMake Error at cutlass-subbuild/cutlass-populate-prefix/tmp/cutlass-populate-gitclone.cmake:39 (message):
  Failed to clone repository: 'https://github.com/nvidia/cutlass.git'
""",
        "fatal: unable to access 'https://github.com/nvidia/cutlass.git/': Could not resolve host",
    ),
    "torch-cuda-mismatch": (
        """\
  File "/work/venv/lib/python3.12/site-packages/torch/utils/cpp_extension.py", line 520, in _check_cuda_ver
    raise RuntimeError(CUDA_MISMATCH_MESSAGE.format(cuda_str_version, torch.version.cuda))
RuntimeError:
The detected CUDA version (13.0) mismatches the version that was used to compile
PyTorch (12.8). Please make sure to use the same CUDA versions.
""",
        "The detected CUDA version (13.0) mismatches the version that was used to compile",
    ),
    "driver-too-old": (
        """\
  File "/work/venv/lib/python3.12/site-packages/torch/cuda/__init__.py", line 372, in _lazy_init
    torch._C._cuda_init()
RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version
CUDA kernel errors might be asynchronously reported at some other API call.
""",
        "RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version",
    ),
    "torch-needs-newer-cxx": (
        """\
[3/101] Building CXX object CMakeFiles/_moe_C.dir/csrc/moe/torch_bindings.cpp.o
FAILED: [code=1] CMakeFiles/_moe_C.dir/csrc/moe/torch_bindings.cpp.o
/usr/bin/c++ -DPy_LIMITED_API=3 -DTORCH_EXTENSION_NAME=_moe_C -O3 -std=gnu++17 -c csrc/moe/torch_bindings.cpp
In file included from /venv/lib/python3.12/site-packages/torch/include/torch/all.h:1,
/venv/lib/python3.12/site-packages/torch/include/torch/csrc/api/include/torch/all.h:5:2: error: \
#error C++20 or later compatible compiler is required to use PyTorch.
""",
        "#error C++20 or later compatible compiler is required to use PyTorch.",
    ),
    "no-kernel-image": (
        """\
(EngineCore_0 pid=4242) ERROR [core.py:714]   File "/work/venv/lib/python3.12/site-packages/vllm/_ops.py"
(EngineCore_0 pid=4242) ERROR [core.py:714] torch.AcceleratorError: CUDA error: no kernel image is \
available for execution on the device
""",
        "no kernel image is available for execution on the device",
    ),
}


def test_every_signature_has_an_excerpt_here() -> None:
    assert sorted(EXCERPTS) == sorted(signature.name for signature in SIGNATURES)


@pytest.mark.parametrize("name", EXCERPTS.keys())
def test_signature_recognises_its_failure_and_quotes_the_line(name: str) -> None:
    log, quoted = EXCERPTS[name]
    found = diagnose(log)
    assert [diagnosis.name for diagnosis in found] == [name]
    (diagnosis,) = found
    assert any(quoted in quote for quote in diagnosis.quotes)
    assert diagnosis.cause and diagnosis.fix and "\n" not in diagnosis.fix
    assert log.splitlines()[diagnosis.line_number - 1].strip() == diagnosis.quotes[0]


def test_a_clean_log_has_no_diagnosis() -> None:
    log = """\
-- CUDA target architectures: 12.1a
[388/388] Linking CXX shared module _C.abi3.so
Successfully built vllm-0.13.0+cu130-cp38-abi3-linux_aarch64.whl
"""
    assert diagnose(log) == []


def test_a_retried_failure_is_quoted_once_per_distinct_line() -> None:
    log, _ = EXCERPTS["fetchcontent-network"]
    (diagnosis,) = diagnose(log)
    assert len(diagnosis.quotes) == len(set(diagnosis.quotes)) == 2
    assert len(diagnosis.quotes) <= QUOTED_LINES


def test_several_failures_come_back_in_log_order() -> None:
    log = EXCERPTS["disk-full"][0] + EXCERPTS["nvcc-subprocess-oom-killed"][0]
    assert [diagnosis.name for diagnosis in diagnose(log)] == ["disk-full", "nvcc-subprocess-oom-killed"]


def test_a_diagnosis_prints_cause_log_line_and_fix() -> None:
    (diagnosis,) = diagnose(EXCERPTS["triton-ptxas-unknown-arch"][0])
    lines = diagnosis.lines()
    assert lines[0].startswith("cause: ")
    assert lines[1] == "  log:3: ptxas fatal   : Value 'sm_121a' is not defined for option 'gpu-name'"
    assert lines[-1].startswith("  fix: export TRITON_PTXAS_PATH=")


# A step log as the runner writes it (`# header`, `+ argv`, the output, `# exit N`) -> the line
# a failed step's error quotes when no signature knows the failure.
DECISIVE: list[tuple[str, str, str | None]] = [
    (
        "uv-find-links-folder-missing",
        """\
# 2026-11-30 08:50:29 in /tmp/u19
+ uv pip install --python /w/venv/bin/python --find-links /nonexistent torch==2.13.0+cpu
Using Python 3.11.7 environment at: work/venv
error: Failed to read `--find-links` directory: /nonexistent
  cause: No such file or directory (os error 2)
# exit 2
""",
        "error: Failed to read `--find-links` directory: /nonexistent — cause: No such file or directory (os error 2)",
    ),
    (
        "python-traceback-last-exception",
        """\
+ /w/venv/bin/python use_existing_torch.py
Traceback (most recent call last):
  File "use_existing_torch.py", line 3, in <module>
    raise_error_if_needed()
ModuleNotFoundError: No module named 'regex'
# exit 1
""",
        "ModuleNotFoundError: No module named 'regex'",
    ),
    (
        "only-the-last-command-counts",
        """\
+ git fetch origin
warning: redirecting to https://example/
error: this earlier error was retried and passed
+ git checkout v1
fatal: reference is not a tree: v1
# exit 128
""",
        "fatal: reference is not a tree: v1",
    ),
    ("nothing-decisive", "+ make\nmake: Nothing to be done.\n# exit 2\n", None),
]


@pytest.mark.parametrize(("log", "line"), [row[1:] for row in DECISIVE], ids=[row[0] for row in DECISIVE])
def test_a_failure_no_signature_knows_still_quotes_the_logs_decisive_line(log: str, line: str | None) -> None:
    from spark_build.insight.diagnose import decisive_line

    assert decisive_line(log) == line


def test_a_failed_steps_error_carries_the_logs_decisive_line_and_the_resume_command(tmp_path) -> None:
    from spark_build.errors import StepFailed
    from spark_build.insight.diagnose import explain

    log = tmp_path / "torch.log"
    log.write_text(DECISIVE[0][1])
    error = StepFailed("`uv pip install …` exited with status 2", step="torch", log=log)
    explain(error, "invoke build-vllm --resume")
    assert error.details == [f"log says: {DECISIVE[0][2]}"]
    assert error.hint is not None and error.hint.endswith("invoke build-vllm --resume")
