"""`--torch existing` and `--wheels`: building against the torch an interpreter already has (as
in NVIDIA's PyTorch container or an air-gapped lab), and installing from a folder of wheels.

The interpreter here is a real venv holding this machine's CPU torch wheel; the build is the
example upstream, end to end (CMake + Ninja + nvcc for sm_121a, validate, publish).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CPU_TORCH, Build, ok, published_wheel


@pytest.fixture(scope="session")
def torch_host(tmp_path_factory: pytest.TempPathFactory, cpu_torch_wheel: Path, uv_cache: Path) -> Path:
    """An interpreter whose venv already holds torch: what `--python` names in existing mode."""
    from uv import find_uv_bin

    venv = tmp_path_factory.mktemp("torch-host") / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    install = [find_uv_bin(), "pip", "install", "--python", python, "--find-links", cpu_torch_wheel.parent, CPU_TORCH]
    done = subprocess.run(install, capture_output=True, text=True, env={**os.environ, "UV_CACHE_DIR": str(uv_cache)})
    assert done.returncode == 0, done.stderr
    return python


def own_site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python*/site-packages")
    return site


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line a refused command prints, with no traceback."""
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_an_existing_torch_is_built_against_and_validated_without_installing_torch(
    make_build, torch_host: Path, warm_compiler_cache: Path
) -> None:
    build: Build = make_build("existing", compiler_cache=warm_compiler_cache)
    dry = ok(build.run("--torch", "existing", "--python", str(torch_host), "--dry-run"))
    assert f"torch: the torch already installed for {torch_host} (--torch existing)" in dry.stdout

    ok(build.run("--torch", "existing", "--python", str(torch_host)))
    torch = build.state()["steps"]["torch"]["result"]
    assert torch["existing"] is True and torch["version"] == "2.13.0+cpu"
    assert torch["location"].startswith(str(torch_host.parent.parent))
    for venv in (build.workdir / "venv", build.workdir / "validate-venv"):
        site = own_site_packages(venv)
        assert not list(site.glob("torch-*.dist-info")), f"torch was installed into {venv}"
        assert str(own_site_packages(torch_host.parent.parent)) in (site / "spark_build_inherit.pth").read_text()
    validated = json.loads((build.workdir / "logs" / "latest" / "validate.json").read_text())
    assert validated["imports"] == {"spark_example": True, "spark_example._C": True}
    assert published_wheel(build).is_file()


def test_an_interpreter_without_torch_is_refused_before_anything_is_written(make_build, tmp_path: Path) -> None:
    bare = tmp_path / "python-without-torch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", bare], check=True)
    build: Build = make_build("bare")
    result = build.run("--torch", "existing", "--python", str(bare / "bin" / "python"))
    assert result.returncode == 2
    line = one_error(result)
    assert "existing torch" in line and "has no torch" in line
    assert "--python" in result.stderr  # the fix names the option
    assert not build.workdir.exists(), "refused before the workdir is made"


def test_a_cpu_torch_is_refused_for_a_cuda_13_build(make_build, torch_host: Path) -> None:
    build: Build = make_build("cpu-for-cuda")
    result = build.run("--torch", "existing", "--python", str(torch_host), "--torch-cuda", "13")
    assert result.returncode == 2
    assert "not CUDA 13" in one_error(result)
    assert not build.workdir.exists(), "refused before the workdir is made"


def test_a_wheel_folder_missing_a_build_requirement_names_it(make_build, torch_host: Path, tmp_path: Path) -> None:
    # The pre-check reads wheel names only (pip would read the files): named stand-ins suffice to
    # show that every requirement but `wheel` is found in the folder.
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name in (
        "cmake-3.31.6-py3-none-manylinux_2_17_x86_64.whl",
        "ninja-1.13.0-py3-none-manylinux_2_17_x86_64.whl",
        "packaging-25.0-py3-none-any.whl",
        "setuptools-79.0.1-py3-none-any.whl",
        "setuptools_scm-9.2.2-py3-none-any.whl",
    ):
        (folder / name).write_text("")
    build: Build = make_build("offline")
    result = build.run("--torch", "existing", "--python", str(torch_host), "--wheels", str(folder))
    assert result.returncode == 2
    assert one_error(result) == (f"error: [build-deps] 1 build requirement(s) in neither the venv nor {folder}: wheel")
    assert build.step_status("build-deps") == "failed" and build.step_status("clone") == "done"
