"""The target: the GPUs one build is for, resolved once into a typed value every step reads.

Parsing `--arch` in each consumer gave three types and six parsers for one fact; a step that
needs `TORCH_CUDA_ARCH_LIST`, the compute capabilities to audit or the newest GPU asks this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from spark_build.arch.archlist import ArchEntry, arch_for_compute_capability, format_arch_list, parse_arch_list
from spark_build.arch.compat import ComputeCapability


@dataclass(frozen=True)
class Target:
    """The arch entries a build compiles for, and where they came from."""

    entries: tuple[ArchEntry, ...]
    origin: Literal["--arch", "gpu"]

    @classmethod
    def from_option(cls, arch: str) -> Target:
        """`--arch` as given; a malformed one raises `UsageError` naming the valid forms."""
        return cls(parse_arch_list(arch), "--arch")

    @classmethod
    def native_to(cls, compute_caps: Iterable[str]) -> Target:
        """The native arch of each GPU (`12.1` → `12.1a`); empty when there is none."""
        natives = [arch_for_compute_capability(cc) for cc in compute_caps]
        return cls(parse_arch_list(";".join(natives)) if natives else (), "gpu")

    @property
    def arch_list(self) -> str:
        """`TORCH_CUDA_ARCH_LIST`, normalised (`12.1A` and ` 12.1a` both read `12.1a`)."""
        return format_arch_list(self.entries)

    @property
    def compute_capabilities(self) -> tuple[str, ...]:
        """The distinct GPU generations built for: `9.0a;12.1a` → ("9.0", "12.1")."""
        return tuple(dict.fromkeys(entry.compute_capability for entry in self.entries))

    @property
    def newest(self) -> ComputeCapability:
        """The GPU the arch plan judges against when no GPU is in the machine."""
        return ComputeCapability.parse(max(self.entries).compute_capability)

    def __str__(self) -> str:
        return self.arch_list
