"""The arch plan: which SASS and PTX vLLM's own CMake will build, judged against the target GPU.

vLLM's CMake decides per kernel family what to compile (`cuda_archs_loose_intersection` in its
`cmake/utils.cmake`): with CUDA 13, vLLM 0.13.0 turns a `12.1a` target into `12.0`, builds
some families as `12.0f`, others as `12.0a` or `8.0+PTX`. Reading that logic by eye is how
builds end with kernels that "will not run on this device" after 30 minutes of compiling.
So the plan is not re-derived: `cmake_configure.configure()` runs vLLM's real CMake configure (no compile,
~15 s), and the pure parsers below read its two outputs — the configure messages (`Building
scaled_mm_c3x_sm120 for archs: 12.0f`) and the per-object `-gencode` flags in
`compile_commands.json`, which are the ground truth — and `judge()` rules on each with
`compat.best_on` (the table is `plan_table`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_build.arch.cmake_configure import Configured, configure, setup_extensions
from spark_build.arch.compat import ComputeCapability, GpuCode, Verdict, best_on
from spark_build.arch.target_sources import target_of
from spark_build.errors import StepFailed
from spark_build.proc import Runner
from spark_build.upstream.fetched import FetchedSources

# ---------------------------------------------------------------------------------------------
# Parsers (pure)

_BUILDING = re.compile(r"^-- Building (?P<family>.+?) for archs: (?P<archs>.*)$")
_NOT_BUILDING = re.compile(r"^-- Not building (?P<family>.+?) as ")
_ARCHS_VAR = re.compile(r"^-- (?P<family>FA\d)_ARCHS: ?(?P<archs>.*)$")
_SUPPORTED = re.compile(r"^-- CUDA supported target architectures: ?(?P<archs>.*)$")
_QUTLASS_SKIP = re.compile(r"^-- \[QUTLASS\] Skipping build")

# The families that are not gated: every `.cu` of _C and _moe_C not named by a message.
COMMON_FAMILY = "common kernels (CUDA supported target architectures)"


def _arch_list(text: str) -> tuple[str, ...]:
    return tuple(a for a in re.split(r"[;\s]+", text.strip()) if a)


def parse_configure_messages(log: str) -> dict[str, tuple[str, ...]]:
    """Kernel family → the arch list vLLM's configure printed for it (empty: not built).

    The first "CUDA supported target architectures" line is vLLM's own (flash-attention
    prints its own later); a family printed as built keeps its archs even when a later block
    of the same name (NVFP4 for sm100 after NVFP4 for sm120) says "Not building".
    """
    families: dict[str, tuple[str, ...]] = {}
    for raw in log.splitlines():
        line = raw.rstrip()
        if (m := _SUPPORTED.match(line)) and COMMON_FAMILY not in families:
            families[COMMON_FAMILY] = _arch_list(m["archs"])
        elif m := _BUILDING.match(line):
            merged = families.get(m["family"], ()) + _arch_list(m["archs"])
            families[m["family"]] = tuple(dict.fromkeys(merged))
        elif m := _ARCHS_VAR.match(line):
            # The last one wins: patch 0007 re-sets FA2's archs after flash-attention printed its own.
            families[m["family"]] = _arch_list(m["archs"])
        elif m := _NOT_BUILDING.match(line):
            families.setdefault(m["family"].strip(), ())
        elif _QUTLASS_SKIP.match(line):
            families.setdefault("QUTLASS", ())
    return families


def codes_for_arch_list(archs: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SASS and PTX names vLLM's `set_gencode_flags_for_srcs` makes of an arch list:
    `12.0f` → sm_120f; `8.0+PTX` → sm_80 and compute_80."""
    sass: list[str] = []
    ptx: list[str] = []
    for arch in archs:
        base = arch.removesuffix("+PTX").replace(".", "")
        sass.append(f"sm_{base}")
        if arch.endswith("+PTX"):
            ptx.append(f"compute_{base}")
    return tuple(sass), tuple(ptx)


@dataclass(frozen=True)
class ObjectArchs:
    """One object of compile_commands.json and the device code nvcc is told to put in it."""

    object: str
    source: str
    target: str
    group: str
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    device_code: bool  # False for host-only C++ objects

    @property
    def arch_flags(self) -> bool:
        return bool(self.sass or self.ptx)


_GENCODE_VALUE = re.compile(r"arch=(?P<arch>compute_\w+),code=(?P<code>\[[^\]]*\]|[\w,]+)")


