"""Audits of a built wheel: what its ELF files link against, and which GPUs its kernels run on.

Both catch failures that `pip install` and even `import vllm` do not: a CUDA-12 library
(`libcudart.so.12`) pulled into a CUDA-13 build loads only where CUDA 12 happens to be
installed, and kernels built for `sm_120a` import fine on a DGX Spark (12.1) and then fail
at the first launch with "no kernel image is available". Each audit returns a frozen report
(data for `summary.json`, a table for the terminal); the caller decides when to raise.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from rich.console import Console
from rich.table import Table

from spark_build.errors import StepFailed, UsageError
from spark_build.gpuarch import CodeKind, ComputeCapability, GpuCode, Verdict, best_on, runs_on

_ELF_MAGIC = b"\x7fELF"
_VERDICT_STYLE = {Verdict.NATIVE: "green", Verdict.JIT: "yellow", Verdict.CANNOT_RUN: "red"}


# ---------------------------------------------------------------------------------------------
# Input: a wheel (unpacked to a temporary directory) or an installed/unpacked tree


@contextmanager
def _unpacked(wheel_or_dir: Path) -> Iterator[Path]:
    """Yield a directory holding the wheel's files; a wheel is a zip, so unpack it."""
    if wheel_or_dir.is_dir():
        yield wheel_or_dir
        return
    if not zipfile.is_zipfile(wheel_or_dir):
        raise UsageError(
            f"{wheel_or_dir} is neither a directory nor a wheel",
            hint="pass the built .whl or the directory it was installed or unpacked into",
        )
    with tempfile.TemporaryDirectory(prefix="spark-audit-") as tmp, zipfile.ZipFile(wheel_or_dir) as zf:
        zf.extractall(tmp)  # zipfile drops absolute and '..' components of member names
        yield Path(tmp)


def _elf_files(root: Path) -> list[Path]:
    """Every ELF file under root, found by magic number: wheels ship `libfoo.so.1.2` too."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        with path.open("rb") as f:
            if f.read(4) == _ELF_MAGIC:
                found.append(path)
    return found


@dataclass(frozen=True)
class _Dynamic:
    """What the dynamic loader reads from one ELF file."""

    elfclass: int
    machine: str
    shared: bool
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    soname: str | None = None


_DYNAMIC_TAGS = {"DT_NEEDED": "needed", "DT_RPATH": "rpath", "DT_RUNPATH": "runpath", "DT_SONAME": "soname"}


def _read_dynamic(path: Path) -> _Dynamic:
    """Read the dynamic segment, as the loader does (section headers may be stripped)."""
    with path.open("rb") as f:
        elf = ELFFile(f)
        values: dict[str, list[str]] = {attr: [] for attr in _DYNAMIC_TAGS.values()}
        for segment in elf.iter_segments():
            if isinstance(segment, DynamicSegment):
                for tag in segment.iter_tags():
                    attr = _DYNAMIC_TAGS.get(tag.entry.d_tag)
                    if attr:
                        values[attr].append(getattr(tag, attr))
        return _Dynamic(
            elfclass=elf.elfclass,
            machine=elf["e_machine"],
            shared=elf["e_type"] == "ET_DYN",
            needed=tuple(values["needed"]),
            rpath=tuple(d for entry in values["rpath"] for d in entry.split(":") if d),
            runpath=tuple(d for entry in values["runpath"] for d in entry.split(":") if d),
            soname=values["soname"][0] if values["soname"] else None,
        )


# ---------------------------------------------------------------------------------------------
# Library search: where the dynamic loader (and an `import torch` before us) would find things

_MULTIARCH = {"EM_X86_64": "x86_64-linux-gnu", "EM_AARCH64": "aarch64-linux-gnu"}
_LD_CACHE_MAGIC = b"glibc-ld.so.cache1.1"


def read_ld_cache(path: Path = Path("/etc/ld.so.cache")) -> dict[str, tuple[Path, ...]]:
    """Library name → paths, read from glibc's cache file (what `ldconfig -p` prints).

    Read directly rather than by parsing `ldconfig -p`: no subprocess, no locale-dependent
    text, and no Python library reads this format. The "new" format (glibc ≥ 2.32 writes only
    it; older ones append it after the old table) has a 48-byte header and 24-byte entries
    whose string offsets count from the header's start. A missing or unreadable cache yields
    an empty mapping, and the loader's default directories still apply.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    start = data.find(_LD_CACHE_MAGIC)
    if start < 0 or len(data) < start + 48:
        return {}
    order = ">" if data[start + 28] == 3 else "<"  # header byte: 2 little, 3 big endian
    (nlibs,) = struct.unpack_from(f"{order}I", data, start + 20)

    def string_at(offset: int) -> str:
        end = data.find(b"\0", start + offset)
        return data[start + offset : end].decode(errors="replace")

    cache: dict[str, list[Path]] = {}
    for i in range(nlibs):
        entry = start + 48 + 24 * i
        if entry + 24 > len(data):
            break
        _flags, key, value = struct.unpack_from(f"{order}iII", data, entry)
        cache.setdefault(string_at(key), []).append(Path(string_at(value)))
    return {name: tuple(paths) for name, paths in cache.items()}


