"""The linkage audit of a built wheel: what each of its ELF files links against, and from where.

It catches a failure that `pip install` and even `import vllm` do not: a CUDA-12 library
(`libcudart.so.12`) pulled into a CUDA-13 build loads only where CUDA 12 happens to be
installed. The audit returns a frozen report (data for `summary.json`, a table for the
terminal); the caller decides when to raise. Reading a wheel or a directory into its ELF
files lives here too, and `archaudit` uses it.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from rich.console import Console
from rich.table import Table
from rich.text import Text

from spark_build.errors import UsageError, first_few
from spark_build.wheel.audit import AuditReport

_ELF_MAGIC = b"\x7fELF"


# ---------------------------------------------------------------------------------------------
# Input: a wheel (unpacked to a temporary directory) or an installed/unpacked tree


@contextmanager
def unpacked(wheel_or_dir: Path) -> Iterator[Path]:
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


def elf_files(root: Path) -> list[Path]:
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


def read_dynamic(path: Path) -> _Dynamic:
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


# Asked of the interpreter the wheel will run under: where it imports packages from, in its own
# order. With `--torch existing` that includes the inherited interpreter's site-packages (a
# `.pth` file or `--system-site-packages`), where its torch and torch's libraries are.
SEARCH_PROBE = "import json, sys; json.dump({'path': [p for p in sys.path if p]}, open(sys.argv[1], 'w'))"


@dataclass(frozen=True)
class LibrarySearch:
    """Where a wheel's libraries may come from once it is installed into a venv.

    `site_packages` are the folders the venv's interpreter imports from (its `sys.path`): their
    `nvidia/*/lib`, `torch/lib` and auditwheel's `*.libs` directories hold what `import torch`
    loads before vLLM's extensions, and `$ORIGIN`-relative RPATHs (`$ORIGIN/../torch/lib`) are
    also resolved as if the wheel were installed there.
    """

    site_packages: tuple[Path, ...] = ()
    ld_library_path: tuple[Path, ...] = ()
    ld_cache: Path | None = Path("/etc/ld.so.cache")
    default_dirs: tuple[Path, ...] | None = None  # None: glibc's defaults for the ELF's machine

    @classmethod
    def for_interpreter(cls, sys_path: Iterable[str], env: Mapping[str, str]) -> LibrarySearch:
        """The search a process of the interpreter whose `sys.path` is given (`SEARCH_PROBE`'s
        answer) would see, started with environment `env`. Asked, not globbed from the venv:
        a venv's own `lib/python3*/site-packages` misses every inherited package."""
        folders = tuple(dict.fromkeys(Path(p) for p in sys_path if Path(p).is_dir()))
        ld_path = tuple(Path(p) for p in env.get("LD_LIBRARY_PATH", "").split(":") if p)
        return cls(site_packages=folders, ld_library_path=ld_path)

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


# What the NVIDIA driver installs, never a toolkit or a wheel: on a host without the driver these
# are missing for every CUDA wheel, the official ones included, so that says nothing of the wheel.
DRIVER_LIBRARIES = frozenset({"libcuda.so.1", "libcuda.so", "libnvidia-ml.so.1"})
NO_DRIVER = "the NVIDIA driver's library; this host has no driver"
NOT_INSTALLED = "not judged: the wheel did not install"

# Who ships a library a wheel links but does not carry, for the fix line: torch's own libraries
# come with torch, CUDA's with the nvidia-* wheels torch depends on or the toolkit.
_SHIPPED_BY = (
    (re.compile(r"^lib(?:torch|torch_cpu|torch_cuda|torch_python|c10|c10_cuda|shm)\.so"), "torch"),
    (re.compile(r"^lib(?:cu|nv|npp)"), "CUDA's libraries (the nvidia-* wheels torch depends on, or the toolkit)"),
)


def shipped_by(library: str) -> str:
    """What provides a library the wheel links (`libtorch.so` → torch), for the fix line."""
    return next((who for pattern, who in _SHIPPED_BY if pattern.match(library)), "the package that ships it")


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
    other_cuda: int | None = None  # the CUDA major of a library built for another one than the build's
    other_machine: bool = False  # found only built for another CPU (a wheel for another machine)


