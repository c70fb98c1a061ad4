"""The step model and the resume plan.

`plan()` is pure: from each step's fingerprint, the recorded state and whether each recorded
result still checks out, it decides what runs and what `--resume` skips, with the reason.
`--dry-run` prints exactly this plan; `build._run` carries it out, one `build._carry_out` per step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from spark_build.pipeline.state import BuildState

Action = Literal["run", "skip"]


@dataclass(frozen=True)
class StepSpec:
    """What the planner needs to know of a step."""

    name: str
    fingerprint: str
    volatile: bool = False  # always runs (e.g. preflight), never forces its downstream to rerun


@dataclass(frozen=True)
class StepPlan:
    name: str
    action: Action
    reason: str
    fingerprint: str


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
            out.append(StepPlan(spec.name, "run", "checked on every run", spec.fingerprint))
            continue
        reason = _why_run(spec, recorded, resume, rerun_from, still_valid)
        if reason is None:
            out.append(StepPlan(spec.name, "skip", "done, inputs unchanged, result present", spec.fingerprint))
            continue
        out.append(StepPlan(spec.name, "run", reason, spec.fingerprint))
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
        return "inputs changed"
    if not still_valid(spec.name):
        return "its result is gone or changed on disk"
    return None
