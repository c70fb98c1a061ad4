"""Which arch a build targets: `--arch` normalised, else the GPU's own — resolved once, typed."""

from __future__ import annotations

import pytest

from spark_build.arch.compat import ComputeCapability
from spark_build.arch.target import Target
from spark_build.errors import UsageError
from spark_build.host.facts import query_gpus
from spark_build.host.target import resolve_target


def smi(output: str, code: int = 0):
    calls: list[list[str]] = []

    def run(argv, **_kw):
        calls.append(list(argv))
        return code, output

    run.calls = calls  # type: ignore[attr-defined]
    return run


def gpus(output: str, code: int = 0):
    return query_gpus(smi(output, code)).gpus


def test_a_named_arch_wins_over_the_gpu_and_is_normalised():
    assert resolve_target("12.1a ", gpus("NVIDIA H100 80GB HBM3, 9.0, 575.57.08\n")).arch_list == "12.1a"


def test_a_dgx_spark_gpu_means_12_1a():
    target = resolve_target(None, gpus("NVIDIA GB10, 12.1, 580.95.05\n"))
    assert (target.arch_list, target.origin) == ("12.1a", "gpu")


def test_an_h100_means_9_0a():
    assert resolve_target(None, gpus("NVIDIA H100 80GB HBM3, 9.0, 575.57.08\n")).arch_list == "9.0a"


def test_no_gpu_and_no_arch_asks_for_arch():
    query = query_gpus(smi("nvidia-smi: not found", 127))
    assert query.error == "nvidia-smi: not found"
    with pytest.raises(UsageError) as caught:
        resolve_target(None, query.gpus)
    assert "--arch 12.1a" in (caught.value.hint or "")


def test_a_misspelt_arch_is_refused_naming_the_item():
    with pytest.raises(UsageError) as caught:
        resolve_target("sm_121a", ())
    assert "sm_121a" in caught.value.message


def test_nvidia_smi_is_asked_once_for_the_target_and_the_host_facts():
    run = smi("NVIDIA GB10, 12.1, 580.95.05\n")
    query = query_gpus(run)
    resolve_target(None, query.gpus)
    assert [argv[0] for argv in run.calls] == ["nvidia-smi"]


def test_the_audit_targets_are_the_distinct_compute_capabilities_of_the_arch_list():
    assert Target.from_option("9.0a;12.1a").compute_capabilities == ("9.0", "12.1")
    assert Target.from_option("12.0f 12.0a").compute_capabilities == ("12.0",)


def test_without_a_gpu_the_arch_plan_judges_against_the_newest_entry():
    assert Target.from_option("8.0+PTX;12.1a").newest == ComputeCapability.parse("12.1")
