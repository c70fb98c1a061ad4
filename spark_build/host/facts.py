"""Facts about the build machine, gathered once into a frozen record that the rules judge.

Why a record: preflight, `invoke doctor`, the job planner and the build report all ask the same
questions (how much memory, which nvcc, which GPU). Asking each once and passing the answers
around keeps every decision a pure function of data, testable with canned facts; only
`gather_host` and `archprobe.probe_nvcc` touch the machine, and even they take the command runner, the
environment and the memory and disk readers as arguments.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from packaging.version import Version

from spark_build.arch import archlist as archmap
from spark_build.errors import UsageError
from spark_build.host.archprobe import ArchProbe, parse_nvcc_version, probe_nvcc
from spark_build.host.query import Query, run_command

# The sonames that tell a CUDA 12 library directory from a CUDA 13 one. cudart, cublas(Lt) and
# nvrtc carry the CUDA major in their soname; a directory holding one of them is "CUDA 12" or
# "CUDA 13" for the LD_LIBRARY_PATH rule.
_CUDA_SONAME_STEMS = ("libcudart.so", "libcublas.so", "libcublasLt.so", "libnvrtc.so")

# Printed by a child interpreter: torch's version, the text of torch/version.py and the Triton
# beside it (PyTorch's nightlies call its distribution pytorch-triton), found without importing
# either (an import takes seconds and may itself fail on a CUDA mismatch).
_TORCH_QUERY = """\
import importlib.metadata, importlib.util, json, pathlib
def version(*names):
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None
spec = importlib.util.find_spec("torch")
if spec is None or not spec.submodule_search_locations:
    print(json.dumps(None))
else:
    root = pathlib.Path(next(iter(spec.submodule_search_locations)))
    version_py = root / "version.py"
    print(json.dumps({
        "version": importlib.metadata.version("torch"),
        "version_py": version_py.read_text() if version_py.is_file() else "",
        "location": str(root),
        "triton": version("triton", "pytorch-triton") if importlib.util.find_spec("triton") else None,
    }))
"""


@dataclass(frozen=True)
class Gpu:
    """One line of `nvidia-smi --query-gpu=name,compute_cap,driver_version`."""

    name: str
    compute_cap: str
    driver_version: str


@dataclass(frozen=True)
class TorchInfo:
    """An installed torch: the build compiles against its headers and CUDA version."""

    version: str
    cuda: str | None  # torch.version.cuda; None for a CPU-only build
    python: Path
    location: Path | None = None  # the torch package folder (its headers are under include/)
    triton: str | None = None  # the Triton installed beside it, whose bundled ptxas Triton uses


@dataclass(frozen=True)
class CxxCompiler:
    """The host C++ compiler: vLLM's configure stops below a GCC version its source names."""

    command: str
    family: str  # GNU, Clang, or the first word of its banner
    version: str | None


def parse_cxx_version(command: str, output: str) -> CxxCompiler:
    """`g++ (Ubuntu 11.4.0-1ubuntu1~22.04) 11.4.0` → GNU 11.4.0; `clang version 18.1.3` → Clang."""
    banner = output.strip().splitlines()[0] if output.strip() else ""
    family = "Clang" if "clang" in banner.lower() else "GNU" if re.search(r"g\+\+|gcc|c\+\+|GCC", banner) else ""
    versions = re.findall(r"(?<![\w.~-])(\d+\.\d+(?:\.\d+)?)(?![\w.-])", banner)
    return CxxCompiler(command, family or (banner.split()[0] if banner else "?"), versions[-1] if versions else None)


def query_cxx(env: Mapping[str, str], run: Query) -> CxxCompiler | None:
    """The compiler CMake's configure picks for C++ (`$CXX`, else `c++`); None when there is none."""
    command = env.get("CXX") or "c++"
    status, output = run([command, "--version"])
    return parse_cxx_version(command, output) if status == 0 else None


