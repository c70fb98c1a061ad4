"""The install line printed after a publish: typed as printed into a new shell (no venv active,
no uv on PATH) it must install the published wheel. Run through a real shell in
tests/integration/test_prebuilt.py and test_build_e2e.py; here, what it says."""

from __future__ import annotations

import shlex
from pathlib import Path

from spark_build.wheel.wheelhouse import install_line

WHEELHOUSE = Path("/home/me/work/wheelhouse")
WHEEL = WHEELHOUSE / "vllm" / "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"


def test_the_install_line_makes_its_own_venv_and_installs_with_that_venvs_pip_not_with_uv() -> None:
    venv = Path("/home/me/work/vllm-venv")
    pypi, pins = "https://pypi.org/simple", ["torch==2.14.0"]
    line = install_line(WHEEL, WHEELHOUSE, python="/usr/bin/python3.12", venv=venv, index=pypi, pins=pins)
    make, install = line.split(" && ")
    assert shlex.split(make) == ["/usr/bin/python3.12", "-m", "venv", str(venv)]
    assert shlex.split(install) == [
        f"{venv}/bin/python",
        "-m",
        "pip",
        "install",
        "--extra-index-url",
        "file:///home/me/work/wheelhouse/",
        "--extra-index-url",
        "https://pypi.org/simple",
        "vllm==0.33.0",
        "torch==2.14.0",
    ]
    assert "uv " not in line


def test_with_an_existing_torch_the_wheel_goes_into_that_interpreter_and_a_wheel_folder_is_a_find_links() -> None:
    line = install_line(WHEEL, WHEELHOUSE, python="/opt/torch/.venv/bin/python", index="/mirror/wheels")
    assert shlex.split(line) == [
        "/opt/torch/.venv/bin/python",
        "-m",
        "pip",
        "install",
        "--extra-index-url",
        "file:///home/me/work/wheelhouse/",
        "--find-links",
        "/mirror/wheels",
        "vllm==0.33.0",
    ]


def test_a_path_with_a_space_is_quoted_so_the_shell_keeps_it_whole() -> None:
    line = install_line(WHEEL, WHEELHOUSE, python="/home/me/my tools/python3", venv=Path("/home/me/v env"))
    assert shlex.split(line.split(" && ")[0]) == ["/home/me/my tools/python3", "-m", "venv", "/home/me/v env"]
