"""The completion decision of `--prefer-wheel`: complete the official wheel, take it, take it
incomplete by the user's leave, or build from source — each with its reason."""

from __future__ import annotations

import pytest

from spark_build.errors import StepFailed
from spark_build.insight.history import prebuilt_note
from spark_build.nightly.completion import (
    ChangeScope,
    Choice,
    Scope,
    before_configure,
    decide,
    extension_path,
    missing_in,
    scope_before_configure,
    scope_of,
)

QUTLASS = {"_qutlass_C": "vLLM sends FP-Quant models to it from 10.0 on (fp_quant.py)"}
SOURCES = {
    "_C": ("csrc/layernorm_kernels.cu", "csrc/torch_bindings.cpp"),
    "_qutlass_C": ("csrc/quantization/fp4/qutlass.cu",),
    "_moe_C": ("csrc/moe/topk_softmax.cu",),
}
NO_NVCC = "no nvcc is here"
PY = ChangeScope("PR #1", Scope.PYTHON)
MOE = ChangeScope("PR #2", Scope.EXTENSIONS, targets=("_moe_C",))
QUT = ChangeScope("fix.patch", Scope.EXTENSIONS, targets=("_qutlass_C",))
CMAKE = ChangeScope("PR #3", Scope.EVERYTHING, beyond=("CMakeLists.txt",))


@pytest.mark.parametrize(
    ("missing", "changes", "no_compiler", "accept", "choice", "targets", "why"),
    [
        pytest.param({}, (), None, False, Choice.TAKE, (), "every extension vLLM runs on 12.1a", id="nothing-missing"),
        pytest.param({}, (PY,), NO_NVCC, False, Choice.TAKE, (), "PR #1 (Python only) carried", id="python-only-pr"),
        pytest.param(QUTLASS, (), None, False, Choice.COMPLETE, ("_qutlass_C",), "cannot run on 12.1a", id="missing"),
        pytest.param(QUTLASS, (PY,), None, False, Choice.COMPLETE, ("_qutlass_C",), "_qutlass_C", id="missing+python"),
        pytest.param({}, (MOE,), None, False, Choice.COMPLETE, ("_moe_C",), "changed by PR #2", id="pr-one-extension"),
        pytest.param(
            QUTLASS, (MOE,), None, False, Choice.COMPLETE, ("_moe_C", "_qutlass_C"), "_moe_C: changed", id="both"
        ),
        pytest.param(QUTLASS, (QUT,), None, False, Choice.COMPLETE, ("_qutlass_C",), "by fix", id="same-target"),
        pytest.param(QUTLASS, (CMAKE,), None, True, Choice.SOURCE, (), "CMakeLists.txt", id="pr-touches-cmake"),
        pytest.param({}, (CMAKE,), None, False, Choice.SOURCE, (), "every extension", id="cmake-nothing-missing"),
        pytest.param(QUTLASS, (), NO_NVCC, False, Choice.SOURCE, (), "--accept-missing", id="no-nvcc-not-asked"),
        pytest.param(QUTLASS, (), NO_NVCC, True, Choice.TAKE_INCOMPLETE, (), "(--accept", id="no-nvcc-accepted"),
        pytest.param({}, (MOE,), NO_NVCC, True, Choice.SOURCE, (), "PR #2 changes", id="no-nvcc-native-pr"),
    ],
)
def test_decide_completes_takes_or_builds_from_source_with_its_reason(
    missing: dict[str, str],
    changes: tuple[ChangeScope, ...],
    no_compiler: str | None,
    accept: bool,
    choice: Choice,
    targets: tuple[str, ...],
    why: str,
) -> None:
    decision = decide(missing, changes, arch="12.1a", no_compiler=no_compiler, accept_missing=accept)
    assert (decision.choice, decision.targets) == (choice, targets)
    assert why in decision.why


def test_taking_a_wheel_incomplete_says_which_extension_will_not_run_and_what_reaches_it() -> None:
    decision = decide(QUTLASS, (), arch="12.1a", no_compiler=NO_NVCC, accept_missing=True)
    assert decision.will_not_run == ("_qutlass_C: vLLM sends FP-Quant models to it from 10.0 on (fp_quant.py)",)
    assert decision.to_dict()["choice"] == "take incomplete"


