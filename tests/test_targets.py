"""Which arch a build targets when the user names none: the GPU's own."""

from __future__ import annotations

import pytest

from spark_build.errors import UsageError
from spark_build.host.target import resolve_arch


def smi(output: str, code: int = 0):
    return lambda _argv, **_kw: (code, output)


def test_a_named_arch_wins_and_is_normalised():
    assert resolve_arch("12.1a", run=smi("", 127)) == "12.1a"


def test_a_dgx_spark_gpu_means_12_1a():
    assert resolve_arch(None, run=smi("NVIDIA GB10, 12.1, 580.95.05\n")) == "12.1a"


def test_an_h100_means_9_0a():
    assert resolve_arch(None, run=smi("NVIDIA H100 80GB HBM3, 9.0, 575.57.08\n")) == "9.0a"


def test_no_gpu_and_no_arch_asks_for_arch():
    with pytest.raises(UsageError) as caught:
        resolve_arch(None, run=smi("nvidia-smi: not found", 127))
    assert "--arch 12.1a" in (caught.value.hint or "")


def test_a_misspelt_arch_is_refused_naming_the_item():
    with pytest.raises(UsageError) as caught:
        resolve_arch("sm_121a")
    assert "sm_121a" in caught.value.message
