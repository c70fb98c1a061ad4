"""The arch audit of a built wheel: which GPUs its kernels run on, as cuobjdump reads them.

It catches a failure that `pip install` and even `import vllm` do not: kernels built for
`sm_120a` import fine on a DGX Spark (12.1) and then fail at the first launch with "no kernel
image is available". The audit returns a frozen report (data for `summary.json`, a table for
the terminal); the caller decides when to raise.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spark_build.arch.compat import CodeKind, ComputeCapability, GpuCode, Verdict, best_on, runs_on
from spark_build.errors import HostProblem, StepFailed, UsageError, first_few
from spark_build.wheel.audit import AuditReport
from spark_build.wheel.dispatch import Dispatch, dispatch_of
from spark_build.wheel.linkage import elf_files, read_dynamic, unpacked

_VERDICT_STYLE = {Verdict.NATIVE: "green", Verdict.JIT: "yellow", Verdict.CANNOT_RUN: "red"}
# What each verdict means for a user: JIT runs, but the driver compiles the PTX at first launch
# (minutes for vLLM's kernels, cached afterwards) and without arch-specific features.
VERDICT_WORDS = {Verdict.NATIVE: "native SASS", Verdict.JIT: "PTX JIT only", Verdict.CANNOT_RUN: "cannot run"}

# ---------------------------------------------------------------------------------------------
# cuobjdump: where it is, and what it says


def cuobjdump_candidates(cuda_home: Path | None, env: Mapping[str, str], venv: Path | None = None) -> list[Path]:
    """Every cuobjdump there is, best first: CUDA_HOME/bin (the toolkit's, built for this
    system), then PATH, then the `nvidia-cuda-cuobjdump` wheel.

    The wheel comes last because its tag can promise more than its binary keeps: 13.5.37's
    aarch64 cuobjdump needs glibc 2.38 though the wheel says manylinux2014. Some CUDA installs
    (pip-only toolkits, slim containers) have no other; the package ships it inside
    site-packages (`nvidia/cu13/bin/cuobjdump` for 13.x), found through its RECORD so a layout
    change does not break us. `venv` may be a venv directory or a python interpreter inside one.
    """
    found: list[Path] = []
    if cuda_home is not None and os.access(cuda_home / "bin" / "cuobjdump", os.X_OK):
        found.append(cuda_home / "bin" / "cuobjdump")
    on_path = shutil.which("cuobjdump", path=env.get("PATH", ""))
    if on_path:
        found.append(Path(on_path))
    if venv is not None:
        venv_dir = venv.parent.parent if venv.is_file() else venv
        for site_packages in sorted(venv_dir.glob("lib/python3*/site-packages")):
            for record in sorted(site_packages.glob("nvidia_cuda_cuobjdump-*.dist-info/RECORD")):
                for line in record.read_text().splitlines():
                    rel = line.split(",", 1)[0]
                    if rel.endswith("bin/cuobjdump") and os.access(site_packages / rel, os.X_OK):
                        found.append(site_packages / rel)
    return list({path.resolve(): path for path in reversed(found)}.values())[::-1]


def why_it_cannot_start(tool: Path) -> str | None:
    """None when `tool --version` runs; else what stopped it, in the loader's words (a glibc
    too old for it, a library or loader that is missing), asked once per candidate."""
    try:
        done = subprocess.run(
            [str(tool), "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "no answer to --version after 60 s"
    except OSError as exc:  # a missing ELF interpreter also reads as ENOENT: name the loader
        loader = _interpreter_of(tool)
        missing = f" (its loader {loader} is missing here)" if loader and not Path(loader).exists() else ""
        return f"{exc.strerror or exc}{missing}"
    if done.returncode == 0:
        return None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"--version exited {done.returncode} with no output"


def _interpreter_of(tool: Path) -> str | None:
    """The program the kernel starts for `tool`: an ELF's PT_INTERP or a script's #! line."""
    try:
        with tool.open("rb") as f:
            head = f.read(4)
            f.seek(0)
            if head.startswith(b"#!"):
                return f.readline()[2:].decode(errors="replace").split()[0]
            for segment in ELFFile(f).iter_segments():
                if isinstance(segment, InterpSegment):
                    return str(segment.get_interp_name())
    except (OSError, ELFError, IndexError):
        return None
    return None


