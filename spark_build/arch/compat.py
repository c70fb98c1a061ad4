"""Which compiled GPU code runs on which GPU — NVIDIA's compatibility rules as pure data.

A wheel built for the wrong arch imports fine and then fails at the first kernel launch with
"no kernel image is available for execution on the device". The rules that decide this are
easy to get wrong by eye, so they live here, once, with a test per rule:

- SASS ``sm_XY`` (a cubin) runs on compute capability ``X.Z`` with ``Z >= Y``: binary
  compatibility holds across later minors of the same major, never across majors.
- SASS ``sm_XYa`` uses architecture-specific features and runs only on exactly ``X.Y``
  (``sm_120a`` does not run on the DGX Spark's 12.1).
- SASS ``sm_XYf`` (CUDA 12.9+) uses family-specific features, which NVIDIA guarantees on the
  same major at an equal or later minor (``sm_120f`` runs on 12.0 and 12.1, ``sm_100f`` on
  10.0 and 10.3).
- PTX ``compute_XY`` is JIT-compiled by the driver for any GPU of capability ``>= X.Y``.
- PTX ``compute_XYa`` is arch-conditional and can be JIT-compiled only for ``X.Y`` itself;
  PTX ``compute_XYf`` only within its family (same major, equal or later minor).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum

_CC_RE = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d)$")
_CODE_RE = re.compile(r"^(?P<kind>sm|compute)_(?P<num>\d{2,4})(?P<variant>[af]?)$")


@dataclass(frozen=True, order=True)
class ComputeCapability:
    """A GPU's compute capability, e.g. 12.1 for the GB10 in the DGX Spark."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ComputeCapability:
        """Read ``12.1`` as printed by ``nvidia-smi --query-gpu=compute_cap``."""
        match = _CC_RE.match(text.strip())
        if match is None:
            raise ValueError(f"not a compute capability: {text!r} (expected e.g. '12.1')")
        return cls(int(match["major"]), int(match["minor"]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


class CodeKind(Enum):
    """SASS is machine code for one GPU generation; PTX is the virtual ISA the driver JITs."""

    SASS = "sass"
    PTX = "ptx"


class Variant(Enum):
    """The suffix that narrows where code may run: none, ``a`` (one GPU), ``f`` (a family)."""

    PLAIN = ""
    ARCH_SPECIFIC = "a"
    FAMILY_SPECIFIC = "f"


@dataclass(frozen=True)
class GpuCode:
    """One piece of device code an extension carries: a cubin (SASS) or a PTX module."""

    kind: CodeKind
    major: int
    minor: int
    variant: Variant = Variant.PLAIN

    @classmethod
    def parse(cls, name: str) -> GpuCode:
        """Read ``sm_121a`` (SASS) or ``compute_80`` (PTX), the names nvcc's ``-gencode`` uses."""
        match = _CODE_RE.match(name.strip())
        if match is None:
            raise ValueError(f"not a GPU arch name: {name!r} (expected e.g. 'sm_121a', 'sm_120f' or 'compute_80')")
        num = match["num"]
        kind = CodeKind.SASS if match["kind"] == "sm" else CodeKind.PTX
        # NVIDIA's names put the minor in the last digit: sm_75 is 7.5, sm_121 is 12.1.
        return cls(kind, int(num[:-1]), int(num[-1]), Variant(match["variant"]))

    def as_ptx(self) -> GpuCode:
        """The same arch as PTX: cuobjdump names PTX ``sm_80`` where nvcc says ``compute_80``."""
        return replace(self, kind=CodeKind.PTX)

    @property
    def capability(self) -> ComputeCapability:
        return ComputeCapability(self.major, self.minor)

    @property
    def name(self) -> str:
        prefix = "sm" if self.kind is CodeKind.SASS else "compute"
        return f"{prefix}_{self.major}{self.minor}{self.variant.value}"

    def __str__(self) -> str:
        return self.name


class Verdict(Enum):
    """What the target GPU can do with a piece of code, best first."""

    NATIVE = "native"
    JIT = "jit"
    CANNOT_RUN = "cannot run"

    @property
    def rank(self) -> int:
        """Higher is better; used to combine verdicts."""
        return {Verdict.NATIVE: 2, Verdict.JIT: 1, Verdict.CANNOT_RUN: 0}[self]


def _in_family(code: GpuCode, gpu: ComputeCapability) -> bool:
    return gpu.major == code.major and gpu.minor >= code.minor


def runs_on(code: GpuCode, gpu: ComputeCapability) -> Verdict:
    """Judge one piece of code against the GPU by the rules in this module's docstring."""
    exact = gpu == code.capability
    if code.kind is CodeKind.SASS:
        # Plain and family cubins both run on later minors of the same major.
        fits = exact if code.variant is Variant.ARCH_SPECIFIC else _in_family(code, gpu)
        return Verdict.NATIVE if fits else Verdict.CANNOT_RUN
    if code.variant is Variant.ARCH_SPECIFIC:
        fits = exact
    elif code.variant is Variant.FAMILY_SPECIFIC:
        fits = _in_family(code, gpu)
    else:
        fits = gpu >= code.capability
    return Verdict.JIT if fits else Verdict.CANNOT_RUN


def best_verdict(verdicts: Iterable[Verdict]) -> Verdict:
    """The verdict for a set of alternatives: the driver picks the best image it can use.

    An empty set cannot run — there is nothing to load.
    """
    return max(verdicts, key=lambda v: v.rank, default=Verdict.CANNOT_RUN)


def best_on(codes: Iterable[GpuCode], gpu: ComputeCapability) -> Verdict:
    """The verdict for an extension or kernel carrying all of ``codes``."""
    return best_verdict(runs_on(code, gpu) for code in codes)