@dataclass(frozen=True)
class HostFacts:
    """Everything preflight judges about the machine, read once."""

    cpu_arch: str
    cpu_count: int
    mem_total_bytes: int
    mem_available_bytes: int
    workdir: Path
    workdir_free_bytes: int
    cache_dir: Path
    cache_free_bytes: int
    cache_on_workdir_fs: bool
    gpus: tuple[Gpu, ...]
    gpu_query_error: str | None
    nvcc: Path | None
    nvcc_version: Version | None
    nvcc_build: str | None
    cuda_home: Path | None
    cuda_home_env: str | None
    ptxas: Path | None
    probes: tuple[ArchProbe, ...]
    python_version: str
    uv_version: str | None
    git_version: str | None
    ld_library_path: tuple[str, ...]
    cuda12_lib_dirs: tuple[str, ...]
    cuda13_lib_dirs: tuple[str, ...]
    torch: TorchInfo | None
    torch_query_error: str | None
    triton_ptxas_path: str | None
    triton_ptxas_blackwell_path: str | None
    triton_ptxas_path_exists: bool
    target_arch_option: str | None = None
    notes: tuple[str, ...] = field(default=())
    cxx: CxxCompiler | None = None  # the host C++ compiler CMake would pick (`$CXX`, else `c++`)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data for the host report and `doctor --json`."""
        plain: dict[str, Any] = json.loads(json.dumps(asdict(self), default=str))
        return plain


def parse_nvidia_smi(output: str) -> tuple[Gpu, ...]:
    """GPUs from `--format=csv,noheader` lines: `NVIDIA GB10, 12.1, 580.95.05`."""
    gpus = []
    for line in output.splitlines():
        fields = [part.strip() for part in line.split(",")]
        if len(fields) != 3 or not re.fullmatch(r"\d+\.\d+", fields[1]):
            continue
        gpus.append(Gpu(name=fields[0], compute_cap=fields[1], driver_version=fields[2]))
    return tuple(gpus)


def parse_tool_version(output: str) -> str | None:
    """The first dotted version in `git version 2.43.0` or `uv 0.9.2 (...)`."""
    match = re.search(r"\d+\.\d+(?:\.\d+)?", output)
    return match[0] if match else None


def parse_torch_version_py(text: str) -> str | None:
    """torch.version.cuda from the text of torch/version.py (`cuda: Optional[str] = '13.0'`)."""
    match = re.search(r"^cuda\b[^=\n]*=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, flags=re.MULTILINE)
    if match is None:
        return None
    return match[1] or match[2] or None


def cuda_lib_dirs(entries: Sequence[str], cuda_major: int) -> tuple[str, ...]:
    """The LD_LIBRARY_PATH entries, in order, that hold a CUDA `cuda_major` runtime library."""
    found = []
    for entry in entries:
        directory = Path(entry)
        if not directory.is_dir():
            continue
        if any(
            (directory / f"{stem}.{cuda_major}").exists() or any(directory.glob(f"{stem}.{cuda_major}.*"))
            for stem in _CUDA_SONAME_STEMS
        ):
            found.append(entry)
    return tuple(found)


def free_bytes(path: Path) -> int:
    """Free space where `path` is or will be created (its nearest existing parent)."""
    return shutil.disk_usage(_existing_parent(path)).free


def same_filesystem(first: Path, second: Path) -> bool:
    """Whether two (possibly not yet created) directories draw on the same free space."""
    return _existing_parent(first).stat().st_dev == _existing_parent(second).stat().st_dev


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _memory() -> tuple[int, int]:
    memory = psutil.virtual_memory()
    return memory.total, memory.available


def _cpu_count() -> int:
    # Affinity, not os.cpu_count(): a container or `taskset` may give us fewer cores.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def find_nvcc(env: Mapping[str, str]) -> tuple[Path | None, Path | None]:
    """(nvcc, CUDA home) the build will use: `$CUDA_HOME/bin/nvcc`, else the toolkit of the
    nvcc on PATH, else /usr/local/cuda — the order torch's `cpp_extension._find_cuda_home`
    searches, except that an nvcc on PATH only counts when it sits in a toolkit root.

    Why the exception: distributions and containers put wrapper scripts in /usr/local/bin or
    /usr/bin; torch would then take /usr/local as CUDA_HOME and CMake would find no headers.
    """
    cuda_home_env = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if cuda_home_env:
        home = Path(cuda_home_env)
        nvcc = home / "bin" / "nvcc"
        return (nvcc if nvcc.is_file() else None), home
    on_path = shutil.which("nvcc", path=env.get("PATH", ""))
    if on_path:
        nvcc = Path(on_path).resolve()
        if _is_toolkit_root(nvcc.parent.parent):
            return nvcc, nvcc.parent.parent
    default = Path("/usr/local/cuda")
    if (default / "bin" / "nvcc").is_file():
        return default / "bin" / "nvcc", default
    if on_path:
        return Path(on_path), None
    return None, None


def _is_toolkit_root(path: Path) -> bool:
    return (path / "bin" / "nvcc").is_file() and (path / "include" / "cuda_runtime.h").is_file()


def _find_uv(env: Mapping[str, str]) -> str | None:
    # spark-build depends on the `uv` package, whose binary sits next to our interpreter even
    # when that venv's bin/ is not on PATH.
    on_path = shutil.which("uv", path=env.get("PATH", ""))
    if on_path:
        return on_path
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else None


def target_entries(arch_option: str | None, gpus: Sequence[Gpu]) -> tuple[archmap.ArchEntry, ...]:
    """The archs a build targets: `--arch` when given, else the native arch of each GPU here.

    Raises `UsageError` for a malformed `--arch` or a GPU newer than the arch table.
    """
    if arch_option:
        return archmap.parse_arch_list(arch_option)
    natives = [archmap.arch_for_compute_capability(gpu.compute_cap) for gpu in gpus]
    return archmap.parse_arch_list(";".join(natives)) if natives else ()


def query_torch(python: Path, run: Query) -> tuple[TorchInfo | None, str | None]:
    """The torch importable by `python`, without importing it; (None, None) when absent."""
    status, output = run([str(python), "-c", _TORCH_QUERY])
    if status != 0:
        return None, f"{python} could not be asked about torch: {output.strip()[-200:]}"
    try:
        found = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, f"unexpected answer from {python}: {output.strip()[-200:]}"
    if found is None:
        return None, None
    location = Path(found["location"]) if found.get("location") else None
    cuda = parse_torch_version_py(found["version_py"])
    return TorchInfo(found["version"], cuda, python, location, found.get("triton")), None


NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]