@dataclass(frozen=True)
class LibrarySearch:
    """Where a wheel's libraries may come from once it is installed into a venv.

    `site_packages` stand for the venv the wheel is installed into: its `nvidia/*/lib`,
    `torch/lib` and auditwheel's `*.libs` directories hold what `import torch` loads before
    vLLM's extensions, and `$ORIGIN`-relative RPATHs (`$ORIGIN/../torch/lib`) are also
    resolved as if the wheel were installed there.
    """

    site_packages: tuple[Path, ...] = ()
    ld_library_path: tuple[Path, ...] = ()
    ld_cache: Path | None = Path("/etc/ld.so.cache")
    default_dirs: tuple[Path, ...] | None = None  # None: glibc's defaults for the ELF's machine

    @classmethod
    def for_venv(cls, venv: Path, env: Mapping[str, str]) -> LibrarySearch:
        """The search a process started from `venv` with environment `env` would see."""
        site_packages = tuple(sorted(venv.glob("lib/python3*/site-packages")))
        ld_path = tuple(Path(p) for p in env.get("LD_LIBRARY_PATH", "").split(":") if p)
        return cls(site_packages=site_packages, ld_library_path=ld_path)

    def venv_library_dirs(self) -> tuple[Path, ...]:
        dirs: list[Path] = []
        for sp in self.site_packages:
            for pattern in ("nvidia/*/lib", "nvidia/*/lib64", "torch/lib", "*.libs"):
                dirs.extend(sorted(p for p in sp.glob(pattern) if p.is_dir()))
        return tuple(dirs)

    def system_dirs(self, machine: str) -> tuple[Path, ...]:
        if self.default_dirs is not None:
            return self.default_dirs
        triplet = _MULTIARCH.get(machine)
        multiarch = [Path("/lib", triplet), Path("/usr/lib", triplet)] if triplet else []
        return (*multiarch, Path("/lib64"), Path("/usr/lib64"), Path("/lib"), Path("/usr/lib"))


# ---------------------------------------------------------------------------------------------
# Linkage audit

# Toolkit libraries whose soname major is the CUDA major (libcufft, libcurand, libcusparse and
# libcusolver version independently, so their number says nothing about the toolkit).
_CUDA_VERSIONED = re.compile(
    r"^lib(?:cudart|cublas|cublasLt|nvrtc|nvrtc-builtins|nvJitLink|cupti|nvblas|npp[a-z]*|nvjpeg)"
    r"\.so\.(?P<major>\d+)"
)


def cuda_major_of(soname: str) -> int | None:
    """The CUDA major a toolkit library's soname pins (`libcudart.so.12` → 12), else None."""
    match = _CUDA_VERSIONED.match(soname)
    return int(match["major"]) if match else None