def gencode_codes(argv: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """SASS and PTX an nvcc command line asks for.

    Reads `-gencode arch=compute_X,code=sm_X`, `-gencode=…`, `--generate-code=…` (also with a
    `code=[sm_X,compute_X]` list) and the `-arch=sm_X` shorthand (SASS sm_X plus PTX compute_X).
    """
    sass: list[str] = []
    ptx: list[str] = []
    values: list[str] = []
    for i, token in enumerate(argv):
        for flag in ("-gencode", "--generate-code"):
            if token == flag and i + 1 < len(argv):
                values.append(argv[i + 1])
            elif token.startswith(flag + "="):
                values.append(token[len(flag) + 1 :])
        for flag in ("-arch", "--gpu-architecture"):
            value = argv[i + 1] if token == flag and i + 1 < len(argv) else None
            if token.startswith(flag + "="):
                value = token[len(flag) + 1 :]
            if value and value.startswith("sm_"):
                sass.append(value)
                ptx.append("compute_" + value.removeprefix("sm_"))
    for value in values:
        for m in _GENCODE_VALUE.finditer(value):
            for code in m["code"].strip("[]").split(","):
                if code.startswith("sm_"):
                    sass.append(code)
                elif code.startswith("compute_"):
                    ptx.append(code)
    return tuple(dict.fromkeys(sass)), tuple(dict.fromkeys(ptx))


def _group(source: Path, roots: Mapping[str, Path]) -> str:
    """Where an object's source lives: `csrc/quantization/fp4` for vLLM's own kernels (three
    folders deep at most), `qutlass:qutlass/csrc` for an external project's."""
    # Resolved too: CMake writes real paths, and a root may be given through a symlink.
    real = source.resolve()
    for label, root in sorted(roots.items(), key=lambda kv: -len(str(kv[1]))):
        if source.is_relative_to(root):
            rel = source.relative_to(root)
        elif real.is_relative_to(root.resolve()):
            rel = real.relative_to(root.resolve())
        else:
            continue
        parts = rel.parent.parts[:3] or (".",)
        where = "/".join(parts)
        return where if label == "vllm" else f"{label}:{where}"
    return str(source.parent)


def parse_compile_commands(entries: str | Sequence[Mapping[str, Any]], roots: Mapping[str, Path]) -> list[ObjectArchs]:
    """Every object of a compile_commands.json with the SASS and PTX its flags ask for.

    `roots` names where each project's sources are (`{"vllm": src, "qutlass": …}`), so objects
    group by project and folder.
    """
    data = json.loads(entries) if isinstance(entries, str) else entries
    objects = []
    for entry in data:
        argv = list(entry["arguments"]) if "arguments" in entry else shlex.split(entry["command"])
        source = Path(entry["file"])
        directory = Path(entry.get("directory", "."))
        output = str(entry.get("output") or "")
        output_rel = os.path.relpath(directory / output, directory) if output else source.name
        sass, ptx = gencode_codes(argv)
        objects.append(
            ObjectArchs(
                object=output_rel,
                source=str(source),
                target=target_of(output_rel) or "?",
                group=_group(source, roots),
                sass=sass,
                ptx=ptx,
                device_code=source.suffix == ".cu",
            )
        )
    return objects


# ---------------------------------------------------------------------------------------------
# Judging (pure)


@dataclass(frozen=True)
class PlanRow:
    """One line of the plan: a kernel family (from the messages) or a group of objects with the
    same codes (from compile_commands.json), and what the target GPU can do with it."""

    kind: str  # "family" or "objects"
    name: str
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    verdict: Verdict | None  # None: nothing is built for it
    objects: int = 0
    note: str = ""
    dead: bool = False  # objects compiled with no code for any target GPU: a cost, no kernel
    cpu_s: float | None = None  # dead weight's estimated compile CPU-s (None: no profile knows it)
    remedy: str = ""  # dead weight: the patch or option that removes it

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "objects": self.objects,
            "sass": list(self.sass),
            "ptx": list(self.ptx),
            "verdict": self.verdict.value if self.verdict else None,
            "note": self.note,
            "dead": self.dead,
            "cpu_s": self.cpu_s,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class CompileCosts:
    """Compile CPU-s per object from a measured profile (the shipped vLLM 0.13.0 one): the price
    of dead weight. An object the profile lacks is priced at its target's median, where the
    profile has that target (a newer release renames some FA3 instantiations, not their cost)."""

    by_object: Mapping[str, float]
    by_target: Mapping[str, float]  # median CPU-s of one object of the target

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any]) -> CompileCosts:
        by_object: dict[str, float] = {}
        per_target: dict[str, list[float]] = {}
        for row in profile.get("objects", []):
            if isinstance(row.get("cpu_s"), int | float) and row.get("output"):
                by_object[str(row["output"])] = float(row["cpu_s"])
                per_target.setdefault(str(row.get("target", "")), []).append(float(row["cpu_s"]))
        medians = {t: sorted(v)[len(v) // 2] for t, v in per_target.items() if v}
        return cls(by_object, medians)

    def estimate(self, objects: Sequence[ObjectArchs]) -> float | None:
        total = 0.0
        for obj in objects:
            cost = self.by_object.get(obj.object, self.by_target.get(obj.target))
            if cost is None:
                return None
            total += cost
        return total


@dataclass(frozen=True)
class ParsedPlan:
    families: Mapping[str, tuple[str, ...]]
    objects: tuple[ObjectArchs, ...]


def _verdict(sass: Iterable[str], ptx: Iterable[str], target: ComputeCapability) -> Verdict:
    codes = [GpuCode.parse(c) for c in sass] + [GpuCode.parse(c) for c in ptx]
    return best_on(codes, target)


def judge(
    plan: ParsedPlan,
    target: ComputeCapability,
    built: frozenset[str] | None = None,
    costs: CompileCosts | None = None,
    remedies: Mapping[str, str] | None = None,
) -> tuple[PlanRow, ...]:
    """Rows for every family and every (object group, codes) pair, each with its verdict.

    `built` is the set of CMake targets the source's setup.py builds (None: unknown, every
    configured target counts). Objects of a built target that get no `-gencode` compile nvcc's
    default arch and run on nothing: dead weight (FA3 on a 12.x target, 37 % of vLLM 0.13.0's
    compile), priced from `costs` and named with what removes it (`remedies`, by CMake target);
    objects of a target setup.py skips cost nothing and say so."""
    rows: list[PlanRow] = []
    for family, archs in plan.families.items():
        if not archs:
            rows.append(PlanRow("family", family, (), (), None, note="no arch for this target"))
            continue
        sass, ptx = codes_for_arch_list(archs)
        rows.append(PlanRow("family", family, sass, ptx, _verdict(sass, ptx, target), note=";".join(archs)))
    groups: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], list[ObjectArchs]] = {}
    for obj in plan.objects:
        if obj.device_code:
            groups.setdefault((obj.target, f"{obj.target} {obj.group}", obj.sass, obj.ptx), []).append(obj)
    for (cmake_target, name, sass, ptx), members in sorted(groups.items()):
        count = len(members)
        if sass or ptx:
            rows.append(PlanRow("objects", name, sass, ptx, _verdict(sass, ptx, target), objects=count))
        elif built is not None and cmake_target not in built:
            note = f"no -gencode, not built: setup.py skips {cmake_target} for this arch list"
            rows.append(PlanRow("objects", name, (), (), None, objects=count, note=note))
        else:
            # nvcc then builds for its default arch (sm_75 in CUDA 13): the family's gate chose
            # nothing for this target, yet the objects are still compiled.
            cpu_s = costs.estimate(members) if costs is not None else None
            remedy = (remedies or {}).get(cmake_target, "")
            note = "no -gencode: nvcc's default arch, runs on no target GPU" + (
                f"; ≈ {cpu_s:,.0f} CPU-s" if cpu_s is not None else ""
            )
            note += f"; {remedy}" if remedy else ""
            rows.append(
                PlanRow("objects", name, (), (), None, objects=count, note=note, dead=True, cpu_s=cpu_s, remedy=remedy)
            )
    return tuple(rows)


