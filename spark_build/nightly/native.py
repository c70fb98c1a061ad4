"""`--prefer-wheel --native`: which extension targets of an official wheel the target GPU runs
only by PTX JIT, and whether rebuilding them here would make them native — before anything is
compiled, so the completion never rebuilds a target for nothing.

Every official vLLM wheel from 0.13.0 to 0.33.0 ships FA2 as `sm_80` + PTX: a GB10 runs it, but
the driver compiles the PTX at the first model load (minutes, `wheel.jitbill`). Rebuilding the
target for 12.1a helps only where the release's CMake then compiles the family for 12.x. The
official build already asked for 12.x when some extension of its wheel carries SASS the target
runs natively; a family it still left on PTX is one its CMake keeps there (FA2 is intersected
with "8.0+PTX" whatever the list), and only a patch of ours in the release's range that compiles
the family for 12.x (its `Native:` header, 0007 for 0.13.x) changes that. A wheel whose build
asked for no 12.x arch at all is rebuilt with the release's own CMake asked for the target, and
the completed wheel's arch table says whether that made it native (`not_native_after`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from spark_build.arch.compat import Verdict
from spark_build.arch.jitcost import STAYS_JIT
from spark_build.upstream.patches import ScopedPatch, read_series


@dataclass(frozen=True)
class JitFamily:
    """One kernel family of one extension that the target runs only by PTX JIT, as the proof's
    JIT bill prices it."""

    extension: str  # its file in the wheel, `vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so`
    family: str  # `FA2`, or the extension's module name for kernels of no named family
    modules: int
    ptx_mb: float
    jit_s: float

    @property
    def target(self) -> str:
        """The CMake target that builds the extension: `_vllm_fa2_C`."""
        return Path(self.extension).name.split(".", 1)[0]

    def bill(self) -> str:
        modules = f"{self.modules} module{'' if self.modules == 1 else 's'}"
        return f"runs by PTX JIT: {modules}, {self.ptx_mb:.1f} MB, ≈ {self.jit_s:.0f} s at first load"


@dataclass(frozen=True)
class Outlook:
    """What rebuilding a JIT family's target for the target GPU would give: native (`rebuild`)
    or not, and why either way (the patch, or the CMake, that compiles it as 12.x SASS)."""

    jit: JitFamily
    rebuild: bool
    why: str

    def line(self) -> str:
        return f"{self.jit.target} ({self.jit.family}): {self.jit.bill()}; {self.why}"


def jit_families(results: Mapping[str, Any]) -> tuple[JitFamily, ...]:
    """The JIT bill of the proof (`results["jit_bill"]`, one per target GPU), by family."""
    found = []
    for bill in results.get("jit_bill", {}).values():
        for line in bill.get("lines", []):
            # `wheel.jitbill` names a line `<extension path>: <family>`; a path holds no ": ".
            extension, _, family = str(line["family"]).partition(": ")
            found.append(JitFamily(extension, family, int(line["objects"]), line["ptx_mb"], line["jit_s"]))
    return tuple(found)


def asked_for_target(results: Mapping[str, Any]) -> str | None:
    """An extension of the wheel that carries SASS the target runs natively (None when none
    does): proof that the official build's arch list had the target's family."""
    for report in results.get("arch", []):
        for ext in report.get("extensions", []):
            if ext.get("verdict") == Verdict.NATIVE.value:
                return str(ext["path"])
    return None


def outlook(
    families: Sequence[JitFamily],
    *,
    version: Version,
    arch: str,
    patches: Sequence[ScopedPatch],
    official_native: str | None,
    stays_jit: Mapping[str, str] = STAYS_JIT,
) -> tuple[Outlook, ...]:
    """For each JIT family, whether a rebuild of its target for `arch` makes it native, and why.
    `patches`: the release's patch series; `official_native`: `asked_for_target`'s answer."""
    found = []
    for jit in families:
        patch = next((p for p in patches if p.covers(version) and jit.family in p.native), None)
        if jit.family in stays_jit:
            found.append(Outlook(jit, False, stays_jit[jit.family]))
        elif patch is not None:
            found.append(Outlook(jit, True, f"{patch.name} compiles it for 12.x in {version}"))
        elif official_native is not None:
            ranges = [p.label() for p in patches if jit.family in p.native]
            elsewhere = f" ({'; '.join(ranges)})" if ranges else ""
            found.append(
                Outlook(
                    jit,
                    False,
                    f"stays PTX JIT: the official build asked for 12.x ({official_native} is native) and "
                    f"{version}'s CMake still compiles {jit.family} as PTX only; no patch makes it native "
                    f"for {version}{elsewhere}, so a rebuild would change nothing",
                )
            )
        else:
            found.append(
                Outlook(
                    jit,
                    True,
                    f"the official build asked for no 12.x arch; the release's CMake is asked for {arch}",
                )
            )
    return tuple(found)


def rebuilt_in(seen: Sequence[Outlook], targets: Sequence[str]) -> tuple[Outlook, ...]:
    """The families a completion of `targets` makes native: those a rebuild helps, not the ones
    that stay JIT in the same target (`scaled_mm_c2x` in `_C`, rebuilt for its Marlin kernels)."""
    return tuple(o for o in seen if o.rebuild and o.jit.target in targets)


def not_native_after(rebuilt: Sequence[Outlook], results: Mapping[str, Any]) -> dict[str, str]:
    """The targets a `--native` completion rebuilt whose families the completed wheel's own
    proof still finds on PTX JIT → what it found: read from its arch table and JIT bill, never
    assumed from the rebuild."""
    still = {(j.extension, j.family): j for j in jit_families(results)}
    verdicts = {
        ext["path"]: ext.get("verdict") for report in results.get("arch", []) for ext in report.get("extensions", [])
    }
    left: dict[str, str] = {}
    for seen in rebuilt:
        jit = still.get((seen.jit.extension, seen.jit.family))
        verdict = verdicts.get(seen.jit.extension)
        if jit is not None:
            left[seen.jit.target] = f"{seen.jit.family} still {jit.bill()}"
        elif verdict != Verdict.NATIVE.value:
            left[seen.jit.target] = f"its arch table says {verdict or 'no device code'}, not native"
    return left


def native_patches(folder: Path) -> tuple[ScopedPatch, ...]:
    """The series' patches that compile kernel families as 12.x SASS (their `Native:` header)."""
    if not (folder / "series").is_file():
        return ()
    return tuple(p for p in read_series(folder) if p.native)