@pytest.mark.parametrize(
    ("files", "scope", "targets", "beyond"),
    [
        pytest.param(("vllm/model_executor/models/llama.py",), Scope.PYTHON, (), (), id="python-only"),
        pytest.param(("csrc/moe/topk_softmax.cu",), Scope.EXTENSIONS, ("_moe_C",), (), id="one-extension"),
        pytest.param(
            ("csrc/moe/topk_softmax.cu", "csrc/layernorm_kernels.cu", "vllm/x.py"),
            Scope.EXTENSIONS,
            ("_C", "_moe_C"),
            (),
            id="two-extensions-and-python",
        ),
        pytest.param(("CMakeLists.txt",), Scope.EVERYTHING, (), ("CMakeLists.txt",), id="cmake"),
        pytest.param(("setup.py",), Scope.EVERYTHING, (), ("setup.py",), id="setup-py"),
        pytest.param(("cmake/utils.cmake",), Scope.EVERYTHING, (), ("cmake/utils.cmake",), id="cmake-utilities"),
        pytest.param(
            ("csrc/moe/topk_softmax.cu", "csrc/ops.h"), Scope.EVERYTHING, (), ("csrc/ops.h",), id="a-shared-header"
        ),
        pytest.param(("requirements/cuda.txt",), Scope.EVERYTHING, (), ("requirements/cuda.txt",), id="torch-pins"),
    ],
)
def test_scope_of_a_change_follows_the_targets_whose_sources_it_touches(
    files: tuple[str, ...], scope: Scope, targets: tuple[str, ...], beyond: tuple[str, ...]
) -> None:
    found = scope_of("PR #9", files, SOURCES)
    assert (found.scope, found.targets, found.beyond) == (scope, targets, beyond)


def test_scope_of_names_each_touched_file_with_the_target_its_compile_commands_put_it_in() -> None:
    found = scope_of("PR #9", ("csrc/moe/topk_softmax.cu", "vllm/x.py"), SOURCES)
    assert found.compiled_into == (("csrc/moe/topk_softmax.cu", "_moe_C"),)
    assert found.says() == "PR #9: csrc/moe/topk_softmax.cu is compiled into _moe_C (the configure's compile commands)"


def test_a_source_compiled_into_two_targets_rebuilds_both() -> None:
    shared = {**SOURCES, "_C_stable_libtorch": ("csrc/layernorm_kernels.cu",)}
    found = scope_of("PR #9", ("csrc/layernorm_kernels.cu",), shared)
    assert (found.scope, found.targets) == (Scope.EXTENSIONS, ("_C", "_C_stable_libtorch"))


def test_a_source_the_configure_does_not_compile_reaches_every_target() -> None:
    found = scope_of("PR #9", ("csrc/new_kernel.cu",), SOURCES)
    assert (found.scope, found.beyond) == (Scope.EVERYTHING, ("csrc/new_kernel.cu",))


@pytest.mark.parametrize(
    ("files", "scope"),
    [
        pytest.param(("vllm/x.py",), Scope.PYTHON, id="python-needs-no-configure"),
        pytest.param(("csrc/ops.h", "csrc/a.cu"), Scope.EVERYTHING, id="a-header-needs-no-configure"),
        pytest.param(("CMakeLists.txt",), Scope.EVERYTHING, id="cmake-needs-no-configure"),
        pytest.param(("csrc/a.cu", "csrc/b.cpp"), None, id="translation-units-need-the-configure"),
        pytest.param(("csrc/a.cu", "docs/kernels.md", "README.md"), None, id="docs-are-no-part-of-the-build"),
        pytest.param(("docs/kernels.md", "vllm/x.py"), Scope.PYTHON, id="docs-and-python-compile-nothing"),
    ],
)
def test_only_translation_units_wait_for_the_configure_to_find_their_target(
    files: tuple[str, ...], scope: Scope | None
) -> None:
    found = scope_before_configure("PR #9", files)
    assert (found.scope if found else None) == scope


@pytest.mark.parametrize(
    ("files", "no_compiler", "why"),
    [
        pytest.param(("CMakeLists.txt",), None, "fix.patch changes CMakeLists.txt, which every", id="cmake"),
        pytest.param(("csrc/a.cu", "setup.py"), None, "fix.patch changes setup.py, which every", id="setup-py"),
        pytest.param(("csrc/a.cu",), NO_NVCC, f"fix.patch changes compiled code and {NO_NVCC}", id="no-compiler"),
    ],
)
def test_before_configure_sends_a_change_the_wheel_cannot_take_to_the_source_build_naming_why(
    files: tuple[str, ...], no_compiler: str | None, why: str
) -> None:
    decision = before_configure([("fix.patch", files)], arch="12.1a", no_compiler=no_compiler)
    assert decision is not None and decision.choice is Choice.SOURCE
    assert decision.why.startswith(why)


@pytest.mark.parametrize(
    "files", [pytest.param(("csrc/a.cu",), id="a-kernel"), pytest.param(("vllm/x.py",), id="python-only")]
)
def test_before_configure_leaves_kernels_and_python_to_the_official_wheel_when_a_compiler_is_here(
    files: tuple[str, ...],
) -> None:
    assert before_configure([("fix.patch", files)], arch="12.1a", no_compiler=None) is None