@dataclass(frozen=True)
class LinkedLibrary:
    """One NEEDED entry of one ELF file and where it resolved."""

    elf: str  # path of the ELF file inside the wheel
    library: str  # the NEEDED name
    resolved: str | None  # where the loader would find it; inside the wheel: a wheel path
    via: str | None  # rpath, LD_LIBRARY_PATH, runpath, venv, ld.so.cache, default dirs
    problem: str | None = None


@dataclass(frozen=True)
class LinkageReport:
    source: str
    cuda_major: int
    libraries: tuple[LinkedLibrary, ...]
    unreadable: tuple[str, ...] = ()

    @property
    def problems(self) -> tuple[str, ...]:
        found = [f"{lib.elf}: {lib.problem}" for lib in self.libraries if lib.problem]
        return (*found, *(f"{path}: not a readable ELF file" for path in self.unreadable))

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cuda_major": self.cuda_major,
            "ok": self.ok,
            "problems": list(self.problems),
            "libraries": [asdict(lib) for lib in self.libraries],
        }

    def render(self, console: Console) -> None:
        table = Table(title=f"Linkage of {self.source} (CUDA {self.cuda_major})")
        for column in ("ELF file", "library", "resolved at"):
            table.add_column(column)
        for lib in self.libraries:
            where = f"[red]{lib.problem}[/]" if lib.problem else f"{lib.resolved} [dim]({lib.via})[/]"
            table.add_row(lib.elf, lib.library, where)
        console.print(table)

    def raise_if_failed(self, *, step: str = "validate", log: Path | None = None) -> None:
        if self.ok:
            return
        shown = "; ".join(self.problems[:3]) + (" …" if len(self.problems) > 3 else "")
        raise StepFailed(
            f"linkage audit of {self.source} failed: {shown}",
            hint=f"rebuild against CUDA {self.cuda_major} only (CUDA_HOME, torch from the "
            f"cu{self.cuda_major}0 index) and install what is missing into the venv",
            step=step,
            log=log,
        )


class _Resolver:
    """Finds a NEEDED name the way glibc's loader does, for one set of search paths.

    Order: DT_RPATH (ignored when DT_RUNPATH exists), LD_LIBRARY_PATH, DT_RUNPATH — glibc's
    own order — then the venv's library directories (standing for what `import torch` has
    already loaded), the ld.so cache, and the default directories. A candidate of another ELF
    class or machine is skipped, as the loader skips it.
    """

    def __init__(self, search: LibrarySearch, root: Path) -> None:
        self.search = search
        self.root = root
        self.venv_dirs = search.venv_library_dirs()
        self.cache = read_ld_cache(search.ld_cache) if search.ld_cache else {}
        self._headers: dict[Path, tuple[int, str] | None] = {}

    def _header(self, path: Path) -> tuple[int, str] | None:
        if path not in self._headers:
            try:
                with path.open("rb") as f:
                    elf = ELFFile(f)
                    self._headers[path] = (elf.elfclass, elf["e_machine"])
            except (OSError, ELFError):
                self._headers[path] = None
        return self._headers[path]

    def _expand(self, entry: str, elf: Path) -> list[Path]:
        if "$ORIGIN" not in entry and "${ORIGIN}" not in entry:
            return [Path(entry)]
        origins = [elf.parent]
        rel_dir = elf.parent.relative_to(self.root)
        origins += [sp / rel_dir for sp in self.search.site_packages]  # as if installed there
        return [Path(os.path.normpath(entry.replace("${ORIGIN}", str(o)).replace("$ORIGIN", str(o)))) for o in origins]

    def resolve(self, name: str, elf: Path, dyn: _Dynamic) -> tuple[Path | None, str | None, list[Path]]:
        """Return (path, how it was found, candidates of the wrong class or machine)."""
        wanted = (dyn.elfclass, dyn.machine)
        rpath = [] if dyn.runpath else [d for e in dyn.rpath for d in self._expand(e, elf)]
        order: list[tuple[str, Iterable[Path]]] = [
            ("rpath", (d / name for d in rpath)),
            ("LD_LIBRARY_PATH", (d / name for d in self.search.ld_library_path)),
            ("runpath", (d / name for e in dyn.runpath for d in self._expand(e, elf))),
            ("venv", (d / name for d in self.venv_dirs)),
            ("ld.so.cache", self.cache.get(name, ())),
            ("default dirs", (d / name for d in self.search.system_dirs(dyn.machine))),
        ]
        if "/" in name:  # a NEEDED path is used as is
            order = [("path", [Path(name) if Path(name).is_absolute() else elf.parent / name])]
        foreign: list[Path] = []
        for via, candidates in order:
            for candidate in candidates:
                if not candidate.is_file():
                    continue
                if self._header(candidate) == wanted:
                    return candidate, via, foreign
                foreign.append(candidate)
        return None, None, foreign


