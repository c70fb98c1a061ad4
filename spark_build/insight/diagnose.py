"""Known failures of a vLLM source build: log signature -> cause -> fix, as data.

Why a table: the same dozen failures account for most broken Spark builds, and each has a
known fix that the raw log buries under thousands of lines of CMake and ninja output. A
signature is a regex over one log line; `diagnose` returns every signature that matches,
quoting the first matching lines, so a failed step can print "what happened, what to do"
instead of "see the log". Each row has its own test with a real-looking log excerpt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from spark_build.errors import SparkBuildError
from spark_build.pipeline.step import RESUME_COMMAND
from spark_build.proc import log_tail

QUOTED_LINES = 3  # enough to show which library/arch/host failed without flooding the message


@dataclass(frozen=True)
class Signature:
    """A known failure: the log line that gives it away, what it means, what to do."""

    name: str
    pattern: re.Pattern[str]
    cause: str
    fix: str


@dataclass(frozen=True)
class Diagnosis:
    """A signature found in a log, with the first lines that matched (1-based line numbers)."""

    name: str
    cause: str
    fix: str
    line_number: int
    quotes: tuple[str, ...]

    def lines(self) -> list[str]:
        """The diagnosis as printed under a failed step."""
        out = [f"cause: {self.cause}"]
        out.extend(f"  log:{self.line_number}: {quote}" for quote in self.quotes[:1])
        out.extend(f"  log: {quote}" for quote in self.quotes[1:])
        out.append(f"  fix: {self.fix}")
        return out


def _signature(name: str, pattern: str, cause: str, fix: str) -> Signature:
    return Signature(name, re.compile(pattern), cause, fix)


SIGNATURES: tuple[Signature, ...] = (
    _signature(
        "cuda12-library-missing",
        r"lib[\w+-]+\.so\.12: cannot open shared object file",
        "a package built for CUDA 12 (a cu12x wheel) is loaded in a CUDA 13 environment",
        "reinstall it from the cu130 index (uv pip install --index-url "
        "https://download.pytorch.org/whl/cu130 torch torchvision torchaudio); "
        "`uv pip list | grep -i cu12` finds the others",
    ),
    _signature(
        "triton-ptxas-unknown-arch",
        r"Value '(sm_\d+[af]?)' is not defined for option 'gpu-name'",
        "a ptxas older than this GPU (usually Triton's bundled CUDA 12.8 one) was asked to compile for it",
        "export TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas TRITON_PTXAS_BLACKWELL_PATH=/usr/local/cuda/bin/ptxas",
    ),
    _signature(
        "compiler-oom-killed",
        r"Killed signal terminated program (cc1plus|cc1|cicc|ptxas|ld)",
        "the kernel's OOM killer stopped a compile job: too many jobs for the available memory",
        "rerun with fewer jobs (e.g. MAX_JOBS=4) and --resume; finished objects are kept",
    ),
    _signature(
        "nvcc-subprocess-oom-killed",
        r"nvcc error\s*: '(cicc|ptxas|cudafe\+\+|nvlink|fatbinary)' died due to signal 9",
        "the kernel's OOM killer stopped an nvcc stage: too many jobs for the available memory",
        "rerun with fewer jobs (e.g. MAX_JOBS=4, NVCC_THREADS=1) and --resume; finished objects are kept",
    ),
    _signature(
        "nvcc-unsupported-arch",
        r"nvcc fatal\s*: Unsupported gpu architecture '(?:compute|sm)_\w+'",
        "this nvcc predates the target architecture (12.1a needs CUDA >= 12.9)",
        "install CUDA 13.0 and export CUDA_HOME=/usr/local/cuda-13.0 PATH=/usr/local/cuda-13.0/bin:$PATH",
    ),
    _signature(
        "disk-full",
        r"No space left on device",
        "the disk filled up during the build",
        "free space at the work dir (`invoke doctor` shows the need) and rerun with --resume",
    ),
    _signature(
        "cmake-nvcc-not-found",
        r"Failed to find nvcc|Could not find `?nvcc`?|No CMAKE_CUDA_COMPILER could be found",
        "CMake found no CUDA compiler: CUDA_HOME is unset or nvcc is not on PATH",
        "export CUDA_HOME=/usr/local/cuda-13.0 PATH=/usr/local/cuda-13.0/bin:$PATH",
    ),
    _signature(
        "cuda-home-not-set",
        r"CUDA_HOME environment variable is not set",
        "torch's extension builder found no CUDA toolkit",
        "export CUDA_HOME=/usr/local/cuda-13.0",
    ),
    _signature(
        "fetchcontent-network",
        r"Failed to clone repository: '(https://github\.com/[^']+)'"
        r"|unable to access 'https://github\.com/[^']*': (?:Could not resolve host|Failed to connect"
        r"|gnutls_handshake|Operation timed out|The requested URL returned error: 5\d\d)",
        "CMake could not download a dependency (CUTLASS, flash-attention, ...) from GitHub",
        "rerun with --resume when the network is back; the sources step pre-fetches them into the cache "
        "(VLLM_CUTLASS_SRC_DIR, VLLM_FLASH_ATTN_SRC_DIR, ...) so the compile needs no network",
    ),
    _signature(
        "torch-cuda-mismatch",
        r"The detected CUDA version \([\d.]+\) mismatches the version that was used to compile",
        "the installed torch was built for a different CUDA than this nvcc",
        "install torch for CUDA 13: uv pip install torch --index-url https://download.pytorch.org/whl/cu130",
    ),
    _signature(
        "driver-too-old",
        r"CUDA driver version is insufficient for CUDA runtime version",
        "the NVIDIA driver is older than the CUDA runtime, or a cuda-compat libcuda shadows the real one",
        "install the R580 (or newer) driver; remove cuda-compat directories from LD_LIBRARY_PATH",
    ),
    _signature(
        "torch-needs-newer-cxx",
        r"#error C\+\+(\d+) or later compatible compiler is required to use (?:ATen|PyTorch)",
        "the installed torch's headers need a newer C++ standard than this source compiles with "
        "(torch 2.14 needs C++20; vLLM 0.13 compiles as C++17)",
        "install the torch the source pins (requirements/cuda.txt; vLLM 0.13.0: --torch-packages "
        "'torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0') and rerun with --resume",
    ),
    _signature(
        "no-kernel-image",
        r"no kernel image is available for execution on the device",
        "the wheel has no SASS or PTX for this GPU (e.g. built for 12.0a, running on 12.1)",
        "rebuild with TORCH_CUDA_ARCH_LIST=12.1a (--arch 12.1a) and check the arch-plan step's report",
    ),
)


def diagnose(log_text: str) -> list[Diagnosis]:
    """Every known signature in `log_text`, in the order their first match appears in the log."""
    lines = log_text.splitlines()
    found = []
    for signature in SIGNATURES:
        hits = [(n, line.strip()) for n, line in enumerate(lines, 1) if signature.pattern.search(line)]
        if hits:
            found.append(
                Diagnosis(
                    name=signature.name,
                    cause=signature.cause,
                    fix=signature.fix,
                    line_number=hits[0][0],
                    quotes=tuple(_dedupe(line for _, line in hits)[:QUOTED_LINES]),
                )
            )
    return sorted(found, key=lambda diagnosis: diagnosis.line_number)


def _dedupe(lines: Iterable[str]) -> list[str]:
    # A retried clone prints the same line three times; quote it once.
    seen: list[str] = []
    for line in lines:
        if line not in seen:
            seen.append(line)
    return seen


# The line that names a failure: a Python exception, or a tool's `error:` / `fatal:` / `ERROR`.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: |$)")
_ERROR_LINE = re.compile(r"(^|\s|:)(error|fatal|ERROR|FAILED)\b[: ]", re.IGNORECASE)
_CAUSE_LINE = re.compile(r"^\s+(cause|caused by)\b", re.IGNORECASE)


def decisive_line(log_text: str) -> str | None:
    """The log line a failed step's error should quote when no signature knows the failure —
    so the message says `Failed to read --find-links directory` rather than "see the log".

    Only the last command's output counts (a step log holds every command the step ran, each
    after its `+ argv` line; earlier ones succeeded). A Python traceback's last exception line
    wins; else the first error line, joined with the `cause:` line uv and cargo print under it."""
    lines = log_text.splitlines()
    starts = [n for n, line in enumerate(lines) if line.startswith("+ ")]
    output = [line.rstrip() for line in lines[starts[-1] + 1 if starts else 0 :] if not line.startswith("# ")]
    exceptions = [line for line in output if _EXCEPTION_LINE.match(line)]
    if exceptions:
        return exceptions[-1]
    for n, line in enumerate(output):
        if _ERROR_LINE.search(line):
            causes = [c.strip() for c in output[n + 1 : n + 3] if _CAUSE_LINE.match(c)]
            return " — ".join([line.strip(), *causes])
    return None


def explain(exc: SparkBuildError, resume_command: str = RESUME_COMMAND) -> None:
    """Put the failure into the error in plain words: a known signature's cause and fix, else
    the log's decisive line — never a "fix the cause above" with no cause above."""
    if exc.log is None or not exc.log.is_file():
        return
    text = log_tail(exc.log)
    found = diagnose(text)
    if found:
        first = found[0]
        exc.details = [f"cause: {first.cause}", *(f"log says: {q}" for q in first.quotes[:1])]
        exc.hint = f"{first.fix}; then: {resume_command}"
        return
    line = decisive_line(text)
    if line and not exc.details:
        exc.details = [f"log says: {line}"]
        exc.hint = exc.hint or f"act on what the log says, then continue with: {resume_command}"
