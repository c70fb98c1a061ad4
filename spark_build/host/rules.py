"""Preflight rules: host facts in, one verdict per check out, each problem with a one-line fix.

Why rules over facts: a vLLM source build fails 10-30 minutes in for reasons that were visible
before it started (an nvcc that cannot target sm_121, a CUDA 12 library shadowing CUDA 13, a
disk that fills at link time). `evaluate` finds them in milliseconds as a pure function of
`HostFacts`, so every rule is tested with canned facts; `doctor.run_doctor` is the only part
that reads the machine and prints. Errors stop preflight; warnings are shown and recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version

from spark_build.arch import archlist as archmap
from spark_build.arch.compat import ComputeCapability, GpuCode, Verdict, best_on
from spark_build.errors import UsageError
from spark_build.host.facts import HostFacts, TorchInfo, target_entries
from spark_build.host.needs import VLLM_NEEDS, BuildNeeds
from spark_build.sizes import GIB

Severity = Literal["ok", "warning", "error"]

# --- Driver -------------------------------------------------------------------------------
# Oldest driver branch that runs code from each CUDA major under minor-version compatibility
# (NVIDIA, "CUDA Compatibility": 13.x >= 580, 12.x >= 525, 11.x >= 450).
MIN_DRIVER_FOR_CUDA_MAJOR = {13: 580, 12: 525, 11: 450}

# --- Triton -------------------------------------------------------------------------------
# The CUDA release of the ptxas a Triton wheel bundles, one row per change: (the first Triton
# of the row, its ptxas for GPUs before compute capability 10, its ptxas for 10 and later).
# Triton 3.5 (torch 2.9) has one ptxas, CUDA 12.8's: a GPU that needs a newer CUDA (12.1, 11.0,
# 10.3) fails in Triton with "Value 'sm_121a' is not defined for option 'gpu-name'" until
# TRITON_PTXAS_PATH points at CUDA 13's ptxas (triton-lang/triton#8539). From 3.6 Triton runs a
# second one, `ptxas-blackwell`, for compute capability 10 and later. Read from the PyPI wheels
# (`ptxas --version` of triton/backends/nvidia/bin/, x86_64): 3.5.0 12.8; 3.6.0 12.8 + 12.9;
# 3.8.0 12.9 + 13.3. Each was also asked to compile an sm_121a kernel: only 3.5.0's refused.
TRITON_BUNDLED_PTXAS: tuple[tuple[Version, Version, Version], ...] = (
    (Version("3.8"), Version("12.9"), Version("13.3")),
    (Version("3.6"), Version("12.8"), Version("12.9")),
    (Version("0"), Version("12.8"), Version("12.8")),
)

SPARK_CUDA_HOME = "/usr/local/cuda-13.0"
CU130_INDEX = "https://download.pytorch.org/whl/cu130"


@dataclass(frozen=True)
class Problem:
    """One row of the doctor table: what was checked, what was found, the verdict, the fix."""

    check: str
    value: str
    severity: Severity
    fix: str = ""


def can_build(problems: Sequence[Problem]) -> bool:
    """A build can start when no check is an error; warnings do not stop it."""
    return not any(problem.severity == "error" for problem in problems)


def only_the_compiler_is_missing(problems: Sequence[Problem]) -> bool:
    """Every error is about the CUDA compiler (nvcc, its probes, CUDA_HOME): `--prefer-wheel`
    may still take vLLM's official wheel, which it validates without compiling anything. An
    aarch64 system without nvcc read "a build cannot start", then took the 0.33.0 wheel."""
    errors = [problem.check for problem in problems if problem.severity == "error"]
    return bool(errors) and all(check in ("nvcc", "CUDA_HOME") or check.startswith("nvcc probe") for check in errors)


def evaluate(
    facts: HostFacts,
    target_arch: str | None,
    needs: BuildNeeds = VLLM_NEEDS,
    *,
    torch_cuda: str = "13",
    gcc_minimum: str | None = None,
) -> list[Problem]:
    """Judge the host for a build targeting `target_arch` (`--arch`; None: this GPU's arch) with
    the torch `--torch-cuda` asks for ('cpu': a CPU torch is what the build wants, no warning),
    of a source whose configure stops below GCC `gcc_minimum` (None: not known here).

    Pure: no process, no file, no clock. A malformed `target_arch` raises `UsageError`.
    """
    if target_arch:
        archmap.parse_arch_list(target_arch)  # bad input is exit 2, not a table row
    targets, target_problem = _resolve_targets(facts, target_arch)
    problems = [
        _check_platform(facts),
        _check_memory(facts, needs),
        *_check_disk(facts, needs),
        _check_gpu(facts, target_arch),
        *([target_problem] if target_problem else []),
        _check_cuda_home(facts),
        _check_nvcc(facts, targets),
        *_check_probes(facts, targets),
        _check_driver(facts),
        _check_library_path(facts),
        _check_torch(facts, torch_cuda),
        _check_triton_ptxas(facts, targets),
        _check_host_compiler(facts, gcc_minimum),
        Problem("python", facts.python_version, "ok"),
        _check_tool("uv", facts.uv_version, "pip install uv (or use spark-build's venv, which has it)"),
        _check_tool("git", facts.git_version, "install git: sudo apt install git"),
    ]
    return problems


def _resolve_targets(facts: HostFacts, target_arch: str | None) -> tuple[tuple[archmap.ArchEntry, ...], Problem | None]:
    try:
        targets = target_entries(target_arch, facts.gpus)
    except UsageError as error:
        return (), Problem("target arch", error.message, "error", error.hint or "pass --arch")
    if not targets:
        return (), None  # no GPU and no --arch: the gpu row already says so
    listed = archmap.format_arch_list(targets)
    if target_arch:
        strays = [gpu for gpu in facts.gpus if not _runs_on(targets, gpu.compute_cap)]
        if strays:
            gpu = strays[0]
            native = _native_or_none(gpu.compute_cap)
            return targets, Problem(
                "target arch",
                f"{listed} (--arch) does not run on this {gpu.name} ({gpu.compute_cap})",
                "warning",
                f"add this GPU's arch: --arch '{listed};{native}'" if native else "check --arch",
            )
        return targets, Problem("target arch", f"{listed} (--arch)", "ok")
    caps = ", ".join(sorted({gpu.compute_cap for gpu in facts.gpus}))
    return targets, Problem("target arch", f"{listed} (from GPU {caps})", "ok")


def _runs_on(targets: Sequence[archmap.ArchEntry], compute_cap: str) -> bool:
    """Whether a build for `targets` has code this GPU can load (`12.0a` SASS cannot on 12.1)."""
    codes = [GpuCode.parse(archmap.sm_name(entry)) for entry in targets]
    codes += [GpuCode.parse(archmap.compute_name(entry)) for entry in targets if entry.ptx]
    return best_on(codes, ComputeCapability.parse(compute_cap)) is not Verdict.CANNOT_RUN


def _native_or_none(compute_cap: str) -> str | None:
    try:
        return archmap.arch_for_compute_capability(compute_cap)
    except UsageError:
        return None


def _check_platform(facts: HostFacts) -> Problem:
    return Problem("cpu", f"{facts.cpu_arch}, {facts.cpu_count} cores", "ok")


def _check_memory(facts: HostFacts, needs: BuildNeeds) -> Problem:
    value = f"{_gib(facts.mem_available_bytes)} available of {_gib(facts.mem_total_bytes)}"
    if facts.mem_available_bytes < needs.one_job_bytes:
        return Problem(
            "memory",
            value,
            "error",
            f"free memory: the heaviest compile job alone peaks at {_gib(needs.heaviest_job_bytes)}; "
            f"need {_gib(needs.one_job_bytes)} available (stop models or notebooks)",
        )
    return Problem("memory", value, "ok")


def _check_disk(facts: HostFacts, needs: BuildNeeds) -> list[Problem]:
    if facts.cache_on_workdir_fs:
        total = needs.workdir_bytes + needs.cache_bytes
        return [_disk_row("disk", facts.workdir, facts.workdir_free_bytes, total)]
    return [
        _disk_row("disk (workdir)", facts.workdir, facts.workdir_free_bytes, needs.workdir_bytes),
        _disk_row("disk (cache)", facts.cache_dir, facts.cache_free_bytes, needs.cache_bytes),
    ]


def _disk_row(check: str, path: Path, free: int, need: int) -> Problem:
    value = f"{_gib(free)} free at {path}"
    if free < need:
        return Problem(check, value, "error", f"free {_gib(need - free)} more at {path}, or choose a larger disk")
    return Problem(check, value, "ok")


def _check_gpu(facts: HostFacts, target_arch: str | None) -> Problem:
    if facts.gpus:
        listed = "; ".join(f"{gpu.name} ({gpu.compute_cap})" for gpu in facts.gpus)
        return Problem("gpu", listed, "ok")
    reason = facts.gpu_query_error or "nvidia-smi found none"
    if target_arch:
        return Problem(
            "gpu",
            f"none ({reason})",
            "warning",
            f"building for --arch {target_arch}; the serve check needs the GPU, run it there",
        )
    return Problem(
        "gpu",
        f"none ({reason})",
        "error",
        "pass --arch (e.g. --arch 12.1a) to build for a GPU that is not in this machine",
    )


def _check_cuda_home(facts: HostFacts) -> Problem:
    if facts.cuda_home_env is None:
        if facts.cuda_home is None:
            return Problem("CUDA_HOME", "unset", "ok")
        return Problem("CUDA_HOME", f"unset; the build will use {facts.cuda_home}", "ok")
    if facts.nvcc is None:
        return Problem(
            "CUDA_HOME",
            f"{facts.cuda_home_env} has no bin/nvcc",
            "error",
            f"point CUDA_HOME at a CUDA 13 toolkit root, e.g. export CUDA_HOME={SPARK_CUDA_HOME}",
        )
    return Problem("CUDA_HOME", facts.cuda_home_env, "ok")


def _check_nvcc(facts: HostFacts, targets: Sequence[archmap.ArchEntry]) -> Problem:
    if facts.nvcc is None:
        return Problem(
            "nvcc",
            "not found",
            "error",
            f"install CUDA 13.0 and export CUDA_HOME={SPARK_CUDA_HOME}",
        )
    if facts.nvcc_version is None:
        return Problem("nvcc", f"{facts.nvcc}: version unreadable", "error", f"check that {facts.nvcc} runs")
    version = facts.nvcc_version
    value = f"{version} at {facts.nvcc}"
    for entry in targets:
        if not archmap.is_known(entry):
            continue
        need = archmap.min_cuda_for(entry)
        if version < need:
            return Problem(
                "nvcc",
                value,
                "error",
                f"nvcc {_major_minor(version)} cannot target {archmap.sm_name(entry)} (needs CUDA >= {need})"
                f" — install CUDA 13.0 and export CUDA_HOME={SPARK_CUDA_HOME}",
            )
        last = archmap.last_cuda_major_for(entry)
        if last is not None and version.major > last:
            return Problem(
                "nvcc",
                value,
                "error",
                f"CUDA {version.major} no longer builds {entry}: drop it from --arch or use CUDA {last}.x",
            )
    return Problem("nvcc", value, "ok")


def _check_probes(facts: HostFacts, targets: Sequence[archmap.ArchEntry]) -> list[Problem]:
    if facts.nvcc is None or facts.nvcc_version is None:
        return []
    by_sm = {probe.sm: probe for probe in facts.probes}
    rows = []
    for entry in targets:
        sm = archmap.sm_name(entry)
        probe = by_sm.get(sm)
        check = f"nvcc probe {sm}"
        if probe is None:
            rows.append(Problem(check, "not probed", "warning", "run `invoke doctor` again to probe nvcc"))
        elif probe.accepted:
            rows.append(Problem(check, "compiles", "ok"))
        else:
            rows.append(
                Problem(
                    check,
                    probe.detail or "rejected",
                    "error",
                    f"this nvcc cannot build {sm}: install CUDA 13.0, export CUDA_HOME={SPARK_CUDA_HOME}",
                )
            )
    return rows


def _check_driver(facts: HostFacts) -> Problem:
    if not facts.gpus:
        return Problem("driver", "no GPU", "ok")
    driver = facts.gpus[0].driver_version
    majors = [facts.nvcc_version.major] if facts.nvcc_version is not None else []
    torch_cuda = _version_or_none(facts.torch.cuda) if facts.torch is not None else None
    if torch_cuda is not None:
        majors.append(torch_cuda.major)
    cuda_major = max(majors, default=None)
    need = MIN_DRIVER_FOR_CUDA_MAJOR.get(cuda_major) if cuda_major is not None else None
    try:
        branch = int(driver.split(".")[0])
    except ValueError:
        return Problem("driver", driver, "warning", "nvidia-smi reported no readable driver version")
    if need is not None and branch < need:
        return Problem(
            "driver",
            driver,
            "error",
            f"CUDA {cuda_major} needs driver >= {need}: install the R{need} (or newer) driver and reboot",
        )
    return Problem("driver", driver, "ok")


def _check_library_path(facts: HostFacts) -> Problem:
    if not facts.cuda12_lib_dirs:
        return Problem("LD_LIBRARY_PATH", "no CUDA 12 libraries", "ok")
    first12 = facts.ld_library_path.index(facts.cuda12_lib_dirs[0])
    first13 = facts.ld_library_path.index(facts.cuda13_lib_dirs[0]) if facts.cuda13_lib_dirs else None
    shadowing = ", ".join(facts.cuda12_lib_dirs)
    if first13 is None or first12 < first13:
        # LD_LIBRARY_PATH is searched before a wheel's RUNPATH, so these win over torch's CUDA 13
        # libraries for every unversioned or compat lookup (libcuda.so.1 from cuda-compat-12).
        return Problem(
            "LD_LIBRARY_PATH",
            f"CUDA 12 libraries first: {shadowing}",
            "warning",
            f"remove {facts.cuda12_lib_dirs[0]} from LD_LIBRARY_PATH (or put CUDA 13's lib64 first)",
        )
    return Problem("LD_LIBRARY_PATH", f"CUDA 13 first; CUDA 12 later in {shadowing}", "ok")


def _check_torch(facts: HostFacts, wanted_cuda: str) -> Problem:
    if facts.torch is None:
        if facts.torch_query_error:
            return Problem("torch", facts.torch_query_error, "warning", "the torch step installs cu130 torch")
        return Problem("torch", "not installed; the torch step installs cu130", "ok")
    torch = facts.torch
    value = f"{torch.version} (CUDA {torch.cuda or 'none'}) in {torch.python}"
    if torch.cuda is None and wanted_cuda == "cpu":
        return Problem("torch", f"{value}, as --torch-cuda cpu asks", "ok")
    if torch.cuda is None:
        return Problem(
            "torch",
            value,
            "warning",
            f"CPU-only torch cannot build CUDA kernels: install torch from {CU130_INDEX}",
        )
    torch_cuda = _version_or_none(torch.cuda)
    nvcc = facts.nvcc_version
    if nvcc is not None and torch_cuda is not None and torch_cuda.major != nvcc.major:
        return Problem(
            "torch",
            value,
            "error",
            f"torch is built for CUDA {torch.cuda}, nvcc is {_major_minor(nvcc)}: "
            f"uv pip install torch --index-url {CU130_INDEX}",
        )
    return Problem("torch", value, "ok")


def existing_torch(facts: HostFacts, wanted_cuda: str) -> Problem:
    """`--torch existing`: the interpreter must hold a torch built for the CUDA major the build
    targets (`--torch-cuda`) and nvcc compiles with — a CPU or CUDA 12 torch is bad input."""
    return judge_existing_torch(facts.torch, facts.torch_query_error, facts.nvcc_version, wanted_cuda)


def judge_existing_torch(
    torch: TorchInfo | None, query_error: str | None, nvcc: Version | None, wanted_cuda: str, python: str = ""
) -> Problem:
    """`existing_torch` from the three facts it needs, so the build can judge them before its
    workdir exists (`python`: the interpreter asked, for the message when it has no torch)."""
    python = str(torch.python) if torch else python or "the interpreter"
    fix = "name the interpreter that holds CUDA torch with --python (e.g. /opt/torch/.venv/bin/python)"
    if torch is None:
        why = query_error or f"{python} has no torch"
        return Problem("existing torch", why, "error", f"{fix}, or drop --torch existing")
    value = f"torch {torch.version} (CUDA {torch.cuda or 'none'}) in {torch.python}"
    if wanted_cuda == "cpu":
        ok = torch.cuda is None
    else:
        ok = torch.cuda is not None and torch.cuda.split(".")[0] == wanted_cuda
    if not ok:
        wanted = "a CPU build" if wanted_cuda == "cpu" else f"CUDA {wanted_cuda}"
        return Problem("existing torch", f"{value}, not {wanted}", "error", fix)
    if nvcc is not None and torch.cuda is not None and torch.cuda.split(".")[0] != str(nvcc.major):
        return Problem("existing torch", f"{value}, but nvcc is {_major_minor(nvcc)}", "error", fix)
    return Problem("existing torch", value, "ok")


def bundled_ptxas_cuda(triton: Version, entry: archmap.ArchEntry) -> Version:
    """The CUDA release of the ptxas this Triton runs for `entry` when TRITON_PTXAS_PATH is unset."""
    _, older_gpus, newer_gpus = next(row for row in TRITON_BUNDLED_PTXAS if triton >= row[0])
    return newer_gpus if entry.major >= 10 else older_gpus


def _check_triton_ptxas(facts: HostFacts, targets: Sequence[archmap.ArchEntry]) -> Problem:
    """Whether Triton, as installed beside the torch, can compile for the target. Without torch
    or Triton there is nothing to judge: the build's torch brings its own, and the compile sets
    TRITON_PTXAS_PATH itself."""
    ptxas = str(facts.ptxas or Path(SPARK_CUDA_HOME) / "bin" / "ptxas")
    fix = f"export TRITON_PTXAS_PATH={ptxas} TRITON_PTXAS_BLACKWELL_PATH={ptxas}"
    configured = facts.triton_ptxas_path
    if configured:
        if not facts.triton_ptxas_path_exists:
            return Problem("triton ptxas", f"TRITON_PTXAS_PATH={configured} does not exist", "warning", fix)
        return Problem("triton ptxas", f"TRITON_PTXAS_PATH={configured}", "ok")
    triton = _version_or_none(facts.torch.triton) if facts.torch is not None else None
    if triton is None:
        return Problem("triton ptxas", "no Triton installed: nothing runs its bundled ptxas", "ok")
    if not targets:
        # No GPU and no --arch: nothing to judge the bundled ptxas against; saying it "knows
        # the target" here was the opposite of what `--arch 12.1a` then reported.
        return Problem("triton ptxas", f"Triton {triton}; no target to judge its bundled ptxas by", "ok")
    for entry in targets:
        if not archmap.is_known(entry):
            continue
        bundled = bundled_ptxas_cuda(triton, entry)
        if archmap.min_cuda_for(archmap.ArchEntry(entry.major, entry.minor)) > bundled:
            sm = archmap.sm_name(archmap.ArchEntry(entry.major, entry.minor, "a"))
            value = f"TRITON_PTXAS_PATH unset; Triton {triton}'s bundled ptxas (CUDA {bundled}) lacks {sm}"
            return Problem("triton ptxas", value, "warning", fix)
    return Problem("triton ptxas", f"Triton {triton}'s bundled ptxas knows the target", "ok")


def _check_host_compiler(facts: HostFacts, gcc_minimum: str | None) -> Problem:
    """vLLM 0.33 and later stop their configure below GCC 13 (DeepGEMM's and DeepSelect's C++20
    `<format>`), minutes into a build, after torch is installed; Ubuntu 22.04 ships GCC 11."""
    cxx = facts.cxx
    needs = f"GCC >= {gcc_minimum} (the source's CMakeLists.txt)" if gcc_minimum else None
    fix = (
        f"install g++-{Version(gcc_minimum).major} and build with CC=gcc-{Version(gcc_minimum).major} "
        f"CXX=g++-{Version(gcc_minimum).major} (Ubuntu 22.04: sudo add-apt-repository ppa:ubuntu-toolchain-r/test)"
        if gcc_minimum
        else ""
    )
    if cxx is None:
        return Problem("host compiler", "no C++ compiler ($CXX, else c++)", "error", fix or "sudo apt install g++")
    found = f"{cxx.family} {cxx.version or '?'} ({cxx.command})"
    if needs is None:
        return Problem("host compiler", f"{found}; the release's minimum is read from its source at preflight", "ok")
    version = _version_or_none(cxx.version)
    if cxx.family == "GNU" and version is not None and version < Version(gcc_minimum or "0"):
        return Problem("host compiler", f"{found}; the source needs {needs}", "error", fix)
    return Problem("host compiler", f"{found}; needs {needs}", "ok")


def _check_tool(name: str, version: str | None, fix: str) -> Problem:
    if version is None:
        return Problem(name, "not found", "error", fix)
    return Problem(name, version, "ok")


def _version_or_none(text: str | None) -> Version | None:
    if not text:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _major_minor(version: Version) -> str:
    return f"{version.major}.{version.minor}"


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"
