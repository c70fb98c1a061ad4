"""Which sources each extension target compiles, read from real compile_commands.json files:
the example upstream's completion configure (`_C` alone, and with a second target `_extra_C` as
tests/integration/test_completion_pr.py adds it), and an excerpt of vLLM 0.13.0's configure for
12.1a (objects of `_C`, `_moe_C`, qutlass's sources compiled into `_C`, flash-attention's
subproject targets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_build.arch.target_sources import target_of, target_sources

DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLE_ROOT = Path("/tmp/pr-cc/completion/source")  # where the example was configured
TWO_TARGETS_ROOT = Path("/tmp/pr-cc/two/completion/source")
EXAMPLE_SOURCES = (
    "csrc/bindings.cpp",
    "csrc/device.cu",
    "csrc/elementwise_float.cu",
    "csrc/elementwise_half.cu",
    "csrc/layernorm.cu",
    "csrc/module.cpp",
    "csrc/reduce.cu",
    "csrc/saxpy.cu",
    "csrc/scan.cu",
    "csrc/softmax.cu",
    "csrc/topk.cu",
)


def _commands(name: str) -> list[dict[str, str]]:
    return json.loads((DATA / name).read_text())


def test_every_source_of_the_example_belongs_to_its_one_target_relative_to_the_source_root() -> None:
    assert target_sources(_commands("example.compile_commands.json"), EXAMPLE_ROOT) == {"_C": EXAMPLE_SOURCES}


def test_a_second_target_owns_only_the_file_its_objects_compile() -> None:
    found = target_sources(_commands("example-two-targets.compile_commands.json"), TWO_TARGETS_ROOT)
    assert found == {"_C": EXAMPLE_SOURCES, "_extra_C": ("csrc/extra.cu",)}


def test_the_text_of_compile_commands_json_reads_as_its_entries() -> None:
    text = (DATA / "example-two-targets.compile_commands.json").read_text()
    assert target_sources(text, TWO_TARGETS_ROOT) == target_sources(json.loads(text), TWO_TARGETS_ROOT)


def test_vllm_objects_go_to_their_targets_and_external_projects_sources_are_left_out() -> None:
    found = target_sources(_commands("vllm-0.13.0-cuda13.0-12.1a-after.compile_commands.json"), Path("/SRC/vllm"))
    assert set(found) == {"_C", "_moe_C"}, "fa2/fa3 compile flash-attention's files, not vLLM's"
    assert found["_moe_C"] == ("csrc/moe/moe_align_sum_kernels.cu",)
    assert "csrc/torch_bindings.cpp" in found["_C"]
    assert not any("qutlass" in f for f in found["_C"]), "qutlass's sources are no change to vLLM's tree"


def test_a_file_generated_in_the_build_folder_is_no_source_a_change_can_touch() -> None:
    entries = [
        {"directory": "/b", "file": "/b/generated/kernels.cu", "output": "CMakeFiles/_C.dir/generated/kernels.cu.o"},
        {"directory": "/b", "file": "/s/csrc/ops.cu", "output": "CMakeFiles/_C.dir/csrc/ops.cu.o"},
    ]
    assert target_sources(entries, Path("/s")) == {"_C": ("csrc/ops.cu",)}


def test_an_entry_without_output_names_its_object_by_the_commands_dash_o() -> None:
    entry = {
        "directory": "/s/build",
        "file": "../csrc/moe.cu",
        "command": "nvcc -c ../csrc/moe.cu -o CMakeFiles/_moe_C.dir/csrc/moe.cu.o",
    }
    assert target_sources([entry], Path("/s")) == {"_moe_C": ("csrc/moe.cu",)}


@pytest.mark.parametrize(
    ("output", "target"),
    [
        pytest.param("CMakeFiles/_C.dir/csrc/cache_kernels.cu.o", "_C", id="top-level-target"),
        pytest.param("/B/vllm-flash-attn/CMakeFiles/_vllm_fa2_C.dir/src/x.cu.o", "_vllm_fa2_C", id="subproject"),
        pytest.param("/B/CMakeFiles/_C.dir/SRC/qutlass/csrc/gemm.cu.o", "_C", id="external-source-in-a-target"),
        pytest.param("csrc/loose.o", None, id="not-a-cmake-object"),
    ],
)
def test_an_object_belongs_to_the_target_cmake_named_its_folder_after(output: str, target: str | None) -> None:
    assert target_of(output) == target