@dataclass(frozen=True)
class GpuQuery:
    """nvidia-smi's answer, asked once per run (the target and preflight both read it)."""

    gpus: tuple[Gpu, ...]
    error: str | None  # why none were listed (no driver, no nvidia-smi)


def query_gpus(run: Query = run_command) -> GpuQuery:
    status, output = run(NVIDIA_SMI)
    gpus = parse_nvidia_smi(output) if status == 0 else ()
    error = None
    if not gpus:
        error = output.strip().splitlines()[0] if output.strip() else f"exit status {status}"
    return GpuQuery(tuple(gpus), error)


def gather_host(
    workdir: Path,
    cache_dir: Path,
    *,
    arch: str | None = None,
    python: Path | None = None,
    gpu_query: GpuQuery | None = None,
    run: Query = run_command,
    env: Mapping[str, str] = os.environ,
    memory: Callable[[], tuple[int, int]] = _memory,
    cpu_count: Callable[[], int] = _cpu_count,
    disk_free: Callable[[Path], int] = free_bytes,
    same_fs: Callable[[Path, Path], bool] = same_filesystem,
    probe: Callable[..., ArchProbe] = probe_nvcc,
) -> HostFacts:
    """Read the machine once. Nothing here judges; `rules.evaluate` does.

    `arch` is the `--arch` option (the archs to probe nvcc for; default: this GPU's native
    arch). `python` is the interpreter whose torch the build would use (default: this one).
    """
    notes: list[str] = []
    total, available = memory()
    asked = gpu_query if gpu_query is not None else query_gpus(run)
    toolkit = _toolkit(env, run, notes)
    probes = _nvcc_probes(arch, asked.gpus, toolkit, cache_dir, run, probe, notes)
    uv_version, git_version = _tool_versions(env, run)
    torch, torch_query_error = query_torch(python or Path(sys.executable), run)
    return HostFacts(
        cpu_arch=platform.machine(),
        cpu_count=cpu_count(),
        mem_total_bytes=total,
        mem_available_bytes=available,
        workdir=workdir,
        workdir_free_bytes=disk_free(workdir),
        cache_dir=cache_dir,
        cache_free_bytes=disk_free(cache_dir),
        cache_on_workdir_fs=same_fs(workdir, cache_dir),
        gpus=asked.gpus,
        gpu_query_error=asked.error,
        nvcc=toolkit.nvcc,
        nvcc_version=toolkit.version,
        nvcc_build=toolkit.build,
        cuda_home=toolkit.cuda_home,
        ptxas=toolkit.ptxas,
        probes=probes,
        python_version=platform.python_version(),
        uv_version=uv_version,
        git_version=git_version,
        torch=torch,
        torch_query_error=torch_query_error,
        target_arch_option=arch,
        notes=tuple(notes),
        cxx=query_cxx(env, run),
        **_environment_facts(env),
    )