def problems(rows: Iterable[PlanRow]) -> list[PlanRow]:
    """Rows whose code the target cannot run but vLLM would dispatch: a kernel that fails at
    launch. Code for no target GPU at all is dead weight (`dead_weight`), a cost, not a stop."""
    return [row for row in rows if row.verdict is Verdict.CANNOT_RUN]


def dead_weight(rows: Iterable[PlanRow]) -> list[PlanRow]:
    """Rows that compile code for no target GPU: minutes of compile for nothing, reported with
    their estimated CPU-s and what removes them while the build goes on."""
    return [row for row in rows if row.dead]


def dead_weight_line(row: PlanRow) -> str:
    cost = f"≈ {row.cpu_s:,.0f} CPU-s (shipped 0.13.0 profile)" if row.cpu_s is not None else "CPU-s unknown"
    removed = f"; {row.remedy}" if row.remedy else ""
    return f"{row.name}: {row.objects} object(s) compiled for no target GPU, {cost}{removed}"


@dataclass(frozen=True)
class ArchPlan:
    """The whole answer: what the configure chose, for which target, and the verdicts."""

    arch_list: str
    target: ComputeCapability
    parsed: ParsedPlan
    rows: tuple[PlanRow, ...]
    built: frozenset[str] | None = None  # the CMake targets setup.py builds; None: not asked

    def problems(self) -> list[PlanRow]:
        return problems(self.rows)

    def dead_weight(self) -> list[PlanRow]:
        return dead_weight(self.rows)

    def to_dict(self) -> dict[str, Any]:
        objects = [o for o in self.parsed.objects if o.device_code]
        return {
            "arch_list": self.arch_list,
            "target": str(self.target),
            "families": {k: list(v) for k, v in self.parsed.families.items()},
            "rows": [row.to_dict() for row in self.rows],
            "device_objects": len(objects),
            "host_objects": len(self.parsed.objects) - len(objects),
            "problems": [row.name for row in self.problems()],
            "dead_weight": [
                {"name": r.name, "objects": r.objects, "cpu_s": r.cpu_s, "remedy": r.remedy} for r in self.dead_weight()
            ],
            "built_targets": sorted(self.built) if self.built is not None else None,
        }


