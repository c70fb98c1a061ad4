"""The compile stops before its first object when torch's headers need a newer C++ than the
source compiles with, and names the torch the source pins: the pure reading and judging."""

from __future__ import annotations

import pytest

from spark_build.compile.cxxstd import (
    conflict,
    header_floor,
    source_standard,
)
from spark_build.errors import StepFailed
from spark_build.upstream.facts import cxx_standard, torch_pins

# The first lines of ATen/ATen.h as torch 2.13.0 and 2.14.1 ship them.
ATEN_2_13 = """#if !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)
#pragma once

#if !defined(_MSC_VER) && __cplusplus < 201703L
#error C++17 or later compatible compiler is required to use ATen.
#endif
"""

ATEN_2_14 = ATEN_2_13.replace("201703L", "202002L").replace("C++17", "C++20")


# vLLM 0.13.0's requirements/cuda.txt, as committed (use_existing_torch.py deletes the pins).
CUDA_TXT = """# Common dependencies
-r common.txt

numba == 0.61.2 # Required for N-gram speculative decoding
torch==2.9.0
torchaudio==2.9.0
# These must be updated alongside torch
torchvision==0.24.0 # Required for phi3v processor.
flashinfer-python==0.5.3
"""

VLLM_PINS = ("torch==2.9.0", "torchaudio==2.9.0", "torchvision==0.24.0")
# The same pins as the source plan and `invoke recipe` read them (upstream.facts: torch, torchvision, torchaudio).
SOURCE_PINS = ("torch==2.9.0", "torchvision==0.24.0", "torchaudio==2.9.0")


@pytest.mark.parametrize(("header", "floor"), [(ATEN_2_13, 17), (ATEN_2_14, 20), ("#pragma once\n", None)])
def test_the_torch_floor_is_read_from_atens_cplusplus_guard(header: str, floor: int | None) -> None:
    assert header_floor(header) == floor


@pytest.mark.parametrize(
    ("cmakelists", "standard"),
    [
        ("set(CMAKE_CXX_STANDARD 17)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)\nfind_package(Torch REQUIRED)\n", 17),
        ("SET( CMAKE_CXX_STANDARD 20 )\nFIND_PACKAGE(Torch)\n", 20),
        ("project(x LANGUAGES CXX)\nfind_package(Torch REQUIRED)\n", None),
        ("set(CMAKE_CXX_STANDARD 17)\nfind_package(Python3 REQUIRED)\n", None),
    ],
)
def test_the_standard_counts_only_for_a_source_that_compiles_against_torch(cmakelists: str, standard) -> None:
    assert source_standard(cmakelists) == standard


def test_the_exact_torch_pins_are_read_by_the_recipe_reader_and_nothing_else() -> None:
    assert torch_pins(CUDA_TXT) == SOURCE_PINS
    assert torch_pins("torch>=2.9\n") == ()


@pytest.mark.parametrize(
    "cmakelists",
    [
        "set(CMAKE_CXX_STANDARD 17)\nfind_package(Torch REQUIRED)\n",
        "SET( CMAKE_CXX_STANDARD 20 )\nFIND_PACKAGE(Torch)\n",
        "project(x LANGUAGES CXX)\nfind_package(Torch REQUIRED)\n",
    ],
)
def test_the_compile_check_and_invoke_recipe_read_the_same_standard(cmakelists: str) -> None:
    standard = cxx_standard(cmakelists)
    assert source_standard(cmakelists) == (int(standard) if standard else None)


@pytest.mark.parametrize(("floor", "standard"), [(17, 17), (17, 20), (None, 17), (20, None)])
def test_no_conflict_when_the_source_standard_meets_the_floor_or_either_is_unknown(floor, standard) -> None:
    assert conflict("2.13.0", floor, standard, VLLM_PINS, "vllm 0.13.0") is None


def test_a_conflict_names_both_standards_and_the_torch_the_source_pins() -> None:
    error = conflict("2.14.1", 20, 17, VLLM_PINS, "vllm 0.13.0")
    assert isinstance(error, StepFailed)
    assert error.message.startswith("torch 2.14.1's headers need C++20, but vllm 0.13.0 compiles as C++17")
    assert error.hint == (
        "build against the torch vllm 0.13.0 pins: --torch-packages "
        "'torch==2.9.0 torchaudio==2.9.0 torchvision==0.24.0', then --resume"
    )
    assert error.step == "compile"


def test_without_pins_the_fix_names_the_standard_to_look_for() -> None:
    error = conflict("2.14.1", 20, 17, (), "spark-example")
    assert error is not None and error.hint is not None and "headers accept C++17" in error.hint
