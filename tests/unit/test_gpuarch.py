"""NVIDIA's code-compatibility rules, one case per rule, named as a user would ask the question."""

from __future__ import annotations

import pytest

from spark_build.arch.compat import (
    CodeKind,
    ComputeCapability,
    GpuCode,
    Variant,
    Verdict,
    best_on,
    best_verdict,
    runs_on,
)

SPARK = ComputeCapability(12, 1)

RULES = [
    # (code, gpu, verdict, id)
    ("sm_121a", "12.1", Verdict.NATIVE, "sm_121a cubin runs natively on 12.1"),
    ("sm_120a", "12.1", Verdict.CANNOT_RUN, "sm_120a cubin cannot run on 12.1"),
    ("sm_120a", "12.0", Verdict.NATIVE, "sm_120a cubin runs natively on 12.0"),
    ("sm_121a", "12.0", Verdict.CANNOT_RUN, "sm_121a cubin cannot run on the older 12.0"),
    ("sm_120f", "12.1", Verdict.NATIVE, "sm_120f runs natively on 12.1"),
    ("sm_120f", "12.0", Verdict.NATIVE, "sm_120f runs natively on 12.0"),
    ("sm_121f", "12.0", Verdict.CANNOT_RUN, "sm_121f cannot run on the older 12.0"),
    ("sm_100f", "10.3", Verdict.NATIVE, "sm_100f runs natively on 10.3"),
    ("sm_100f", "12.1", Verdict.CANNOT_RUN, "sm_100f cannot run outside its major"),
    ("sm_120", "12.1", Verdict.NATIVE, "plain sm_120 runs natively on the later minor 12.1"),
    ("sm_121", "12.0", Verdict.CANNOT_RUN, "plain sm_121 cannot run on the earlier minor 12.0"),
    ("sm_90", "9.0", Verdict.NATIVE, "sm_90 runs natively on 9.0"),
    ("sm_90", "10.0", Verdict.CANNOT_RUN, "sm_90 cubin cannot run across majors on 10.0"),
    ("sm_90a", "9.0", Verdict.NATIVE, "sm_90a runs on 9.0"),
    ("sm_90a", "12.1", Verdict.CANNOT_RUN, "sm_90a cannot run on 12.1"),
    ("sm_80", "8.6", Verdict.NATIVE, "sm_80 runs natively on 8.6"),
    ("sm_86", "8.0", Verdict.CANNOT_RUN, "sm_86 cannot run on the older 8.0"),
    ("compute_80", "12.1", Verdict.JIT, "compute_80 PTX JITs on 12.1"),
    ("compute_80", "8.0", Verdict.JIT, "compute_80 PTX JITs on 8.0 itself"),
    ("compute_90", "8.9", Verdict.CANNOT_RUN, "compute_90 PTX cannot run on the older 8.9"),
    ("compute_120", "12.1", Verdict.JIT, "compute_120 PTX JITs on 12.1"),
    ("compute_120a", "12.0", Verdict.JIT, "compute_120a PTX JITs on exactly 12.0"),
    ("compute_120a", "12.1", Verdict.CANNOT_RUN, "compute_120a PTX cannot JIT for 12.1"),
    ("compute_90a", "10.0", Verdict.CANNOT_RUN, "compute_90a PTX cannot JIT for a newer major"),
    ("compute_120f", "12.1", Verdict.JIT, "compute_120f PTX JITs within its family on 12.1"),
    ("compute_100f", "12.1", Verdict.CANNOT_RUN, "compute_100f PTX cannot JIT outside its family"),
]


@pytest.mark.parametrize(("code", "gpu", "verdict"), [r[:3] for r in RULES], ids=[r[3] for r in RULES])
def test_runs_on_follows_nvidias_compatibility_rules(code: str, gpu: str, verdict: Verdict) -> None:
    assert runs_on(GpuCode.parse(code), ComputeCapability.parse(gpu)) is verdict


NAMES = [
    ("sm_121a", GpuCode(CodeKind.SASS, 12, 1, Variant.ARCH_SPECIFIC)),
    ("sm_120f", GpuCode(CodeKind.SASS, 12, 0, Variant.FAMILY_SPECIFIC)),
    ("sm_90", GpuCode(CodeKind.SASS, 9, 0, Variant.PLAIN)),
    ("sm_75", GpuCode(CodeKind.SASS, 7, 5, Variant.PLAIN)),
    ("sm_103a", GpuCode(CodeKind.SASS, 10, 3, Variant.ARCH_SPECIFIC)),
    ("compute_80", GpuCode(CodeKind.PTX, 8, 0, Variant.PLAIN)),
    ("compute_120a", GpuCode(CodeKind.PTX, 12, 0, Variant.ARCH_SPECIFIC)),
]


@pytest.mark.parametrize(("name", "code"), NAMES, ids=[n for n, _ in NAMES])
def test_arch_names_parse_into_kind_capability_and_variant_and_print_back(name: str, code: GpuCode) -> None:
    assert GpuCode.parse(name) == code
    assert code.name == name


@pytest.mark.parametrize("bad", ["sm121a", "sm_12.1", "compute_80b", "121a", "", "sm_"])
def test_malformed_arch_names_are_rejected_with_an_example_of_a_good_one(bad: str) -> None:
    with pytest.raises(ValueError, match="sm_121a"):
        GpuCode.parse(bad)


def test_cuobjdump_ptx_names_become_compute_codes() -> None:
    assert GpuCode.parse("sm_80").as_ptx().name == "compute_80"


@pytest.mark.parametrize(
    ("text", "cc"),
    [("12.1", SPARK), ("9.0", ComputeCapability(9, 0)), (" 10.3\n", ComputeCapability(10, 3))],
    ids=["12.1", "9.0", "nvidia-smi output with whitespace"],
)
def test_compute_capability_parses_nvidia_smi_output(text: str, cc: ComputeCapability) -> None:
    assert ComputeCapability.parse(text) == cc


@pytest.mark.parametrize("bad", ["12", "sm_121", "12.10", "twelve"])
def test_malformed_compute_capability_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="12.1"):
        ComputeCapability.parse(bad)


COMBINED = [
    (["sm_120a", "sm_121a"], Verdict.NATIVE, "one native cubin among others makes it native"),
    (["sm_120a", "compute_80"], Verdict.JIT, "sm_120a with compute_80 PTX falls back to JIT on 12.1"),
    (["sm_120a", "sm_90a"], Verdict.CANNOT_RUN, "only foreign arch-specific cubins cannot run"),
    ([], Verdict.CANNOT_RUN, "no device code at all cannot run"),
]


@pytest.mark.parametrize(("codes", "verdict"), [c[:2] for c in COMBINED], ids=[c[2] for c in COMBINED])
def test_an_extension_gets_the_best_verdict_of_what_it_carries(codes: list[str], verdict: Verdict) -> None:
    assert best_on((GpuCode.parse(c) for c in codes), SPARK) is verdict


def test_best_verdict_prefers_native_over_jit_over_cannot_run() -> None:
    assert best_verdict([Verdict.CANNOT_RUN, Verdict.JIT]) is Verdict.JIT
    assert best_verdict([Verdict.JIT, Verdict.NATIVE, Verdict.CANNOT_RUN]) is Verdict.NATIVE