def test_a_completion_for_a_change_says_which_files_put_it_into_which_target_and_keeps_the_changes() -> None:
    scope = scope_of("fix.patch", ("csrc/moe/topk_softmax.cu",), SOURCES)
    decision = decide({}, (scope,), arch="12.1a", no_compiler=None, accept_missing=False)
    assert decision.why == "building only _moe_C: changed by fix.patch (csrc/moe/topk_softmax.cu)"
    assert decision.to_dict()["changes"] == [
        {
            "label": "fix.patch",
            "scope": "extensions",
            "targets": ["_moe_C"],
            "beyond": [],
            "compiled_into": {"csrc/moe/topk_softmax.cu": "_moe_C"},
        }
    ]
    assert "changes" not in decide(QUTLASS, (), arch="12.1a", no_compiler=None, accept_missing=False).to_dict()


def test_a_changed_target_the_wheel_does_not_lack_is_found_by_its_file_in_the_wheel() -> None:
    names = ["vllm/__init__.py", "vllm/_C.abi3.so", "vllm/_moe_C.abi3.so", "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"]
    assert extension_path(names, "_moe_C", "vllm.whl") == "vllm/_moe_C.abi3.so"
    with pytest.raises(StepFailed, match="vllm.whl ships no extension file of target _qutlass_C"):
        extension_path(names, "_qutlass_C", "vllm.whl")


def _arch(*families: tuple[str, str, bool]) -> dict[str, object]:
    return {"target": "12.1", "families": [{"extension": e, "verdict": v, "used": u} for e, v, u in families]}


QUTLASS_FAILS = "GPU code for 12.1: vllm/_qutlass_C.abi3.so: kernel family _qutlass_C cannot run on 12.1"


@pytest.mark.parametrize(
    ("arch", "problems", "targets"),
    [
        pytest.param(
            _arch(("vllm/_qutlass_C.abi3.so", "cannot run", True), ("vllm/_C.abi3.so", "native", True)),
            [QUTLASS_FAILS],
            ["_qutlass_C"],
            id="one-extension-cannot-run",
        ),
        pytest.param(
            _arch(("vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "cannot run", False)),
            [],
            None,
            id="never-dispatched-is-not-missing",
        ),
        pytest.param(
            _arch(("vllm/_qutlass_C.abi3.so", "cannot run", True)),
            [QUTLASS_FAILS, "linkage: vllm/_C.abi3.so needs libcudart.so.12"],
            None,
            id="a-linkage-problem-is-not-curable-by-building-kernels",
        ),
        pytest.param(
            _arch(("vllm/_qutlass_C.abi3.so", "cannot run", True)),
            [QUTLASS_FAILS, "import vllm._C failed: ImportError"],
            None,
            id="a-failed-import-is-not-curable",
        ),
    ],
)
def test_missing_in_a_proof_names_only_what_building_targets_can_cure(
    arch: dict[str, object], problems: list[str], targets: list[str] | None
) -> None:
    found = missing_in({"arch": [arch]}, problems)
    assert (None if found is None else [m.target for m in found]) == targets


def test_missing_in_says_why_vllm_sends_the_target_to_an_extension() -> None:
    (found,) = missing_in({"arch": [_arch(("vllm/_qutlass_C.abi3.so", "cannot run", True))]}, [QUTLASS_FAILS]) or ()
    assert found.path == "vllm/_qutlass_C.abi3.so"
    assert found.why_used.startswith("vLLM runs it on 10.0 and later (vllm/model_executor/layers/quantization/fp_quant")


@pytest.mark.parametrize(
    ("completion", "note"),
    [
        pytest.param(None, " (official wheel)", id="taken-as-published"),
        pytest.param(
            {"choice": "complete", "targets": ["_qutlass_C"]}, " (official wheel, completed: _qutlass_C)", id="c"
        ),
        pytest.param(
            {"choice": "take incomplete", "targets": []}, " (official wheel, incomplete: --accept-missing)", id="i"
        ),
        pytest.param(
            {"choice": "complete", "targets": ["_moe_C"], "changes": [{"label": "PR #2", "scope": "extensions"}]},
            " (official wheel, completed: _moe_C for PR #2)",
            id="completed-for-a-pr",
        ),
    ],
)
def test_history_says_when_the_official_wheel_was_completed_or_taken_incomplete(
    completion: dict[str, object] | None, note: str
) -> None:
    assert prebuilt_note({"prefer_wheel": {"taken": True, "completion": completion}}) == note


def test_history_says_which_change_sent_the_run_to_the_source_build() -> None:
    completion = {"choice": "source build", "changes": [{"label": "PR #3", "scope": "everything"}]}
    note = prebuilt_note({"prefer_wheel": {"taken": False, "completion": completion}})
    assert note == " (official wheel not taken: PR #3 reaches every target)"