@dataclass(frozen=True)
class _Toolkit:
    nvcc: Path | None
    cuda_home: Path | None
    version: Version | None
    build: str | None
    ptxas: Path | None


def nvcc_version(env: Mapping[str, str], run: Query) -> Version | None:
    """The version of the nvcc the build would find with `env` (CUDA_HOME, PATH), if any."""
    return _toolkit(env, run, []).version


def _toolkit(env: Mapping[str, str], run: Query, notes: list[str]) -> _Toolkit:
    """nvcc found the way the build finds it, its version as it reports it, and the ptxas
    beside it (what Triton should be pointed at)."""
    nvcc, cuda_home = find_nvcc(env)
    version: Version | None = None
    build: str | None = None
    if nvcc is not None:
        status, output = run([str(nvcc), "--version"])
        if status == 0:
            version, build = parse_nvcc_version(output)
        else:
            notes.append(f"{nvcc} --version failed: {output.strip()[:200]}")
    ptxas = cuda_home / "bin" / "ptxas" if cuda_home is not None else None
    if ptxas is not None and not ptxas.is_file():
        ptxas = None
    return _Toolkit(nvcc, cuda_home, version, build, ptxas)


def _nvcc_probes(
    arch: str | None,
    gpus: tuple[Gpu, ...],
    toolkit: _Toolkit,
    cache_dir: Path,
    run: Query,
    probe: Callable[..., ArchProbe],
    notes: list[str],
) -> tuple[ArchProbe, ...]:
    """nvcc asked to compile for each target arch; a target that cannot be resolved is noted
    here and judged by the rules, not raised."""
    try:
        targets = target_entries(arch, gpus)
    except UsageError as error:
        notes.append(error.message)
        return ()
    if toolkit.nvcc is None or toolkit.build is None:
        return ()
    return tuple(probe(toolkit.nvcc, entry, cache_dir, run=run, nvcc_build=toolkit.build) for entry in targets)


def _tool_versions(env: Mapping[str, str], run: Query) -> tuple[str | None, str | None]:
    """uv's and git's versions; None for a tool that is missing or will not say."""
    uv = _find_uv(env)
    uv_version = None
    if uv is not None:
        status, output = run([uv, "--version"])
        uv_version = parse_tool_version(output) if status == 0 else None
    status, output = run(["git", "--version"])
    git_version = parse_tool_version(output) if status == 0 else None
    return uv_version, git_version


def _environment_facts(env: Mapping[str, str]) -> dict[str, Any]:
    """The HostFacts fields read from the environment alone: CUDA_HOME, the library path and
    its CUDA 12/13 folders, and Triton's ptxas variables."""
    ld_library_path = tuple(entry for entry in env.get("LD_LIBRARY_PATH", "").split(":") if entry)
    return {
        "cuda_home_env": env.get("CUDA_HOME") or env.get("CUDA_PATH") or None,
        "ld_library_path": ld_library_path,
        "cuda12_lib_dirs": cuda_lib_dirs(ld_library_path, 12),
        "cuda13_lib_dirs": cuda_lib_dirs(ld_library_path, 13),
        "triton_ptxas_path": env.get("TRITON_PTXAS_PATH") or None,
        "triton_ptxas_blackwell_path": env.get("TRITON_PTXAS_BLACKWELL_PATH") or None,
        "triton_ptxas_path_exists": bool(env.get("TRITON_PTXAS_PATH")) and Path(env["TRITON_PTXAS_PATH"]).is_file(),
    }