def _link(
    rel: str, name: str, path: Path | None, via: str | None, foreign: list[Path], root: Path, cuda_major: int
) -> LinkedLibrary:
    """Judge one resolved NEEDED entry: another CUDA major, or not found, is a problem."""
    soname = name
    if path is not None:
        try:  # an unversioned NEEDED (`libcublas.so`) may land on a CUDA-12 file
            soname = _read_dynamic(path).soname or path.resolve().name
        except ELFError:
            soname = path.resolve().name
    major = cuda_major_of(name) or cuda_major_of(soname)
    problem = None
    if major is not None and major != cuda_major:
        problem = f"{name} is a CUDA {major} library; this build is CUDA {cuda_major}"
    elif path is None:
        problem = f"{name} not found" + (f" (only for another machine: {foreign[0]})" if foreign else "")
    resolved = None
    if path is not None:
        real, top = path.resolve(), root.resolve()
        resolved = real.relative_to(top).as_posix() if real.is_relative_to(top) else str(path)
    return LinkedLibrary(rel, name, resolved, via, problem)


def linkage_audit(wheel_or_dir: Path, search: LibrarySearch, cuda_major: int) -> LinkageReport:
    """Resolve every NEEDED library of every ELF file in a wheel; flag other CUDA majors.

    Fails (in the report) on a toolkit library of another CUDA major — named either in NEEDED
    or in the soname of what an unversioned NEEDED resolved to — and on anything unresolved.
    """
    libraries: list[LinkedLibrary] = []
    unreadable: list[str] = []
    with _unpacked(wheel_or_dir) as root:
        resolver = _Resolver(search, root)
        for elf in _elf_files(root):
            rel = elf.relative_to(root).as_posix()
            try:
                dyn = _read_dynamic(elf)
            except ELFError:
                unreadable.append(rel)
                continue
            libraries.extend(
                _link(rel, name, *resolver.resolve(name, elf, dyn), root, cuda_major) for name in dyn.needed
            )
    return LinkageReport(wheel_or_dir.name, cuda_major, tuple(libraries), tuple(unreadable))


# ---------------------------------------------------------------------------------------------
# cuobjdump: where it is, and what it says


def find_cuobjdump(cuda_home: Path | None, env: Mapping[str, str], venv: Path | None = None) -> Path:
    """Locate cuobjdump: CUDA_HOME/bin, then PATH, then the `nvidia-cuda-cuobjdump` wheel.

    Some CUDA installs (pip-only toolkits, slim containers) lack cuobjdump; the PyPI package
    `nvidia-cuda-cuobjdump` ships it inside site-packages (`nvidia/cu13/bin/cuobjdump` for
    13.x), found here through the package's RECORD so a layout change does not break us.
    `venv` may be a venv directory or a python interpreter inside one.
    """
    if cuda_home is not None and os.access(cuda_home / "bin" / "cuobjdump", os.X_OK):
        return cuda_home / "bin" / "cuobjdump"
    on_path = shutil.which("cuobjdump", path=env.get("PATH", ""))
    if on_path:
        return Path(on_path)
    if venv is not None:
        venv_dir = venv.parent.parent if venv.is_file() else venv
        for site_packages in sorted(venv_dir.glob("lib/python3*/site-packages")):
            for record in sorted(site_packages.glob("nvidia_cuda_cuobjdump-*.dist-info/RECORD")):
                for line in record.read_text().splitlines():
                    rel = line.split(",", 1)[0]
                    if rel.endswith("bin/cuobjdump") and os.access(site_packages / rel, os.X_OK):
                        return site_packages / rel
    python = (venv if venv.is_file() else venv / "bin" / "python") if venv is not None else "<venv>/bin/python"
    raise UsageError(
        "cuobjdump not found in CUDA_HOME/bin, on PATH, or in the nvidia-cuda-cuobjdump package",
        hint=f"uv pip install --python {python} nvidia-cuda-cuobjdump",
    )


