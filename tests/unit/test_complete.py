"""The local label a completed wheel's version gets: it says for which GPUs extensions were added."""

from __future__ import annotations

import pytest

from spark_build.errors import UsageError
from spark_build.wheel.complete import completion_label
from spark_build.wheel.relabel import relabelled_name


@pytest.mark.parametrize(
    ("entries", "label"),
    [
        pytest.param(("12.1a",), "sm121a", id="spark-arch-specific"),
        pytest.param(("12.0f",), "sm120", id="family-says-the-family"),
        pytest.param(("12.0f", "12.1a"), "sm120.sm121a", id="several-joined"),
    ],
)
def test_completion_label_names_the_arch_built_for(entries: tuple[str, ...], label: str) -> None:
    assert completion_label(entries) == label


@pytest.mark.parametrize("entries", [(), ("sm_121a",), ("12.1+PTX",)], ids=["none", "cuobjdump-name", "ptx"])
def test_completion_label_refuses_what_is_not_an_arch_entry(entries: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        completion_label(entries)


@pytest.mark.parametrize(
    ("name", "label", "renamed"),
    [
        pytest.param(
            "vllm-0.26.0+cu130-cp38-abi3-manylinux_2_28_x86_64.whl",
            "sm120",
            "vllm-0.26.0+cu130.sm120-cp38-abi3-manylinux_2_28_x86_64.whl",
            id="local-part-extended",
        ),
        pytest.param(
            "vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl",
            "sm121a",
            "vllm-0.22.0+sm121a-cp38-abi3-manylinux_2_28_aarch64.whl",
            id="local-part-added",
        ),
    ],
)
def test_the_completed_wheel_s_file_name_carries_the_label(name: str, label: str, renamed: str) -> None:
    assert relabelled_name(name, label) == renamed