def plan_from_outputs(
    log: str,
    compile_commands: str | Sequence[Mapping[str, Any]],
    roots: Mapping[str, Path],
    arch_list: str,
    target: ComputeCapability,
    built: frozenset[str] | None = None,
    costs: CompileCosts | None = None,
    remedies: Mapping[str, str] | None = None,
) -> ArchPlan:
    """Pure: the plan from a configure log and compile_commands.json (text or parsed)."""
    parsed = ParsedPlan(parse_configure_messages(log), tuple(parse_compile_commands(compile_commands, roots)))
    return ArchPlan(arch_list, target, parsed, judge(parsed, target, built, costs, remedies), built)


def read_plan(
    configured: Configured,
    roots: Mapping[str, Path],
    arch_list: str,
    target: ComputeCapability,
    built: frozenset[str] | None = None,
    costs: CompileCosts | None = None,
    remedies: Mapping[str, str] | None = None,
) -> ArchPlan:
    """The plan from a finished `configure()`."""
    return plan_from_outputs(
        configured.log.read_text(errors="replace"),
        configured.compile_commands.read_text(),
        roots,
        arch_list,
        target,
        built,
        costs,
        remedies,
    )


def plan_source(
    source: Path,
    build_dir: Path,
    arch: str,
    *,
    venv: Path,
    cuda_home: Path,
    sources: FetchedSources,
    runner: Runner,
    log: Path,
    target: ComputeCapability,
    step: str = "arch-plan",
    bin_dirs: Sequence[Path] = (),
    costs: CompileCosts | None = None,
    remedies: Mapping[str, str] | None = None,
) -> ArchPlan:
    """The arch-plan step in one call: configure with the fetched sources, read, judge."""
    configured = configure(
        source,
        build_dir,
        arch,
        venv=venv,
        cuda_home=cuda_home,
        runner=runner,
        log=log,
        env=sources.env,
        step=step,
        bin_dirs=bin_dirs,
    )
    roots = {"vllm": source, **{p.name: p.checkout for p in sources.projects}}
    built = setup_extensions(
        source, venv, arch, cuda_home=cuda_home, runner=runner, log=log, step=step, bin_dirs=bin_dirs
    )
    return read_plan(configured, roots, arch, target, built, costs, remedies)


def raise_for_problems(plan: ArchPlan, step: str = "arch-plan", log: Path | None = None) -> None:
    """Stop before a 30-minute compile whose kernels vLLM would dispatch but the target GPU cannot
    load; dead weight is not a reason to stop (`dead_weight`)."""
    bad = plan.problems()
    if bad:
        rows = ", ".join(f"{row.name} ({' '.join(row.sass + row.ptx) or 'no -gencode'})" for row in bad)
        raise StepFailed(
            f"{len(bad)} kernel group(s) would be built without code that runs on {plan.target}: {rows}",
            step=step,
            log=log,
            hint="apply this version's patch series (patches/), or report the family so a patch can be added",
        )