@dataclass(frozen=True)
class LinkageReport(AuditReport):
    source: str
    cuda_major: int
    libraries: tuple[LinkedLibrary, ...]
    unreadable: tuple[str, ...] = ()

    @property
    def needs_driver(self) -> tuple[str, ...]:
        """The ELF files that need a driver library this host lacks (their load is unproven here)."""
        return tuple(sorted({lib.elf for lib in self.libraries if lib.via == NO_DRIVER}))

    @property
    def problems(self) -> tuple[str, ...]:
        found = [f"{lib.elf}: {lib.problem}" for lib in self.libraries if lib.problem]
        return (*found, *(f"{path}: not a readable ELF file" for path in self.unreadable))

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cuda_major": self.cuda_major,
            "ok": self.ok,
            "problems": list(self.problems),
            "libraries": [asdict(lib) for lib in self.libraries],
        }

    def render(self, console: Console) -> None:
        # Paths and names come from the wheel: Text, never markup (`[x]` in a name must stay).
        table = Table(title=Text(f"Linkage of {self.source} (CUDA {self.cuda_major})"))
        for column in ("ELF file", "library", "resolved at"):
            table.add_column(column)
        for lib in self.libraries:
            if lib.problem:
                where = Text(lib.problem, style="red")
            elif lib.resolved is None:
                where = Text(f"not here: {lib.via}", style="yellow")
            else:
                where = Text.assemble(lib.resolved, (f" ({lib.via})", "dim"))
            table.add_row(Text(lib.elf), Text(lib.library), where)
        console.print(table)

    def failure(self) -> str:
        return f"linkage audit of {self.source} failed: {first_few(self.problems)}"

    def fix(self) -> str:
        """The fix for the causes found, most decisive first: a library of another CUDA major means
        another wheel; one missing means something to install; one only for another CPU means
        another machine."""
        cu = f"cu{self.cuda_major}0"
        other = sorted({lib.other_cuda for lib in self.libraries if lib.other_cuda is not None})
        if other:  # most often a wheel from `pip install vllm`, built for CUDA 12
            return (
                f"this wheel is built for CUDA {other[0]}: on this CUDA {self.cuda_major} machine take a wheel built "
                f"for it (`invoke build-vllm` builds one; add --prefer-wheel to take vLLM's own {cu} wheel when it "
                f"fits), or rebuild this one with CUDA_HOME at CUDA {self.cuda_major} and torch from the {cu} index"
            )
        if any(lib.other_machine for lib in self.libraries):
            return "this wheel is built for another CPU than this host's: validate it on a machine of its CPU"
        missing: dict[str, list[str]] = {}
        for lib in self.libraries:
            if lib.problem and lib.resolved is None:
                missing.setdefault(shipped_by(lib.library), []).append(lib.library)
        if missing:
            what = "; ".join(f"{who} for {', '.join(sorted(set(libs))[:3])}" for who, libs in missing.items())
            return (
                f"install into the venv the wheel runs in what ships the missing libraries ({what}); "
                "the table in the log shows where the venv's interpreter looked"
            )
        return "download or build the wheel again: an ELF file in it cannot be read"


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
    rel: str,
    name: str,
    path: Path | None,
    via: str | None,
    foreign: list[Path],
    root: Path,
    cuda_major: int,
    installed: bool,
) -> LinkedLibrary:
    """Judge one resolved NEEDED entry: another CUDA major, or not found where the installed
    wheel would look, is a problem."""
    soname = name
    if path is not None:
        try:  # an unversioned NEEDED (`libcublas.so`) may land on a CUDA-12 file
            soname = read_dynamic(path).soname or path.resolve().name
        except ELFError:
            soname = path.resolve().name
    major = cuda_major_of(name) or cuda_major_of(soname)
    problem, other_cuda = None, None
    if major is not None and major != cuda_major:
        problem, other_cuda = f"{name} is a CUDA {major} library; this build is CUDA {cuda_major}", major
    elif path is None and name in DRIVER_LIBRARIES:
        via = NO_DRIVER
    elif path is None and not installed:
        via = NOT_INSTALLED
    elif path is None:
        problem = f"{name} not found" + (f" (only for another machine: {foreign[0]})" if foreign else "")
    resolved = None
    if path is not None:
        real, top = path.resolve(), root.resolve()
        resolved = real.relative_to(top).as_posix() if real.is_relative_to(top) else str(path)
    return LinkedLibrary(rel, name, resolved, via, problem, other_cuda, bool(problem and foreign))


def linkage_audit(
    wheel_or_dir: Path, search: LibrarySearch, cuda_major: int, *, installed: bool = True
) -> LinkageReport:
    """Resolve every NEEDED library of every ELF file in a wheel; flag other CUDA majors.

    Fails (in the report) on a toolkit library of another CUDA major — named either in NEEDED
    or in the soname of what an unversioned NEEDED resolved to — and on anything unresolved
    except the driver's own libraries (`DRIVER_LIBRARIES`), which only the host can provide.
    Not `installed` (the install failed), only the wheel's files are judged: a CUDA major read
    from a name still fails, a library its dependencies would bring is left unjudged.
    """
    libraries: list[LinkedLibrary] = []
    unreadable: list[str] = []
    with unpacked(wheel_or_dir) as root:
        resolver = _Resolver(search, root)
        for elf in elf_files(root):
            rel = elf.relative_to(root).as_posix()
            try:
                dyn = read_dynamic(elf)
            except ELFError:
                unreadable.append(rel)
                continue
            libraries.extend(
                _link(rel, name, *resolver.resolve(name, elf, dyn), root, cuda_major, installed) for name in dyn.needed
            )
    return LinkageReport(wheel_or_dir.name, cuda_major, tuple(libraries), tuple(unreadable))
