"""The validate proof on real venvs, real ELF files, real uv and pip and the real cuobjdump.

The wheels are small but real: CPython extension modules compiled here (test_prebuilt's nvcc-built
`_C` for `sm_121a`, gcc for host code), one linking a `libtorch.so` that only an inherited interpreter's `torch/lib`
holds (what `--torch existing` gives the validate venv), one that kills the interpreter, one whose
import error carries `[name]`. The package index is a loopback server, so a missing requirement
and an unreachable index are tested without depending on what PyPI holds tonight.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from spark_build.errors import HostProblem
from spark_build.proc import Runner
from spark_build.venv import Installer
from spark_build.wheel.archaudit import ArchReport, find_cuobjdump
from spark_build.wheel.linkage import SEARCH_PROBE, LibrarySearch, linkage_audit
from spark_build.wheel.proof import WheelProof, modules_of, prove_wheel
from tests.integration.test_audit import _run_all
from tests.integration.test_prebuilt import Extensions, extensions  # noqa: F401  (its fixture, compiled once)
from tests.servers import wheel_index
from tests.unit.test_audit import CUDA_HOME

EXTENSION = """
#include <Python.h>
#include <signal.h>
#include <stdio.h>
@BODY@
static struct PyModuleDef definition = {PyModuleDef_HEAD_INIT, "@NAME@", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_@NAME@(void) { @INIT@ return PyModule_Create(&definition); }
"""
# torch's own __init__ loads libtorch.so globally before any extension that links it; so does ours.
FAKE_TORCH = """import ctypes, os
ctypes.CDLL(os.path.join(os.path.dirname(__file__), "lib", "libtorch.so"), mode=ctypes.RTLD_GLOBAL)
"""


def extension(name: str, *, body: str = "", init: str = "") -> str:
    return EXTENSION.replace("@NAME@", name).replace("@BODY@", body).replace("@INIT@", init)


def make_wheel(folder: Path, dist: str, files: dict[str, bytes], requires: tuple[str, ...] = ()) -> Path:
    """A wheel with a RECORD, as pip and uv want it."""
    dist_info = f"{dist}-0.1.dist-info"
    metadata = ["Metadata-Version: 2.1", f"Name: {dist}", "Version: 0.1", *(f"Requires-Dist: {r}" for r in requires)]
    files = {
        **files,
        f"{dist_info}/METADATA": ("\n".join(metadata) + "\n").encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: spark-build-tests\nRoot-Is-Purelib: false\n"
        b"Tag: cp38-abi3-linux_x86_64\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-0.1-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr(f"{dist_info}/RECORD", "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n")
    return wheel


@dataclass(frozen=True)
class Built:
    base: Path  # a venv whose site-packages hold a `torch` package with a real lib/libtorch.so
    needy: Path  # a wheel with a GPU extension and one linking libtorch.so, which it does not ship
    crashy: Path  # a wheel with a fine GPU extension, one that dies (SIGSEGV), one raising "[name]"
    plain: Path  # a wheel with a fine GPU extension

    def site(self) -> Path:
        return next(self.base.glob("lib/python3*/site-packages"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, extensions: Extensions) -> Built:  # noqa: F811
    """gcc only: the GPU extension is test_prebuilt's `_C` for sm_121a (nvcc, built once a session)."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    work = tmp_path_factory.mktemp("proof")
    base = work / "base"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", base], check=True)
    torch_lib = next(base.glob("lib/python3*/site-packages")) / "torch" / "lib"
    torch_lib.mkdir(parents=True)
    (torch_lib.parent / "__init__.py").write_text(FAKE_TORCH)
    sources = {
        "libtorch.c": "int torch_answer(void) { return 42; }\n",
        "torchy.c": extension("_torchy", body="int torch_answer(void);", init="torch_answer();"),
        "boom.c": extension("_boom", init='fprintf(stderr, "boom: about to crash\\n"); raise(SIGSEGV);'),
        "odd.c": extension("_odd", init='PyErr_SetString(PyExc_ImportError, "needs [name] in [folder]"); return NULL;'),
    }
    for name, text in sources.items():
        (work / name).write_text(text)
    host = ["gcc", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}"]
    _run_all(
        [
            ["gcc", "-shared", "-fPIC", "-Wl,-soname,libtorch.so", "-o", torch_lib / "libtorch.so", "libtorch.c"],
            [*host, "-o", "boom.so", "boom.c"],
            [*host, "-o", "odd.so", "odd.c"],
        ],
        cwd=work,
    )
    _run_all([[*host, "-o", "torchy.so", "torchy.c", f"-L{torch_lib}", "-ltorch"]], cwd=work)
    gpu, wheels = extensions.spark_c.read_bytes(), work / "wheels"
    return Built(
        base=base,
        needy=make_wheel(
            wheels,
            "needy",
            {
                "needy/__init__.py": b"",
                "needy/_C.abi3.so": gpu,
                "needy/_torchy.abi3.so": (work / "torchy.so").read_bytes(),
            },
        ),
        crashy=make_wheel(
            wheels,
            "crashy",
            {
                "crashy/__init__.py": b"",
                "crashy/_C.abi3.so": gpu,
                "crashy/_boom.abi3.so": (work / "boom.so").read_bytes(),
                "crashy/_odd.abi3.so": (work / "odd.so").read_bytes(),
            },
        ),
        plain=make_wheel(wheels, "plain", {"plain/__init__.py": b"", "plain/_C.abi3.so": gpu}),
    )


def proof_of(wheel: Path, tmp_path: Path, *, python: Path | str = sys.executable, **changes: object) -> WheelProof:
    fields: dict[str, object] = {
        "wheel": wheel,
        "venv": tmp_path / "validate-venv",
        "python": str(python),
        "requirements": (),
        "index": None,
        "installer": Installer(),
        "modules": modules_of(wheel),
        "cuda_home": CUDA_HOME,
        "cuda_major": 13,
        "targets": ("12.1",),
        "driver": False,
        **changes,
    }
    return WheelProof(**fields)  # type: ignore[arg-type]


def sys_path_of(python: Path, answer: Path) -> list[str]:
    """What the linkage audit asks an interpreter (`SEARCH_PROBE`), asked here as prove_wheel does."""
    subprocess.run([python, "-c", SEARCH_PROBE, answer], check=True)
    return list(json.loads(answer.read_text())["path"])


# ---- item: the linkage audit searches where the venv's interpreter imports from


def test_an_inherited_torch_s_library_is_found_where_the_validate_venv_s_interpreter_imports_from(
    built: Built, tmp_path: Path
) -> None:
    """`--torch existing`: the validate venv inherits the interpreter's site-packages, whose
    torch/lib holds libtorch.so; the venv's own site-packages do not (the GPU machine's failure)."""
    proof = proof_of(
        built.needy, tmp_path, python=built.base / "bin" / "python", installer=Installer(inherit_site=True)
    )
    outcome = prove_wheel(proof, Runner(), tmp_path / "validate.log")
    libtorch = next(lib for lib in outcome.results["linkage"]["libraries"] if lib["library"] == "libtorch.so")
    assert libtorch["resolved"] == str(built.site() / "torch" / "lib" / "libtorch.so")
    assert libtorch["via"] == "venv" and libtorch["problem"] is None
    assert outcome.results["imports"] == {"needy": True, "needy._C": True, "needy._torchy": True}
    assert outcome.problems == []


def test_a_library_missing_from_the_venv_asks_for_the_package_that_ships_it_not_for_a_rebuild(
    built: Built, tmp_path: Path
) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "plain"], check=True)
    search = LibrarySearch.for_interpreter(
        sys_path_of(tmp_path / "plain" / "bin" / "python", tmp_path / "path.json"), {}
    )
    report = linkage_audit(built.needy, search, cuda_major=13)
    assert report.problems == ("needy/_torchy.abi3.so: libtorch.so not found",)
    assert "torch for libtorch.so" in report.fix()
    assert "rebuild" not in report.fix() and "CUDA 13 only" not in report.fix()


