"""The step model and the resume plan.

`plan()` is pure: from each step's fingerprint, the recorded state and whether each recorded
result still checks out, it decides what runs and what `--resume` skips, with the reason.
`--dry-run` prints exactly this plan; `build._run` carries it out, one `build._carry_out` per step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from spark_build.pipeline.state import BuildState

Action = Literal["run", "skip"]


@dataclass(frozen=True)
class StepSpec:
    """What the planner needs to know of a step."""

    name: str
    fingerprint: str
    volatile: bool = False  # always runs (e.g. preflight), never forces its downstream to rerun
    inputs: Mapping[str, Any] = field(default_factory=dict)  # as recorded(): what the fingerprint hashes


@dataclass(frozen=True)
class StepPlan:
    name: str
    action: Action
    reason: str
    fingerprint: str
    inputs: Mapping[str, Any] = field(default_factory=dict)  # recorded with the step, to say later what changed


def recorded(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A step's inputs as state.json keeps them (paths and tuples as JSON has them), so a later
    `--resume` can name the inputs that changed instead of only seeing another fingerprint."""
    return dict(json.loads(json.dumps(inputs, sort_keys=True, default=str)))


def fingerprint(inputs: Mapping[str, Any], upstream: str) -> str:
    """A step's identity: its own inputs chained to its upstream step's fingerprint, so a change
    anywhere upstream changes every fingerprint below it."""
    payload = json.dumps({"inputs": inputs, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan(
    specs: Sequence[StepSpec],
    recorded: BuildState | None,
    *,
    resume: bool,
    still_valid: Callable[[str], bool],
) -> list[StepPlan]:
    """Decide each step's fate. `still_valid(name)` is asked only for steps that would be
    skipped, so its (cheap) disk checks run only where they matter."""
    out: list[StepPlan] = []
    rerun_from: str | None = None
    for spec in specs:
        if spec.volatile:
            out.append(StepPlan(spec.name, "run", "checked on every run", spec.fingerprint, spec.inputs))
            continue
        reason = _why_run(spec, recorded, resume, rerun_from, still_valid)
        if reason is None:
            out.append(
                StepPlan(spec.name, "skip", "done, inputs unchanged, result present", spec.fingerprint, spec.inputs)
            )
            continue
        out.append(StepPlan(spec.name, "run", reason, spec.fingerprint, spec.inputs))
        rerun_from = rerun_from or spec.name
    return out


def _why_run(
    spec: StepSpec,
    recorded: BuildState | None,
    resume: bool,
    rerun_from: str | None,
    still_valid: Callable[[str], bool],
) -> str | None:
    if not resume:
        return "new build"
    if rerun_from is not None:
        return f"downstream of {rerun_from}, which reruns"
    record = recorded.record(spec.name) if recorded else None
    if record is None:
        return "not run yet"
    if record.status != "done":
        return f"{record.status} last time"
    if record.fingerprint != spec.fingerprint:
        return _what_changed(record.inputs, spec.inputs)
    if not still_valid(spec.name):
        return "its result is gone or changed on disk"
    return None


def _what_changed(before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """`inputs changed: index /opt/wheels → /mirror/wheels`, the values cut short for the table."""
    if not before:
        return "inputs changed (state.json from an older spark-build does not say which)"
    changed = [key for key in sorted({*before, *now}) if before.get(key) != now.get(key)]
    if not changed:
        return "inputs changed upstream of this step"
    return "inputs changed: " + "; ".join(
        f"{key} {_short(before.get(key))} → {_short(now.get(key))}" for key in changed
    )


def _short(value: Any, limit: int = 40) -> str:
    text = "unset" if value is None else " ".join(value) if isinstance(value, list) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
