"""The wheel surgery of a completion, on a real wheel: a CPython extension compiled by gcc in
two builds (the "official" one and the one "built here"), swapped in; pip installs the result
into a fresh venv, checking RECORD, and the module it imports is the one built here."""

from __future__ import annotations

import base64
import csv
import hashlib
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from spark_build.errors import UsageError
from spark_build.wheel.complete import complete_wheel

MODULE = """
#include <Python.h>
static struct PyModuleDef definition = {{PyModuleDef_HEAD_INIT, "_C", NULL, -1, NULL}};
PyMODINIT_FUNC PyInit__C(void) {{
    PyObject* module = PyModule_Create(&definition);
    PyModule_AddStringConstant(module, "BUILT", "{built}");
    return module;
}}
"""
DIST_INFO = "vllm-0.26.0+cu130.dist-info"


def compiled(tmp_path: Path, built: str) -> Path:
    source = tmp_path / f"{built}.c"
    source.write_text(MODULE.format(built=built))
    out = tmp_path / f"{built}.so"
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-shared", "-fPIC", f"-I{include}", "-o", out, source], check=True)
    return out


def official(tmp_path: Path, extension: Path) -> Path:
    files = {
        "vllm/__init__.py": b"",
        "vllm/_C.abi3.so": extension.read_bytes(),
        "vllm/configs/E=128,N=384,device_name=NVIDIA_GB10.json": b"{}\n",
        f"{DIST_INFO}/METADATA": b"Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0+cu130\n",
        f"{DIST_INFO}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp38-abi3-linux_x86_64\n",
    }
    wheel = tmp_path / "vllm-0.26.0+cu130-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        tool = zipfile.ZipInfo("vllm/vllm-rs")
        tool.external_attr = 0o755 << 16
        archive.writestr(tool, b"#!/bin/sh\necho ok\n")
        archive.writestr(f"{DIST_INFO}/RECORD", "")
    return wheel


def test_a_completed_wheel_swaps_only_the_extension_verifies_its_record_and_installs_with_pip(tmp_path: Path) -> None:
    wheel = official(tmp_path, compiled(tmp_path, "official"))
    here = compiled(tmp_path, "here")
    completed = complete_wheel(wheel, {"vllm/_C.abi3.so": here}, "sm121a", tmp_path / "out")

    assert completed.name == "vllm-0.26.0+cu130.sm121a-cp38-abi3-linux_x86_64.whl"
    again = complete_wheel(wheel, {"vllm/_C.abi3.so": here}, "sm121a", tmp_path / "again")
    assert again.read_bytes() == completed.read_bytes(), "the same completion gives the same wheel, byte for byte"
    with zipfile.ZipFile(wheel) as before, zipfile.ZipFile(completed) as after:
        info = "vllm-0.26.0+cu130.sm121a.dist-info"
        assert f"{info}/METADATA" in after.namelist() and DIST_INFO + "/METADATA" not in after.namelist()
        assert "Version: 0.26.0+cu130.sm121a" in after.read(f"{info}/METADATA").decode()
        assert after.read("vllm/_C.abi3.so") == here.read_bytes()
        untouched = [n for n in before.namelist() if n.startswith("vllm/") and n != "vllm/_C.abi3.so"]
        assert untouched and all(before.read(n) == after.read(n) for n in untouched)
        assert after.getinfo("vllm/vllm-rs").external_attr >> 16 & 0o777 == 0o755
        rows = list(csv.reader(after.read(f"{info}/RECORD").decode().splitlines()))
        assert sorted(r[0] for r in rows) == sorted(after.namelist())
        for path, digest, size in rows:
            if path.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = after.read(path)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", completed], check=True)
    probe = "import importlib.metadata, vllm._C; print(vllm._C.BUILT, importlib.metadata.version('vllm'))"
    shown = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert shown.split() == ["here", "0.26.0+cu130.sm121a"]


def test_a_wheel_without_a_local_version_gets_one_that_says_what_was_added(tmp_path: Path) -> None:
    extension = compiled(tmp_path, "here")
    wheel = tmp_path / "spark_example-0.1.0-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("spark_example/_C.abi3.so", b"old")
        archive.writestr("spark_example-0.1.0.dist-info/METADATA", "Name: spark-example\nVersion: 0.1.0\n")
        archive.writestr("spark_example-0.1.0.dist-info/RECORD", "")
    completed = complete_wheel(wheel, {"spark_example/_C.abi3.so": extension}, "sm120", tmp_path / "out")
    assert completed.name == "spark_example-0.1.0+sm120-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(completed) as archive:
        assert "spark_example-0.1.0+sm120.dist-info/RECORD" in archive.namelist()


def test_an_extension_the_wheel_does_not_ship_is_refused_naming_it(tmp_path: Path) -> None:
    wheel = official(tmp_path, compiled(tmp_path, "official"))
    with pytest.raises(UsageError, match=r"ships no vllm/_qutlass_C.abi3.so"):
        complete_wheel(wheel, {"vllm/_qutlass_C.abi3.so": compiled(tmp_path, "here")}, "sm120", tmp_path / "out")
    assert not (tmp_path / "out").exists()