# ---- item: the modules imported in one process; after a crash, each in its own, named by what happened


def test_a_module_that_kills_the_interpreter_is_named_by_how_it_died_and_the_others_are_still_judged(
    built: Built, tmp_path: Path
) -> None:
    outcome = prove_wheel(proof_of(built.crashy, tmp_path), Runner(), tmp_path / "validate.log")
    assert outcome.results["imports"] == {
        "crashy": True,
        "crashy._C": True,
        "crashy._boom": False,
        "crashy._odd": False,
    }
    boom = next(p for p in outcome.problems if "crashy._boom" in p)
    assert boom.startswith("the installed wheel fails to import crashy._boom: the interpreter died with SIGSEGV: ")
    assert "boom: about to crash" in boom and "importlib" not in boom  # what it said, not our script
    assert "the installed wheel fails to import crashy._odd: ImportError: needs [name] in [folder]" in outcome.problems


def test_a_wheel_whose_modules_all_import_is_proven_by_one_interpreter_not_one_per_module(
    built: Built, tmp_path: Path
) -> None:
    """Each probe imports torch first (25-30 s on a loaded machine): a wheel that imports cleanly
    pays for it once; only a probe that dies sends the check back to one process per module."""
    log = tmp_path / "validate.log"
    outcome = prove_wheel(proof_of(built.plain, tmp_path), Runner(), log)
    assert outcome.results["imports"] == {"plain": True, "plain._C": True}
    probes = [line for line in log.read_text().splitlines() if line.startswith("+ ") and "import_probe.py" in line]
    assert len(probes) == 1 and probes[0].endswith(" plain plain._C")


# ---- item: static checks first; a requirement the index lacks is named, an unreachable index is not a verdict


@pytest.fixture
def empty_index(tmp_path: Path) -> Iterator[str]:
    with wheel_index(tmp_path / "index", []) as url:
        yield url