def find_cuobjdump(
    cuda_home: Path | None,
    env: Mapping[str, str],
    venv: Path | None = None,
    *,
    cannot_start: Callable[[Path], str | None] = why_it_cannot_start,
) -> Path:
    """The first cuobjdump that starts (`cuobjdump_candidates`, each tried once). None there,
    or none that starts, is this host's problem, never a verdict on a wheel: one error naming
    each candidate and the loader's message, and the fix."""
    python = (venv if venv.is_file() else venv / "bin" / "python") if venv is not None else "<venv>/bin/python"
    install = f"uv pip install --python {python} nvidia-cuda-cuobjdump"
    candidates = cuobjdump_candidates(cuda_home, env, venv)
    if not candidates:
        raise HostProblem(
            "cuobjdump not found in CUDA_HOME/bin, on PATH, or in the nvidia-cuda-cuobjdump package",
            hint=f"install the CUDA toolkit (CUDA_HOME/bin/cuobjdump), or {install}",
        )
    failed = []
    for candidate in candidates:
        why = cannot_start(candidate)
        if why is None:
            return candidate
        failed.append(f"{candidate}: {why}")
    raise HostProblem(
        f"cuobjdump cannot start here: {'; '.join(failed)}",
        hint=f"point --cuda-home at a CUDA 13 toolkit whose bin/cuobjdump runs on this system, or {install} "
        "at a version built for this system's glibc (13.2 to 13.4 need glibc 2.17)",
    )


_CUOBJDUMP_HINT = "pass the path find_cuobjdump() returns, or install nvidia-cuda-cuobjdump"


class _NoDeviceCode(Exception):
    """cuobjdump's answer for a host-only library: not an error, just nothing to audit."""


_BLOCK_CHARS = 1 << 22


def cuobjdump_blocks(cuobjdump: Path, options: list[str], target: Path) -> Iterator[str]:
    """Stream cuobjdump's stdout in blocks of whole lines, each without its last newline. A full
    `-ptx` dump of vLLM's FA2 runs to 680 MB: read a line at a time, Python spent 20 times as
    long on it as cuobjdump took to write it."""
    argv = [str(cuobjdump), *options, str(target)]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full stderr pipe would hang us
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise HostProblem(f"cannot run cuobjdump at {cuobjdump}: {exc}", hint=_CUOBJDUMP_HINT) from exc
        with proc:
            rest = ""
            while chunk := (proc.stdout.read(_BLOCK_CHARS) if proc.stdout else ""):
                block, newline, rest = (rest + chunk).rpartition("\n")
                if newline:
                    yield block
            if rest:
                yield rest
        err.seek(0)
        message = err.read().decode(errors="replace").strip()
    if proc.returncode == 0:
        return
    if "does not contain device code" in message:
        raise _NoDeviceCode(message)
    raise StepFailed(
        f"{' '.join(argv)} exited {proc.returncode}: {message.splitlines()[-1] if message else ''}",
        hint="check that the file is a complete ELF library and cuobjdump matches the CUDA major",
    )


def _lines(blocks: Iterable[str]) -> Iterator[str]:
    for block in blocks:
        yield from block.split("\n")


_LISTED = re.compile(r"^(?P<kind>ELF|PTX) file\s+\d+:\s+\S*?\.(?P<arch>sm_\d+[af]?)\.(?:cubin|ptx)$")


def parse_listing(lines: Iterable[str]) -> list[GpuCode]:
    """Codes named by `cuobjdump --list-elf` / `--list-ptx` (`ELF file 1: x.1.sm_121a.cubin`).

    cuobjdump names PTX by its sm (`x.2.sm_80.ptx`); it is the `compute_80` virtual arch.
    Note that `--list-elf` prints an `sm_120f` cubin as `sm_120`; `parse_fatbin_dump` keeps
    the suffix.
    """
    codes = []
    for line in lines:
        match = _LISTED.match(line.strip())
        if match:
            code = GpuCode.parse(match["arch"])
            codes.append(code.as_ptx() if match["kind"] == "PTX" else code)
    return codes


@dataclass(frozen=True)
class FatbinImage:
    """One cubin or PTX module in a fatbin, with the kernels (entry functions) it defines and,
    for PTX, the size of its text in bytes: what the driver compiles when it JITs the module."""

    code: GpuCode
    kernels: tuple[str, ...]
    size: int = 0


# What the dump parser looks for. Each pattern opens with a literal, so the regex engine skips
# to it at C speed through hundreds of MB of PTX instead of trying every line; that the match
# opens its line is checked afterwards (`_opens_line`).
_DUMP_MARKS = (
    ("header", re.compile(r"Fatbin (elf|ptx) code:")),
    ("arch", re.compile(r"arch = ([^\n]*)")),
    ("version", re.compile(r"\.version")),  # a PTX module's text starts here, after cuobjdump's header
    ("symbol", re.compile(r"FUNC[ \t][^\n]*[ \t]ENTRY[ \t]+(\S+)$", re.M)),  # a cubin's kernel
    ("entry", re.compile(r"\.entry[ \t]+([\w$.]+)")),  # a PTX kernel
)
_BEFORE_ENTRY = re.compile(r"[ \t]*(?:\.visible[ \t]+|\.weak[ \t]+)?")


