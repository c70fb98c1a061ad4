"""Memory sizes as users type them (`16G`, `1.5GiB`, `512M`) and as messages print them.

One parser for every size option (`--mem-budget`, `--mem-reserve`, `--cache-size`), so a
typo is refused the same way everywhere and `64` never silently means 64 bytes in one place
and 64 GiB in another.
"""

from __future__ import annotations

import math
import re

from spark_build.errors import UsageError

KIB = 1024
GIB = 1024**3
_UNITS = {"": 1, "K": KIB, "M": KIB**2, "G": KIB**3, "T": KIB**4}
_SIZE = re.compile(r"^\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[KMGT]?)(?:I?B)?\s*$", re.I)


def parse_mem_size(text: str, *, option: str = "--mem-budget", allow_zero: bool = False) -> int:
    """Bytes from `16G`, `1.5GiB`, `512M`, `64GB`, `2T` or `4096B`; a bare number has no unit and is refused.

    Units are binary (1G = 2**30) with or without `B`/`iB`, as build tools and `free -g` use
    them. Zero, negative and unparseable sizes raise `UsageError` (exit 2): a budget of 0 would
    plan no job at all, and silently falling back to a default would hide the typo.
    """
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(
            f"{option} {text!r} is not a memory size", hint=f"give a size such as {option} 16G, 1.5G or 512M"
        )
    value = float(match["num"]) * _UNITS[match["unit"].upper()]
    if allow_zero and value == 0:
        return 0  # a reserve may be nothing; a budget may not
    if value < 1 or not math.isfinite(value):
        raise UsageError(
            f"{option} {text!r} must be a positive size", hint=f"give a size such as {option} 16G, 1.5G or 512M"
        )
    if not match["unit"] and not text.strip().upper().endswith("B"):
        # `--mem-budget 64` meant 64 bytes and planned a one-job compile; nobody means bytes.
        raise UsageError(
            f"{option} {text.strip()!r} has no unit",
            hint=f"give a unit, e.g. {option} {text.strip()}G (or …B for bytes)",
        )
    return int(value)


def format_bytes(n: float) -> str:
    """`2.6 GiB`: sizes in plan reasons and error messages, one unit throughout."""
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / KIB**2:.0f} MiB"