_CUOBJDUMP_HINT = "pass the path find_cuobjdump() returns, or install nvidia-cuda-cuobjdump"


class _NoDeviceCode(Exception):
    """cuobjdump's answer for a host-only library: not an error, just nothing to audit."""


def _cuobjdump_lines(cuobjdump: Path, options: list[str], target: Path) -> Iterator[str]:
    """Stream cuobjdump's stdout: a full `-ptx` dump of vLLM's `_C` runs to hundreds of MB."""
    argv = [str(cuobjdump), *options, str(target)]
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full stderr pipe would hang us
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UsageError(f"cannot run cuobjdump at {cuobjdump}: {exc}", hint=_CUOBJDUMP_HINT) from exc
        with proc:
            yield from (line.rstrip("\n") for line in proc.stdout or ())
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
    """One cubin or PTX module in a fatbin, with the kernels (entry functions) it defines."""

    code: GpuCode
    kernels: tuple[str, ...]


_ENTRY_SYMBOL = re.compile(r"^FUNC\s.*\sENTRY\s+(?P<name>\S+)$")
_PTX_ENTRY = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?\.entry\s+(?P<name>[\w$.]+)")


def parse_fatbin_dump(lines: Iterable[str]) -> list[FatbinImage]:
    """Images in the output of `cuobjdump -symbols [-ptx]`, in fatbin order.

    Each image opens with `Fatbin elf code:` or `Fatbin ptx code:` and an `arch = sm_120f`
    line; cubin kernels are `FUNC … ENTRY name` symbols, PTX kernels `.entry name(` lines.
    """
    images: list[FatbinImage] = []
    kind: CodeKind | None = None
    code: GpuCode | None = None
    kernels: list[str] = []

    def close() -> None:
        if code is not None:
            images.append(FatbinImage(code, tuple(kernels)))

    for line in lines:
        if line.startswith("Fatbin elf code:") or line.startswith("Fatbin ptx code:"):
            close()
            kind = CodeKind.SASS if "elf" in line else CodeKind.PTX
            code, kernels = None, []
        elif code is None and kind is not None and line.startswith("arch = "):
            arch = GpuCode.parse(line.removeprefix("arch = ").strip())
            code = arch if kind is CodeKind.SASS else arch.as_ptx()
        elif code is not None:
            pattern = _ENTRY_SYMBOL if kind is CodeKind.SASS else _PTX_ENTRY
            match = pattern.match(line)
            if match:
                kernels.append(match["name"])
    close()
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


@dataclass(frozen=True)
class ArchReport:
    source: str
    target: ComputeCapability
    extensions: tuple[ExtensionArch, ...]
    families: tuple[FamilyArch, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def verdict(self) -> Verdict:
        """Overall: the worst family — the wheel is only as usable as its weakest family."""
        return min((f.verdict for f in self.families), key=lambda v: v.rank, default=Verdict.CANNOT_RUN)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": str(self.target),
            "ok": self.ok,
            "verdict": self.verdict.value,
            "problems": list(self.problems),
            "extensions": [{**asdict(e), "verdict": e.verdict.value if e.verdict else None} for e in self.extensions],
            "families": [{**asdict(f), "verdict": f.verdict.value} for f in self.families],
        }

    def render(self, console: Console) -> None:
        table = Table(title=f"GPU code in {self.source} for compute capability {self.target}")
        for column in ("extension", "family", "SASS / PTX", "verdict"):
            table.add_column(column)
        for ext in self.extensions:
            if ext.verdict is None:
                table.add_row(ext.path, "", "[dim]no device code[/]", "[dim]host only[/]")
                continue
            for fam in (f for f in self.families if f.extension == ext.path):
                style = _VERDICT_STYLE[fam.verdict]
                note = f" ({len(fam.unrunnable_kernels)} kernels cannot run)" if fam.unrunnable_kernels else ""
                table.add_row(ext.path, fam.family, ", ".join(fam.codes), f"[{style}]{fam.verdict.value}[/]{note}")
        console.print(table)
        for problem in self.problems:
            console.print(f"[red]✕[/] {problem}")

    def raise_if_failed(self, *, step: str = "validate", log: Path | None = None) -> None:
        if self.ok:
            return
        shown = "; ".join(self.problems[:3]) + (" …" if len(self.problems) > 3 else "")
        raise StepFailed(
            f"arch audit of {self.source} for {self.target} failed: {shown}",
            hint=f"compile for this GPU (TORCH_CUDA_ARCH_LIST with {self.target}a or the "
            f"{self.target.major}.0f family) and check the arch plan and patches for the named families",
            step=step,
            log=log,
        )