def _opens_line(block: str, start: int, mark: str) -> bool:
    line = block.rfind("\n", 0, start) + 1
    return _BEFORE_ENTRY.fullmatch(block, line, start) is not None if mark == "entry" else line == start


def _marks(block: str) -> list[tuple[int, str, str]]:
    """(offset, mark, what it names) of every line the parser acts on, in order."""
    found = (
        (m.start(), mark, m.group(1) if pattern.groups else "")
        for mark, pattern in _DUMP_MARKS
        for m in pattern.finditer(block)
    )
    return sorted(f for f in found if _opens_line(block, f[0], f[1]))


def parse_fatbin_dump(blocks: Iterable[str]) -> list[FatbinImage]:
    """Images in the output of `cuobjdump -symbols [-ptx]`, in fatbin order, from blocks of
    whole lines each without its last newline (a list of lines is such blocks).

    Each image opens with `Fatbin elf code:` or `Fatbin ptx code:` and an `arch = sm_120f`
    line; cubin kernels are `FUNC … ENTRY name` symbols, PTX kernels `.entry name(` lines.
    A PTX image's size counts its text from `.version` on, not cuobjdump's header.
    """
    images: list[FatbinImage] = []
    kind: CodeKind | None = None
    code: GpuCode | None = None
    kernels: list[str] = []
    size = 0
    text = False  # in a PTX image, past cuobjdump's header: its size grows by whole blocks

    for block in blocks:
        end = len(block) + 1
        if text:
            size += end
        for start, mark, name in _marks(block):
            if mark == "header":
                if code is not None:
                    size -= end - start if text else 0
                    images.append(FatbinImage(code, tuple(kernels), size))
                kind = CodeKind.SASS if name == "elf" else CodeKind.PTX
                code, kernels, size, text = None, [], 0, False
            elif code is None:
                if mark == "arch" and kind is not None:
                    arch = GpuCode.parse(name.strip())
                    code = arch if kind is CodeKind.SASS else arch.as_ptx()
            elif mark == "version" and kind is CodeKind.PTX and not text:
                text = True
                size += end - start
            elif (mark, kind) in (("symbol", CodeKind.SASS), ("entry", CodeKind.PTX)):
                kernels.append(name)
    if code is not None:
        images.append(FatbinImage(code, tuple(kernels), size))
    return images


# ---------------------------------------------------------------------------------------------
# Arch coverage audit


@dataclass(frozen=True)
class ExtensionArch:
    """The device code one shared object carries; verdict None means it has none (host only)."""

    path: str
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    verdict: Verdict | None

    @property
    def module(self) -> str:
        """`vllm/_C.abi3.so` → `_C`, the name vLLM's CMake targets and the arch plan use."""
        return Path(self.path).name.split(".", 1)[0]


@dataclass(frozen=True)
class FamilyArch:
    """A kernel family within one extension: can it run on the target, and how."""

    family: str
    extension: str
    codes: tuple[str, ...]
    verdict: Verdict
    kernels: int
    unrunnable_kernels: tuple[str, ...] = ()
    unused_because: str | None = None  # the target never runs this family: vLLM's dispatch, and where

    @property
    def used(self) -> bool:
        return self.unused_because is None


