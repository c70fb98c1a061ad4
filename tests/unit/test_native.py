"""`--prefer-wheel --native`: which PTX-JIT families of an official wheel a rebuild here makes
native (and why the others stay JIT), the decision that follows, and the check of the completed
wheel. The patch series is the real `patches/vllm`; the bills are the validate step's own
numbers for vLLM's official 0.13.0 and 0.26.0 wheels (benchmarks/RESULTS.md)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version
from rich.console import Console

from spark_build.cli import build_vllm
from spark_build.insight.report import history_main, report_main
from spark_build.nightly.completion import Choice, decide
from spark_build.nightly.native import (
    JitFamily,
    Outlook,
    asked_for_target,
    jit_families,
    native_patches,
    not_native_after,
    outlook,
    rebuilt_in,
)
from spark_build.nightly.prebuilt import Decision, write_taken_run
from spark_build.wheel.proof import Proof

ROOT = Path(__file__).resolve().parents[2]
PATCHES = native_patches(ROOT / "patches" / "vllm")
FA2_PATH = "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"
FA2 = JitFamily(FA2_PATH, "FA2", 60, 736.3, 2915)
C2X = JitFamily("vllm/_C.abi3.so", "scaled_mm_c2x", 1, 33.9, 134)
MARLIN = JitFamily("vllm/_C.abi3.so", "GPTQ Marlin", 18, 119.7, 262)
EXAMPLE = JitFamily("spark_example/_C.abi3.so", "_C", 1, 0.1, 0)
OFFICIAL_C = "vllm/_C.abi3.so"  # carries sm_120 in every official CUDA 13 wheel


def test_patch_0007_declares_the_families_it_compiles_for_12x() -> None:
    (patch,) = PATCHES
    assert patch.name.startswith("0007-")
    assert patch.native == ("FA2", "Marlin", "GPTQ Marlin", "Marlin MoE", "Hadamard")


@pytest.mark.parametrize(
    ("family", "version", "official_native", "rebuild", "why"),
    [
        pytest.param(
            FA2, "0.13.0", OFFICIAL_C, True, "0007-native-12.x-code-for-ptx-only-families.patch", id="fa2-0.13"
        ),
        pytest.param(MARLIN, "0.13.1", OFFICIAL_C, True, "compiles it for 12.x in 0.13.1", id="marlin-0.13.1"),
        pytest.param(FA2, "0.26.0", OFFICIAL_C, False, "no patch makes it native for 0.26.0", id="fa2-0.26"),
        pytest.param(FA2, "0.33.0", OFFICIAL_C, False, "(releases >=0.13.0,<0.14.0)", id="fa2-0.33-names-range"),
        pytest.param(C2X, "0.13.0", OFFICIAL_C, False, "kernel bodies compile only for __CUDA_ARCH__", id="c2x"),
        pytest.param(EXAMPLE, "0.22.0", None, True, "asked for no 12.x arch", id="built-for-no-12x"),
    ],
)
def test_outlook_rebuilds_a_jit_family_only_where_cmake_or_a_patch_in_range_compiles_it_for_12x(
    family: JitFamily, version: str, official_native: str | None, rebuild: bool, why: str
) -> None:
    (seen,) = outlook(
        [family], version=Version(version), arch="12.1a", patches=PATCHES, official_native=official_native
    )
    assert seen.rebuild is rebuild
    assert why in seen.why


def _seen(version: str, *families: JitFamily) -> tuple[Outlook, ...]:
    return outlook(families, version=Version(version), arch="12.1a", patches=PATCHES, official_native=OFFICIAL_C)


FA2_0_13 = _seen("0.13.0", FA2)


@pytest.mark.parametrize(
    ("version", "native", "no_compiler", "choice", "targets", "left"),
    [
        pytest.param("0.13.0", True, None, Choice.COMPLETE, ("_C", "_vllm_fa2_C"), 1, id="native-0.13"),
        pytest.param("0.13.0", False, None, Choice.TAKE, (), 3, id="without-native-all-named"),
        pytest.param("0.13.0", True, "no nvcc at /x", Choice.TAKE, (), 3, id="native-without-compiler"),
        pytest.param("0.26.0", True, None, Choice.TAKE, (), 3, id="native-0.26-rebuilds-nothing"),
    ],
)
def test_decide_with_native_builds_the_jit_targets_a_rebuild_makes_native_and_names_the_rest(
    version: str, native: bool, no_compiler: str | None, choice: Choice, targets: tuple[str, ...], left: int
) -> None:
    seen = _seen(version, FA2, MARLIN, C2X)
    decision = decide({}, (), arch="12.1a", no_compiler=no_compiler, accept_missing=False, jit=seen, native=native)
    assert (decision.choice, decision.targets, decision.native) == (choice, targets, targets)
    assert len(decision.left_on_jit) == left
    assert any(
        line.startswith("_C (scaled_mm_c2x): runs by PTX JIT: 1 module, 33.9 MB") for line in decision.left_on_jit
    )


def test_native_reasons_carry_the_jit_bill_and_a_missing_target_keeps_its_own() -> None:
    qutlass = {"_qutlass_C": "vLLM sends FP-Quant models to it from 10.0 on"}
    decision = decide(
        qutlass, (), arch="12.1a", no_compiler=None, accept_missing=False, jit=_seen("0.13.0", FA2), native=True
    )
    assert decision.targets == ("_qutlass_C", "_vllm_fa2_C")
    assert "_qutlass_C: cannot run on 12.1a" in decision.why
    assert "_vllm_fa2_C: FA2 runs by PTX JIT: 60 modules, 736.3 MB, ≈ 2915 s at first load" in decision.why
    assert decision.native == ("_vllm_fa2_C",)


def test_without_native_a_rebuildable_family_is_left_on_jit_saying_native_would_build_it() -> None:
    (line,) = decide({}, (), arch="12.1a", no_compiler=None, accept_missing=False, jit=FA2_0_13).left_on_jit
    assert line.startswith("_vllm_fa2_C (FA2): runs by PTX JIT: 60 modules")
    assert line.endswith("--native builds it for 12.1a")


def test_on_0_26_fa2_stays_jit_naming_the_official_native_extension_and_the_patch_range() -> None:
    decision = decide(
        {}, (), arch="12.1a", no_compiler=None, accept_missing=False, jit=_seen("0.26.0", FA2), native=True
    )
    (line,) = decision.left_on_jit
    assert "stays PTX JIT: the official build asked for 12.x (vllm/_C.abi3.so is native)" in line
    assert "so a rebuild would change nothing" in line and decision.targets == ()


def _results(*bills: JitFamily, verdict: str = "native") -> dict[str, Any]:
    lines = [
        {"family": f"{j.extension}: {j.family}", "objects": j.modules, "ptx_mb": j.ptx_mb, "jit_s": j.jit_s}
        for j in bills
    ]
    extensions = [{"path": FA2_PATH, "verdict": verdict}, {"path": OFFICIAL_C, "verdict": "native"}]
    return {"jit_bill": {"12.1": {"lines": lines}}, "arch": [{"extensions": extensions}]}


def test_jit_families_and_the_official_native_extension_are_read_from_the_proof() -> None:
    results = _results(FA2, C2X, verdict="jit")
    assert jit_families(results) == (FA2, C2X)
    assert asked_for_target(results) == OFFICIAL_C
    assert asked_for_target({"arch": [{"extensions": [{"path": FA2_PATH, "verdict": "jit"}]}]}) is None


@pytest.mark.parametrize(
    ("results", "still"),
    [
        pytest.param(_results(), {}, id="native-after"),
        pytest.param(
            _results(FA2, verdict="jit"), {"_vllm_fa2_C": "FA2 still runs by PTX JIT: 60 modules"}, id="still"
        ),
        pytest.param(_results(verdict="jit"), {"_vllm_fa2_C": "its arch table says jit, not native"}, id="table-jit"),
    ],
)
def test_not_native_after_reads_the_completed_wheels_arch_table_and_bill(
    results: dict[str, Any], still: dict[str, str]
) -> None:
    found = not_native_after(FA2_0_13, results)
    assert found.keys() == still.keys()
    assert all(found[t].startswith(still[t]) for t in still)


def test_report_and_history_name_the_native_targets_and_what_stays_on_jit(tmp_path: Path) -> None:
    completion = {
        "choice": "complete",
        "why": "building only _vllm_fa2_C: FA2 runs by PTX JIT",
        "targets": ["_vllm_fa2_C"],
        "will_not_run": [],
        "native": ["_vllm_fa2_C"],
        "left_on_jit": ["_C (scaled_mm_c2x): runs by PTX JIT: 1 module, 33.9 MB, ≈ 134 s at first load; stays"],
    }
    name = "vllm-0.13.0-cp38-abi3-manylinux_2_35_aarch64.whl"
    decision = Decision(True, "completed here", name, "wheel folder", f"/wh/vllm/{name}", "0" * 64, "pip install x")
    proof = Proof(results={"verdicts": {"12.1": "native"}}, reports=[], problems=[])
    decision = dataclasses.replace(decision, completion=completion)
    write_taken_run(tmp_path, "v0.13.0", "12.1a", decision, proof, seconds=9.0, validate_seconds=5.0)
    report, history = io.StringIO(), io.StringIO()
    report_main(tmp_path, None, False, Console(file=report, width=250))
    history_main(tmp_path, False, Console(file=history, width=250))
    assert "prefer-wheel: native (--native): _vllm_fa2_C" in report.getvalue()
    assert "prefer-wheel: left on PTX JIT: _C (scaled_mm_c2x): runs by PTX JIT: 1 module" in report.getvalue()
    assert "(official wheel, completed: _vllm_fa2_C; native: _vllm_fa2_C; 1 left on PTX JIT)" in history.getvalue()


def test_a_family_that_stays_jit_in_a_rebuilt_target_does_not_fail_the_native_check() -> None:
    seen = _seen("0.13.0", MARLIN, C2X)  # both in _C: Marlin rebuilt native by 0007, scaled_mm_c2x stays
    rebuilt = rebuilt_in(seen, ("_C",))
    assert [o.jit.family for o in rebuilt] == ["GPTQ Marlin"]
    assert not_native_after(rebuilt, _results(C2X)) == {}


def test_native_without_prefer_wheel_is_refused_with_exit_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    assert build_vllm({"workdir": str(work)}, None, prefer_only=["--native"]) == 2
    err = capsys.readouterr().err
    assert "--native works only with --prefer-wheel" in err and "add --prefer-wheel, or drop --native" in err
    assert not work.exists()