def _audit_extension(
    so: Path, rel: str, target: ComputeCapability, cuobjdump: Path, families: Mapping[str, str] | None
) -> tuple[ExtensionArch, list[FamilyArch]]:
    try:
        listed_sass = parse_listing(_cuobjdump_lines(cuobjdump, ["--list-elf"], so))
        listed_ptx = parse_listing(_cuobjdump_lines(cuobjdump, ["--list-ptx"], so))
    except _NoDeviceCode:
        return ExtensionArch(rel, (), (), None), []
    # The dump keeps the `f` that --list-elf drops, and names each image's kernels. PTX is
    # dumped (whole, so it is costly) only when kernels must be sorted into families.
    options = ["-symbols", "-ptx"] if families and listed_ptx else ["-symbols"]
    images = parse_fatbin_dump(_cuobjdump_lines(cuobjdump, options, so))
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
        return ext, [FamilyArch(ext.module, rel, (*ext.sass, *ext.ptx), verdict, kernel_count)]

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
            )
        )
    return ext, result


def arch_audit(
    wheel_or_dir: Path,
    target: ComputeCapability,
    cuobjdump: Path,
    *,
    families: Mapping[str, str] | None = None,
    promised: Mapping[str, Iterable[str]] | None = None,
) -> ArchReport:
    """List the SASS and PTX of every shared object in a wheel and judge it against `target`.

    `families` maps fnmatch patterns over kernel names as cuobjdump prints them (mangled, e.g.
    `*cutlass_scaled_mm*sm120*`) to a family name; the first match wins and unmatched kernels
    stay in a family named after their extension. Without it each extension is one family.
    A linked library keeps no object-file names in its fatbin, so kernel names are what can
    be grouped. `promised` maps a family (or extension module, e.g. `_C`) to the codes the
    arch plan promised natively (`sm_121a`, `sm_120f`); a missing one fails the audit, as does
    a family with no code that can run on `target`.
    """
    try:  # bad names are the caller's mistake; say so before spending time on cuobjdump
        promised_codes = {fam: [GpuCode.parse(n) for n in names] for fam, names in (promised or {}).items()}
    except ValueError as err:
        raise UsageError(f"arch plan: {err}", hint="name codes as nvcc does: sm_121a, sm_120f, compute_80") from err
    extensions: list[ExtensionArch] = []
    fams: list[FamilyArch] = []
    with _unpacked(wheel_or_dir) as root:
        for elf in _elf_files(root):
            try:
                shared = _read_dynamic(elf).shared
            except ELFError:
                continue
            if shared:
                ext, ext_fams = _audit_extension(elf, elf.relative_to(root).as_posix(), target, cuobjdump, families)
                extensions.append(ext)
                fams.extend(ext_fams)

    problems = [
        f"{f.extension}: kernel family {f.family} cannot run on {target}, it has only {', '.join(f.codes)}"
        for f in fams
        if f.verdict is Verdict.CANNOT_RUN
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
    return ArchReport(wheel_or_dir.name, target, tuple(extensions), tuple(fams), tuple(problems))