def test_a_requirement_the_index_lacks_is_named_and_the_gpu_code_table_still_stands(
    built: Built, tmp_path: Path, empty_index: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_DEFAULT_INDEX", empty_index)
    wheel = make_wheel(
        tmp_path / "w",
        "needsmore",
        {"needsmore/__init__.py": b"", "needsmore/_C.abi3.so": zipfile.ZipFile(built.plain).read("plain/_C.abi3.so")},
        requires=("spark-build-absent-dep==0.7.3",),
    )
    outcome = prove_wheel(proof_of(wheel, tmp_path), Runner(), tmp_path / "validate.log")
    assert outcome.problems[0] == (
        "not installable from the package index: needsmore==0.1 depends on spark-build-absent-dep==0.7.3, "
        "which it does not have"
    )
    (arch,) = [r for r in outcome.reports if isinstance(r, ArchReport)]
    assert arch.ok and [f.family for f in arch.families] == ["_C"]  # judged from the wheel's files
    assert outcome.results["installed_ok"] is False and outcome.results["imports"] == {}
    assert "folder of wheels" in outcome.fix()


def test_an_index_that_cannot_be_reached_raises_a_host_problem_instead_of_a_verdict(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("UV_DEFAULT_INDEX", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    wheel = make_wheel(
        tmp_path / "w",
        "needsnet",
        {"needsnet/__init__.py": b"", "needsnet/_C.abi3.so": zipfile.ZipFile(built.plain).read("plain/_C.abi3.so")},
        requires=("six",),
    )
    with pytest.raises(HostProblem) as err:
        prove_wheel(proof_of(wheel, tmp_path), Runner(), tmp_path / "validate.log")
    assert err.value.exit_code == 1 and err.value.message.startswith("cannot reach the package index")
    assert f"127.0.0.1:{port}" in err.value.message and "says nothing about the wheel" in (err.value.hint or "")


# ---- item: with --wheels, what the folder lacks is counted, listed in a file and fetchable


def test_offline_the_requirements_the_folder_lacks_are_counted_listed_and_fetchable_with_one_command(
    built: Built, tmp_path: Path
) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel = make_wheel(
        tmp_path / "w",
        "offline",
        {"offline/__init__.py": b"", "offline/_C.abi3.so": zipfile.ZipFile(built.plain).read("plain/_C.abi3.so")},
        requires=("cbor2", "openai>=1.99", "blake3", "ijson"),
    )
    listed = tmp_path / "run" / "missing-requirements.txt"
    proof = proof_of(wheel, tmp_path, installer=Installer(wheels=folder), unmet_list=listed)
    outcome = prove_wheel(proof, Runner(), tmp_path / "validate.log")
    assert listed.read_text().split() == ["cbor2", "openai>=1.99", "blake3", "ijson"]
    assert outcome.results["import_notes"][0] == (
        f"4 runtime requirements are not in the wheel folder {folder} (cbor2, openai>=1.99, blake3 …); "
        f"the full list: {listed} (and validate.json); fetch them into the folder where an index is reachable: "
        f"pip download -d {folder} -r {listed}"
    )
    assert outcome.problems == []


# ---- item: cuobjdump that cannot start


def test_a_cuobjdump_that_cannot_start_is_passed_over_and_none_that_starts_is_one_host_problem(tmp_path: Path) -> None:
    """Real ELF executables: one whose loader does not exist (exec fails), one needing a library
    that does not exist (the loader says so), as the glibc-2.38 cuobjdump fails on Ubuntu 22.04."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    (tmp_path / "main.c").write_text("int gone(void);\nint main(void) { return gone(); }\n")
    (tmp_path / "gone.c").write_text("int gone(void) { return 0; }\n")
    home, path_dir = tmp_path / "cuda", tmp_path / "bin"
    (home / "bin").mkdir(parents=True)
    path_dir.mkdir()
    build = [
        ["gcc", "-shared", "-fPIC", "-Wl,-soname,libgone.so.1", "-o", "libgone.so.1", "gone.c"],
    ]
    _run_all(build, cwd=tmp_path)
    _run_all(
        [
            [
                "gcc",
                "-o",
                home / "bin" / "cuobjdump",
                "main.c",
                "libgone.so.1",
                "-Wl,--dynamic-linker=/nonexistent/ld.so",
            ],
            ["gcc", "-o", path_dir / "cuobjdump", "main.c", "libgone.so.1"],
        ],
        cwd=tmp_path,
    )
    (tmp_path / "libgone.so.1").unlink()
    with pytest.raises(HostProblem) as err:
        find_cuobjdump(home, {"PATH": str(path_dir)})
    message = err.value.message
    assert message.startswith(f"cuobjdump cannot start here: {home / 'bin' / 'cuobjdump'}: No such file or directory")
    assert "its loader /nonexistent/ld.so is missing here" in message
    assert f"{path_dir / 'cuobjdump'}: " in message and "libgone.so.1: cannot open shared object file" in message
    assert err.value.exit_code == 1 and "nvidia-cuda-cuobjdump" in (err.value.hint or "")
    # A working one later in the order (the package in spark-build's venv) is taken.
    found = find_cuobjdump(home, {"PATH": str(path_dir)}, Path(sys.prefix))
    assert found.is_relative_to(Path(sys.prefix))
