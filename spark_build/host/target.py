"""The target architecture: named with --arch, or read from the GPUs in this machine.

Resolved once, before anything runs, so a typo (`sm_121a`, `12.1A`) or a machine with no GPU
and no --arch stops the build at second zero with the fix.
"""

from __future__ import annotations

from collections.abc import Callable

from spark_build.arch import archlist as archmap
from spark_build.errors import UsageError
from spark_build.host.facts import parse_nvidia_smi, target_entries
from spark_build.host.query import run_command

NVIDIA_SMI = ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]


def resolve_arch(
    arch: str | None,
    *,
    run: Callable[..., tuple[int, str]] = run_command,
) -> str:
    """TORCH_CUDA_ARCH_LIST for the build: the option, normalised, or the GPUs' native archs."""
    if arch:
        return archmap.format_arch_list(archmap.parse_arch_list(arch))
    code, output = run(NVIDIA_SMI)
    gpus = parse_nvidia_smi(output) if code == 0 else ()
    entries = target_entries(None, gpus)
    if not entries:
        raise UsageError(
            "no NVIDIA GPU found (nvidia-smi lists none) and no --arch given",
            hint="name the target, e.g. --arch 12.1a for a DGX Spark",
        )
    return archmap.format_arch_list(entries)
