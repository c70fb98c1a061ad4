"""The C++ standard check on real git trees: the pins come from the commit that
use_existing_torch.py changed, and a tree without git or pins is still checked."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from spark_build.compile.cxxstd import (
    check_source_against_torch,
    committed_text,
    torch_floor,
)
from spark_build.errors import StepFailed
from spark_build.upstream.facts import torch_pins
from tests.conftest import ROOT
from tests.unit.test_cxxstd import ATEN_2_13, ATEN_2_14, CUDA_TXT, SOURCE_PINS

VLLM_CMAKE = "set(CMAKE_CXX_STANDARD 17)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)\nfind_package(Torch REQUIRED)\n"


def _source(tmp_path: Path, cmakelists: str, cuda_txt: str | None) -> Path:
    src = tmp_path / "src"
    (src / "requirements").mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(cmakelists)
    repo = git.Repo.init(src)
    if cuda_txt is not None:
        (src / "requirements" / "cuda.txt").write_text(cuda_txt)
    repo.git.add("-A")
    repo.git.commit(
        "-qm",
        "source",
        "--allow-empty",
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )
    return src


def _torch(tmp_path: Path, header: str) -> Path:
    """A torch package folder with only the header the check reads."""
    torch = tmp_path / "venv" / "lib" / "python3.12" / "site-packages" / "torch"
    (torch / "include" / "ATen").mkdir(parents=True)
    (torch / "include" / "ATen" / "ATen.h").write_text(header)
    return torch


def test_the_pins_come_from_the_commit_after_use_existing_torch_removed_them(tmp_path: Path) -> None:
    src = _source(tmp_path, VLLM_CMAKE, CUDA_TXT)
    (src / "requirements" / "cuda.txt").write_text("numba == 0.61.2\n")  # what the script leaves
    assert torch_pins(committed_text(src, "requirements/cuda.txt")) == SOURCE_PINS
    with pytest.raises(StepFailed) as caught:
        check_source_against_torch(src, _torch(tmp_path, ATEN_2_14), "2.14.1", "vllm 0.13.0")
    assert caught.value.hint == (
        "build against the torch vllm 0.13.0 pins: --torch-packages "
        "'torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0', then --resume"
    ), "the pins as --dry-run and invoke recipe name them"


def test_a_matching_torch_passes_and_a_tree_without_git_or_pins_still_gets_checked(tmp_path: Path) -> None:
    src = _source(tmp_path, VLLM_CMAKE, None)
    torch = _torch(tmp_path, ATEN_2_13)
    assert torch_floor(torch) == 17
    check_source_against_torch(src, torch, "2.13.0", "vllm")
    assert committed_text(tmp_path, "requirements/cuda.txt") == ""  # not a git repo


def test_a_source_without_torch_headers_builds_with_any_torch(tmp_path: Path) -> None:
    # The example upstream sets C++17 but never looks for torch: torch 2.14 cannot break it.
    src = _source(
        tmp_path, (ROOT / "spark_build" / "upstream" / "example_upstream" / "CMakeLists.txt").read_text(), None
    )
    check_source_against_torch(src, _torch(tmp_path, ATEN_2_14), "2.14.1", "spark-example")
