"""The target architecture: named with --arch, or read from the GPUs in this machine.

Resolved once, before anything runs, so a typo (`sm_121a`, `12.1A`) or a machine with no GPU
and no --arch stops the build at second zero with the fix. nvidia-smi is asked once per run:
the answer goes to the target here and to preflight's host facts.
"""

from __future__ import annotations

from collections.abc import Sequence

from spark_build.arch.target import Target
from spark_build.errors import UsageError
from spark_build.host.facts import Gpu


def resolve_target(arch: str | None, gpus: Sequence[Gpu]) -> Target:
    """The option, normalised, or the GPUs' native archs; neither → a bad-input error."""
    if arch:
        return Target.from_option(arch)
    target = Target.native_to(gpu.compute_cap for gpu in gpus)
    if not target.entries:
        raise UsageError(
            "no NVIDIA GPU found (nvidia-smi lists none) and no --arch given",
            hint="name the target, e.g. --arch 12.1a for a DGX Spark",
        )
    return target