@dataclass(frozen=True)
class ArchReport(AuditReport):
    source: str
    target: ComputeCapability
    extensions: tuple[ExtensionArch, ...]
    families: tuple[FamilyArch, ...]
    problems: tuple[str, ...] = field(default=())
    # The fatbin images (PTX sized) of each extension with PTX the target is sent to, kept for
    # the JIT bill (`wheel.jitbill`) from the audit's own dump: None unless `keep_ptx` asked.
    ptx_images: Mapping[str, tuple[FatbinImage, ...]] | None = field(default=None, compare=False, repr=False)

    @property
    def used(self) -> tuple[FamilyArch, ...]:
        return tuple(f for f in self.families if f.used)

    @property
    def unused(self) -> tuple[FamilyArch, ...]:
        return tuple(f for f in self.families if not f.used)

    @property
    def verdict(self) -> Verdict:
        """Overall: the worst family the target uses — the wheel is only as usable as its weakest
        family; one the target never dispatches to does not count."""
        return min((f.verdict for f in self.used), key=lambda v: v.rank, default=Verdict.CANNOT_RUN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": str(self.target),
            "ok": self.ok,
            "verdict": self.verdict.value,
            "problems": list(self.problems),
            "extensions": [{**asdict(e), "verdict": e.verdict.value if e.verdict else None} for e in self.extensions],
            "families": [{**asdict(f), "verdict": f.verdict.value, "used": f.used} for f in self.families],
        }

    def render(self, console: Console) -> None:
        # Paths and kernel names come from the wheel: Text, never markup.
        table = Table(title=Text(f"GPU code in {self.source} for compute capability {self.target}"))
        for column in ("extension", "family", "SASS / PTX", "verdict"):
            table.add_column(column)
        for ext in self.extensions:
            if ext.verdict is None:
                table.add_row(Text(ext.path), "", Text("no device code", "dim"), Text("host only", "dim"))
                continue
            for fam in (f for f in self.used if f.extension == ext.path):
                note = f" ({len(fam.unrunnable_kernels)} kernels cannot run)" if fam.unrunnable_kernels else ""
                verdict = Text.assemble((VERDICT_WORDS[fam.verdict], _VERDICT_STYLE[fam.verdict]), note)
                table.add_row(Text(ext.path), Text(fam.family), Text(", ".join(fam.codes)), verdict)
        console.print(table)
        if self.unused:
            apart = Table(title=Text(f"Not used on {self.target}: vLLM never dispatches these there (not judged)"))
            for column in ("extension", "SASS / PTX", "vLLM runs it on"):
                apart.add_column(column)
            for fam in self.unused:
                apart.add_row(Text(fam.extension), Text(", ".join(fam.codes)), Text(fam.unused_because or ""))
            console.print(apart)
        for problem in self.problems:
            console.print(Text.assemble(("✕", "red"), f" {problem}"))

    def failure(self) -> str:
        return f"arch audit of {self.source} for {self.target} failed: {first_few(self.problems)}"

    def fix(self) -> str:
        return (
            f"compile for this GPU (TORCH_CUDA_ARCH_LIST with {self.target}a or the "
            f"{self.target.major}.0f family) and check the arch plan and patches for the named families"
        )


def _audit_extension(
    so: Path,
    rel: str,
    target: ComputeCapability,
    cuobjdump: Path,
    families: Mapping[str, str] | None,
    dispatch: Dispatch | None,
    keep_ptx: bool,
) -> tuple[ExtensionArch, list[FamilyArch], list[FatbinImage] | None]:
    """The extension, its families, and its images when the JIT bill needs their PTX."""
    unused_because = None
    if dispatch is not None and not dispatch.used_on(target):
        unused_because = f"{dispatch.describe()} ({dispatch.where})"
    try:
        listed_sass = parse_listing(_lines(cuobjdump_blocks(cuobjdump, ["--list-elf"], so)))
        listed_ptx = parse_listing(_lines(cuobjdump_blocks(cuobjdump, ["--list-ptx"], so)))
    except _NoDeviceCode:
        return ExtensionArch(rel, (), (), None), [], None
    # The dump keeps the `f` that --list-elf drops, and names each image's kernels. PTX is
    # dumped (whole, so it is costly: minutes for vLLM's `_C`) only when kernels must be sorted
    # into families or the JIT bill needs its modules — once, for both.
    for_bill = keep_ptx and bool(listed_ptx) and unused_because is None
    options = ["-symbols", "-ptx"] if (families or for_bill) and listed_ptx else ["-symbols"]
    images = parse_fatbin_dump(cuobjdump_blocks(cuobjdump, options, so))
    kept = images if for_bill else None
    dumped_sass = [i.code for i in images if i.code.kind is CodeKind.SASS]
    if [c.name.rstrip("f") for c in dumped_sass] != [c.name.rstrip("f") for c in listed_sass]:
        raise StepFailed(
            f"cuobjdump's listing and dump of {rel} disagree: {[c.name for c in listed_sass]} "
            f"vs {[c.name for c in dumped_sass]}",
            hint="report this with the cuobjdump version; the arch audit cannot be trusted here",
        )
    codes = [*dumped_sass, *listed_ptx]
    ext = ExtensionArch(
        rel,
        tuple(sorted({c.name for c in dumped_sass})),
        tuple(sorted({c.name for c in listed_ptx})),
        best_on(codes, target),
    )
    if not families:
        kernel_count = len({k for i in images for k in i.kernels})
        verdict = best_on(codes, target)
        whole = FamilyArch(ext.module, rel, (*ext.sass, *ext.ptx), verdict, kernel_count, (), unused_because)
        return ext, [whole], kept

    kernel_codes: dict[str, set[GpuCode]] = {}
    for image in images:
        for kernel in image.kernels:
            kernel_codes.setdefault(kernel, set()).add(image.code)
    grouped: dict[str, dict[str, set[GpuCode]]] = {}
    for kernel, kcodes in kernel_codes.items():
        family = next((f for pat, f in families.items() if fnmatch.fnmatchcase(kernel, pat)), ext.module)
        grouped.setdefault(family, {})[kernel] = kcodes
    result = []
    for family, kernels in sorted(grouped.items()):
        union = set().union(*kernels.values())
        unrunnable = sorted(k for k, kc in kernels.items() if best_on(kc, target) is Verdict.CANNOT_RUN)
        result.append(
            FamilyArch(
                family,
                rel,
                tuple(sorted(c.name for c in union)),
                best_on(union, target),
                len(kernels),
                tuple(unrunnable),
                unused_because,
            )
        )
    return ext, result, kept


