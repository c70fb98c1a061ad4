"""CUDA target archs: parse `TORCH_CUDA_ARCH_LIST`, pick the GPU's target, know which nvcc builds it.

Why a module of its own: the arch list is the one input that decides whether the wheel runs on
the Spark at all. A typo (`12.1` instead of `12.1a`, `sm_121a`, `8.0+ptx`) is not rejected by
vLLM's CMake; `cuda_archs_loose_intersection` in vLLM's `cmake/utils.cmake` silently drops or
collapses what it does not know, and the mistake shows up 30 minutes later as a kernel that
will not load. So the value is validated here, once, with a message that names the bad item.

Suffixes, as nvcc (12.9+) defines them:
- `a` (arch-specific, e.g. `12.1a`): SASS and features for exactly that compute capability;
  runs on no other GPU. Exists from 9.0 on.
- `f` (family-specific, e.g. `12.0f`, CUDA >= 12.9): runs on later GPUs of the same family
  (a `12.0f` cubin runs on 12.1). Exists from 10.0 on.
- none: plain SASS, runs on the same major with an equal or higher minor.
- `+PTX`: also embed PTX, which the driver can JIT-compile for any later GPU.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from packaging.version import Version

from spark_build.errors import UsageError

Suffix = Literal["", "a", "f"]

_ENTRY = re.compile(r"(?P<major>\d{1,2})\.(?P<minor>\d)(?P<suffix>[af]?)(?P<ptx>\+PTX)?")
_SM_NAME = re.compile(r"(?:sm|compute)_(?P<major>\d{1,2})(?P<minor>\d)(?P<suffix>[af]?)", re.IGNORECASE)
_VALID_FORMS = "valid forms: 12.1a, 9.0, 8.0+PTX, 12.0f; several separated by ';' or spaces"


@dataclass(frozen=True, order=True)
class ArchEntry:
    """One item of a `TORCH_CUDA_ARCH_LIST`, e.g. `12.1a` or `8.0+PTX`."""

    major: int
    minor: int
    suffix: Suffix = ""
    ptx: bool = False

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}{self.suffix}{'+PTX' if self.ptx else ''}"

    @property
    def compute_capability(self) -> str:
        """The GPU generation the entry is built for, in nvidia-smi's `compute_cap` form."""
        return f"{self.major}.{self.minor}"


# Compute capability -> TORCH_CUDA_ARCH_LIST entry for the GPU itself. From 9.0 on a GPU's
# tensor-core instructions (wgmma, tcgen05, the 12.x block-scaled MMA) exist only in the
# arch-specific `a` target, and vLLM's CUTLASS kernels need them, so the native entry is `a`.
# 10.3 is B300/GB300 (CUDA 12.9). Anything older than 9.0 maps to the plain number.
_NATIVE_ARCH: dict[str, str] = {
    "12.1": "12.1a",  # GB10 (DGX Spark)
    "12.0": "12.0a",  # RTX 50xx, RTX PRO 6000 Blackwell
    "11.0": "11.0a",  # Jetson Thor (10.1 before CUDA 13)
    "10.3": "10.3a",  # B300 / GB300
    "10.0": "10.0a",  # B200 / GB200
    "9.0": "9.0a",  # H100 / H200 / GH200
}

# Oldest CUDA whose nvcc can target the compute capability (CUDA release notes and features
# archive). 12.1 and 10.3 came with CUDA 12.9; Thor is 11.0 only from CUDA 13.0, where it was
# renamed from 10.1.
_MIN_CUDA: dict[tuple[int, int], str] = {
    (12, 1): "12.9",
    (12, 0): "12.8",
    (11, 0): "13.0",
    (10, 3): "12.9",
    (10, 1): "12.8",
    (10, 0): "12.8",
    (9, 0): "11.8",
    (8, 9): "11.8",
    (8, 7): "11.4",
    (8, 6): "11.1",
    (8, 0): "11.0",
    (7, 5): "10.0",
    (7, 2): "10.0",
    (7, 0): "9.0",
    (6, 2): "8.0",
    (6, 1): "8.0",
    (6, 0): "8.0",
    (5, 3): "7.0",
    (5, 2): "6.5",
    (5, 0): "6.0",
}

# Architectures a newer CUDA no longer compiles for: CUDA 13.0 dropped offline compilation for
# Maxwell, Pascal and Volta (5.x-7.2) and renamed Thor's 10.1 to 11.0.
_LAST_CUDA_MAJOR: dict[tuple[int, int], int] = {
    (10, 1): 12,
    (7, 2): 12,
    (7, 0): 12,
    (6, 2): 12,
    (6, 1): 12,
    (6, 0): 12,
    (5, 3): 12,
    (5, 2): 12,
    (5, 0): 12,
}

_ARCH_SPECIFIC_SINCE = 9  # `a` targets exist from compute capability 9.0 on
_FAMILY_SINCE = 10  # `f` targets exist from 10.0 on
_FAMILY_MIN_CUDA = Version("12.9")  # nvcc learnt `f` targets in CUDA 12.9
_ARCH_SPECIFIC_MIN_CUDA = Version("12.0")  # `9.0a` arrived with CUDA 12.0, a year after sm_90


