"""A Python-only change carried onto a prebuilt wheel: the rewritten wheel is real — pip installs
it into a fresh venv (checking its RECORD), it imports, and it says its new version."""

from __future__ import annotations

import base64
import csv
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spark_build.errors import StepFailed
from spark_build.wheel.repatch import patch_wheel
from tests.integration.test_prebuilt import git_runner

MODEL = "".join(f"line {n}\n" for n in range(1, 11))


def official(tmp_path: Path) -> Path:
    """A pure-Python stand-in for vLLM's wheel, with its RECORD, as a release would ship it."""
    files = {
        "vllm/__init__.py": b"from vllm.model import MODEL\n",
        "vllm/model.py": f"MODEL = {MODEL!r}\n".encode(),
        # vLLM ships MoE configs whose names hold commas: RECORD must quote them
        "vllm/configs/E=128,N=384,device_name=NVIDIA_GB10.json": b"{}\n",
        "vllm-0.15.0+cu130.dist-info/METADATA": b"Metadata-Version: 2.1\nName: vllm\nVersion: 0.15.0+cu130\n",
        "vllm-0.15.0+cu130.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n",
    }
    wheel = tmp_path / "vllm-0.15.0+cu130-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        tool = zipfile.ZipInfo("vllm/vllm-rs")  # an executable, as vLLM 0.33 ships one
        tool.external_attr = 0o755 << 16
        archive.writestr(tool, b"#!/bin/sh\necho ok\n")
        archive.writestr("vllm-0.15.0+cu130.dist-info/RECORD", "")
    return wheel


def test_the_rewritten_wheel_installs_with_pip_imports_and_carries_a_new_local_version(tmp_path: Path) -> None:
    patch = tmp_path / "pr.diff"
    patch.write_text(
        "diff --git a/vllm/model.py b/vllm/model.py\n--- a/vllm/model.py\n+++ b/vllm/model.py\n"
        f"@@ -1 +1,2 @@\n MODEL = {MODEL!r}\n+FIXED = True\n"
    )
    wheel = patch_wheel(official(tmp_path), [("PR #7", patch)], "pr7", tmp_path / "out", git_runner)
    assert wheel.name == "vllm-0.15.0+cu130.pr7-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "vllm-0.15.0+cu130.pr7.dist-info/METADATA" in names
        assert archive.getinfo("vllm/vllm-rs").external_attr >> 16 & 0o777 == 0o755
        rows = list(csv.reader(archive.read("vllm-0.15.0+cu130.pr7.dist-info/RECORD").decode().splitlines()))
        assert "vllm/configs/E=128,N=384,device_name=NVIDIA_GB10.json" in [row[0] for row in rows]
        for path, digest, size in rows:
            if digest:
                data = archive.read(path)
                assert (
                    digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                )
                assert int(size) == len(data)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", wheel], check=True)
    probe = "import importlib.metadata, vllm.model; print(vllm.model.FIXED, importlib.metadata.version('vllm'))"
    shown = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert shown.split() == ["True", "0.15.0+cu130.pr7"]


def test_a_change_that_does_not_fit_the_wheel_s_files_is_refused_naming_it(tmp_path: Path) -> None:
    patch = tmp_path / "stale.diff"
    patch.write_text(
        "diff --git a/vllm/model.py b/vllm/model.py\n--- a/vllm/model.py\n+++ b/vllm/model.py\n"
        "@@ -1 +1 @@\n-MODEL = 'something else'\n+MODEL = 'x'\n"
    )
    with pytest.raises(StepFailed, match=r"stale.diff does not apply to the files of vllm-0.15.0\+cu130"):
        patch_wheel(official(tmp_path), [("stale.diff", patch)], "patch1", tmp_path / "out", git_runner)
