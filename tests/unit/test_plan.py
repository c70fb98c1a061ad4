"""What `--resume` runs and skips, decided without running anything."""

from __future__ import annotations

import pytest

from spark_build.pipeline.plan import StepSpec, fingerprint, plan
from spark_build.pipeline.state import BuildState, StepRecord

NAMES = ["preflight", "venv", "torch", "clone", "patch", "compile"]


def specs(changed: dict[str, str] | None = None) -> list[StepSpec]:
    changed = changed or {}
    out, upstream = [], ""
    for name in NAMES:
        inputs = {"value": changed.get(name, "same")}
        fp = fingerprint({"step": name, **inputs}, upstream)
        out.append(StepSpec(name, fp, volatile=name == "preflight", inputs=inputs))
        if name != "preflight":
            upstream = fp
    return out


def finished(spec_list: list[StepSpec], *, status: dict[str, str] | None = None) -> BuildState:
    status = status or {}
    return BuildState(
        steps={
            s.name: StepRecord(s.fingerprint, status.get(s.name, "done"), 0.0, 1.0, inputs=dict(s.inputs))
            for s in spec_list
        }
    )


def actions(plans) -> dict[str, str]:
    return {p.name: p.action for p in plans}


def test_a_new_build_runs_every_step_even_when_an_old_state_says_done():
    s = specs()
    plans = plan(s, finished(s), resume=False, still_valid=lambda _n: True)
    assert set(actions(plans).values()) == {"run"}
    assert all(p.reason in ("new build", "checked on every run") for p in plans)


def test_resume_skips_finished_steps_whose_results_still_check_out():
    s = specs()
    plans = plan(s, finished(s), resume=True, still_valid=lambda _n: True)
    assert actions(plans) == {
        "preflight": "run",
        "venv": "skip",
        "torch": "skip",
        "clone": "skip",
        "patch": "skip",
        "compile": "skip",
    }


def test_resume_continues_at_the_step_that_was_interrupted():
    s = specs()
    state = finished(s, status={"patch": "interrupted", "compile": "running"})
    plans = plan(s, state, resume=True, still_valid=lambda _n: True)
    assert actions(plans)["clone"] == "skip"
    assert [p.reason for p in plans if p.name == "patch"] == ["interrupted last time"]
    assert actions(plans)["compile"] == "run"


def test_resume_reruns_everything_downstream_of_a_changed_patch():
    old = specs()
    new = specs(changed={"patch": "edited"})
    plans = plan(new, finished(old), resume=True, still_valid=lambda _n: True)
    assert actions(plans) == {
        "preflight": "run",
        "venv": "skip",
        "torch": "skip",
        "clone": "skip",
        "patch": "run",
        "compile": "run",
    }
    assert next(p for p in plans if p.name == "patch").reason == "inputs changed: value same → edited"
    assert next(p for p in plans if p.name == "compile").reason.startswith("downstream of patch")


def test_resume_names_the_changed_input_with_its_old_and_new_value():
    from spark_build.pipeline.plan import recorded

    old = [StepSpec("torch", "a", inputs=recorded({"index": "/opt/wheels", "packages": ("torch",)}))]
    new = [StepSpec("torch", "b", inputs=recorded({"index": "/mirror/wheels", "packages": ("torch",)}))]
    (torch,) = plan(new, finished(old), resume=True, still_valid=lambda _n: True)
    assert torch.reason == "inputs changed: index /opt/wheels → /mirror/wheels"


def test_a_state_that_never_recorded_inputs_still_reruns_and_says_it_cannot_name_them():
    old = specs()
    state = finished(old)
    for record in state.steps.values():
        record.inputs = {}
    plans = plan(specs(changed={"patch": "edited"}), state, resume=True, still_valid=lambda _n: True)
    assert next(p for p in plans if p.name == "patch").reason.startswith("inputs changed (state.json from an older")


def test_a_change_upstream_changes_every_fingerprint_below_it():
    old, new = specs(), specs(changed={"venv": "python3.13"})
    changed = [a.name for a, b in zip(old, new, strict=True) if a.fingerprint != b.fingerprint]
    assert changed == ["venv", "torch", "clone", "patch", "compile"]


def test_resume_reruns_a_done_step_whose_result_vanished_from_disk():
    s = specs()
    asked: list[str] = []

    def still_valid(name: str) -> bool:
        asked.append(name)
        return name != "torch"

    plans = plan(s, finished(s), resume=True, still_valid=still_valid)
    assert actions(plans)["venv"] == "skip"
    assert next(p for p in plans if p.name == "torch").reason == "its result is gone or changed on disk"
    assert actions(plans)["compile"] == "run"
    assert asked == ["venv", "torch"], "disk checks stop once a step must rerun"


@pytest.mark.parametrize("missing", ["clone", "compile"], ids=["never-cloned", "never-compiled"])
def test_resume_runs_steps_that_never_ran(missing):
    s = specs()
    state = finished(s)
    del state.steps[missing]
    plans = plan(s, state, resume=True, still_valid=lambda _n: True)
    assert next(p for p in plans if p.name == missing).reason == "not run yet"


def test_a_failed_step_is_explained_in_plain_words_from_its_log(tmp_path):
    from spark_build.errors import StepFailed
    from spark_build.insight.diagnose import explain

    log = tmp_path / "validate.log"
    log.write_text("+ python -c 'import vllm._C'\nImportError: libcudart.so.12: cannot open shared object file\n")
    error = StepFailed("the installed wheel fails to import vllm._C", step="validate", log=log)
    explain(error)
    lines = "\n".join(error.lines())
    assert "cause:" in lines and "libcudart.so.12" in lines
    assert error.hint and "--resume" in error.hint