def parse_arch_entry(item: str) -> ArchEntry:
    """One item of an arch list; a `UsageError` names the item and the nearest valid form."""
    match = _ENTRY.fullmatch(item)
    if match is None:
        raise UsageError(f"bad CUDA arch {item!r} — {_VALID_FORMS}", hint=_suggestion(item))
    major, minor = int(match["major"]), int(match["minor"])
    suffix: Suffix = match["suffix"]  # type: ignore[assignment]  # the regex allows only "", a, f
    if suffix == "a" and major < _ARCH_SPECIFIC_SINCE:
        raise UsageError(
            f"bad CUDA arch {item!r} — arch-specific 'a' targets exist from 9.0 on",
            hint=f"use {major}.{minor}",
        )
    if suffix == "f" and major < _FAMILY_SINCE:
        raise UsageError(
            f"bad CUDA arch {item!r} — family 'f' targets exist from 10.0 on",
            hint=f"use {major}.{minor}",
        )
    return ArchEntry(major, minor, suffix, ptx=match["ptx"] is not None)


def parse_arch_list(value: str) -> tuple[ArchEntry, ...]:
    """Parse `12.0a;12.1a` or `8.0 9.0a+PTX` into entries, in order, duplicates dropped.

    Torch's `TORCH_CUDA_ARCH_LIST` takes `;` or spaces; named generations (`Ampere`) are
    refused because a name hides which `a`/`f` variant is built, which is the whole question
    on a 12.1 GPU.
    """
    items = [item for item in re.split(r"[;\s]+", value.strip()) if item]
    if not items:
        raise UsageError("empty CUDA arch list", hint="pass e.g. --arch 12.1a")
    entries: list[ArchEntry] = []
    for item in items:
        entry = parse_arch_entry(item)
        if entry not in entries:
            entries.append(entry)
    return tuple(entries)


def recipe_arch(value: str) -> str:
    """The one arch a recipe is read for: the newest entry of the list (`8.0;12.1a` -> `12.1a`),
    the GPU the build is for; older entries only add code (as `8.0+PTX` does) and never change
    what the source needs. Refuses a malformed list as `parse_arch_list` does."""
    newest = max(parse_arch_list(value))
    return str(ArchEntry(newest.major, newest.minor, newest.suffix))


def format_arch_list(entries: Iterable[ArchEntry]) -> str:
    """The `TORCH_CUDA_ARCH_LIST` value for entries, `;`-separated as vLLM's CMake expects."""
    return ";".join(str(entry) for entry in entries)


def arch_for_compute_capability(compute_cap: str) -> str:
    """The arch-list entry that runs natively on a GPU of this compute capability.

    `compute_cap` is nvidia-smi's `compute_cap` field (`12.1`). A GPU newer than the table is
    not guessed at: its `a` variant may not exist yet, or need a newer nvcc.
    """
    match = re.fullmatch(r"(\d{1,2})\.(\d)", compute_cap.strip())
    if match is None:
        raise UsageError(
            f"cannot read compute capability {compute_cap!r} (expected e.g. 12.1)",
            hint="pass the target with --arch, e.g. --arch 12.1a",
        )
    cc = f"{int(match[1])}.{int(match[2])}"
    if cc in _NATIVE_ARCH:
        return _NATIVE_ARCH[cc]
    if int(match[1]) < _ARCH_SPECIFIC_SINCE:
        return cc
    raise UsageError(
        f"compute capability {cc} is not in spark-build's arch table",
        hint=f"pass the target with --arch (e.g. --arch {cc}a) if your nvcc supports it",
    )


def is_known(entry: ArchEntry) -> bool:
    """Whether the tables here know which CUDA can build `entry`."""
    return (entry.major, entry.minor) in _MIN_CUDA


def min_cuda_for(arch: str | ArchEntry) -> Version:
    """The oldest CUDA toolkit whose nvcc can build `arch` (`12.1a` -> 12.9)."""
    entry = arch if isinstance(arch, ArchEntry) else parse_arch_entry(arch)
    base = _MIN_CUDA.get((entry.major, entry.minor))
    if base is None:
        raise UsageError(
            f"no known CUDA minimum for arch {entry}",
            hint="check that nvcc lists it: nvcc --list-gpu-arch",
        )
    need = Version(base)
    if entry.suffix == "f":
        need = max(need, _FAMILY_MIN_CUDA)
    if entry.suffix == "a":
        need = max(need, _ARCH_SPECIFIC_MIN_CUDA)
    return need


def last_cuda_major_for(arch: str | ArchEntry) -> int | None:
    """The newest CUDA major that still builds `arch`, or None while current CUDA does."""
    entry = arch if isinstance(arch, ArchEntry) else parse_arch_entry(arch)
    return _LAST_CUDA_MAJOR.get((entry.major, entry.minor))


def sm_name(entry: ArchEntry) -> str:
    """nvcc's real-architecture name, `sm_121a`: what a cubin holds and ptxas is asked for."""
    return f"sm_{entry.major}{entry.minor}{entry.suffix}"


def compute_name(entry: ArchEntry) -> str:
    """nvcc's virtual-architecture name, `compute_121a`: the PTX the front end emits."""
    return f"compute_{entry.major}{entry.minor}{entry.suffix}"


def _suggestion(item: str) -> str:
    """The nearest valid spelling of a bad item, so the message says what to type instead."""
    sm = _SM_NAME.fullmatch(item)
    if sm is not None:
        return f"write {item!r} as {int(sm['major'])}.{sm['minor']}{sm['suffix'].lower()}"
    fixed = re.sub(r"\+ptx$", "+PTX", item, flags=re.IGNORECASE)
    if fixed != item and _ENTRY.fullmatch(fixed):
        return f"did you mean {fixed!r}? (+PTX is upper case)"
    digits = re.fullmatch(r"(\d{1,2})(\d)([af]?)", item)
    if digits is not None:
        return f"did you mean {int(digits[1])}.{digits[2]}{digits[3]}?"
    return "e.g. --arch 12.1a for the DGX Spark"