def _cannot_run(family: FamilyArch, target: ComputeCapability, row: Dispatch | None) -> str:
    """The problem line; where vLLM's dispatch is known, it says why the target needs the family."""
    codes = ", ".join(family.codes)
    line = f"{family.extension}: kernel family {family.family} cannot run on {target}, it has only {codes}"
    return f"{line}; vLLM runs it on {row.describe()} ({row.where})" if row is not None else line


def arch_audit(
    wheel_or_dir: Path,
    target: ComputeCapability,
    cuobjdump: Path,
    *,
    families: Mapping[str, str] | None = None,
    promised: Mapping[str, Iterable[str]] | None = None,
    dispatch: Mapping[str, Dispatch] | None = None,
    keep_ptx: bool = False,
) -> ArchReport:
    """List the SASS and PTX of every shared object in a wheel and judge it against `target`.

    `families` maps fnmatch patterns over kernel names as cuobjdump prints them (mangled, e.g.
    `*cutlass_scaled_mm*sm120*`) to a family name; the first match wins and unmatched kernels
    stay in a family named after their extension. Without it each extension is one family.
    A linked library keeps no object-file names in its fatbin, so kernel names are what can
    be grouped. `promised` maps a family (or extension module, e.g. `_C`) to the codes the
    arch plan promised natively (`sm_121a`, `sm_120f`); a missing one fails the audit, as does
    a family with no code that can run on `target` — unless `dispatch` (`wheel.dispatch`) says
    the target never runs that extension: then it is listed apart and not judged.
    `keep_ptx` dumps the PTX of every extension the target is sent to in the audit's one pass
    and keeps its images in the report, for the JIT bill to read without a second dump.
    """
    try:  # bad names are the caller's mistake; say so before spending time on cuobjdump
        promised_codes = {fam: [GpuCode.parse(n) for n in names] for fam, names in (promised or {}).items()}
    except ValueError as err:
        raise UsageError(f"arch plan: {err}", hint="name codes as nvcc does: sm_121a, sm_120f, compute_80") from err
    extensions: list[ExtensionArch] = []
    fams: list[FamilyArch] = []
    ptx_images: dict[str, tuple[FatbinImage, ...]] = {}
    with unpacked(wheel_or_dir) as root:
        for elf in elf_files(root):
            try:
                shared = read_dynamic(elf).shared
            except ELFError:
                continue
            if shared:
                rel = elf.relative_to(root).as_posix()
                routed = dispatch_of(rel, dispatch or {})
                ext, ext_fams, images = _audit_extension(elf, rel, target, cuobjdump, families, routed, keep_ptx)
                extensions.append(ext)
                fams.extend(ext_fams)
                if images is not None:
                    ptx_images[rel] = tuple(images)

    problems = [
        _cannot_run(f, target, dispatch_of(f.extension, dispatch or {}))
        for f in fams
        if f.verdict is Verdict.CANNOT_RUN and f.used
    ]
    if not any(e.verdict is not None for e in extensions):
        problems.append(f"no extension in {wheel_or_dir.name} carries GPU code")
    for family, codes in promised_codes.items():
        carried = {c for f in fams if f.family == family for c in f.codes}
        if not any(f.family == family for f in fams):
            problems.append(f"the arch plan promised {family}, but no extension or kernel family has that name")
            continue
        for code in codes:
            if code.name not in carried:
                problems.append(
                    f"{family}: the arch plan promised {code} ({runs_on(code, target).value} on {target}); "
                    f"the wheel carries {', '.join(sorted(carried)) or 'nothing'}"
                )
    kept = ptx_images if keep_ptx else None
    return ArchReport(wheel_or_dir.name, target, tuple(extensions), tuple(fams), tuple(problems), kept)
