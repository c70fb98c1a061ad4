"""The checkpoint: one JSON file per workdir, written temp → fsync → rename.

A crash or `kill -9` can stop the build at any instant; the rename makes every write all or
nothing, so the file is either the old state or the new one. A file that still fails to parse
(disk trouble, a hand edit) is moved aside and reported — never trusted, never silently reset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spark_build.durable import atomic_write_text
from spark_build.errors import StateCorrupt

SCHEMA = 1


@dataclass
class StepRecord:
    """What one step last did: its fingerprint, outcome and the facts it found (commit, wheel…)."""

    fingerprint: str
    status: str  # running | done | failed | interrupted
    started: float
    ended: float | None = None
    run_id: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)  # what the fingerprint hashed (plan.recorded)


@dataclass
class BuildState:
    steps: dict[str, StepRecord] = field(default_factory=dict)
    run_id: str = ""

    def record(self, name: str) -> StepRecord | None:
        return self.steps.get(name)


def save(path: Path, state: BuildState) -> None:
    payload = {
        "schema": SCHEMA,
        "run_id": state.run_id,
        "steps": {name: asdict(rec) for name, rec in state.steps.items()},
    }
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def load(path: Path, *, now: float | None = None) -> BuildState | None:
    """The recorded state, or None when there is none. A corrupt file raises `StateCorrupt`
    after being moved aside to `state.json.corrupt-<time>` so the evidence survives."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        payload = json.loads(raw.decode("utf-8"))
        if payload.get("schema") != SCHEMA:
            raise ValueError(f"schema {payload.get('schema')!r}, expected {SCHEMA}")
        steps = {name: StepRecord(**rec) for name, rec in payload["steps"].items()}
        return BuildState(steps=steps, run_id=str(payload.get("run_id", "")))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # UnicodeDecodeError is a ValueError
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        os.replace(path, aside)
        raise StateCorrupt(
            f"the checkpoint {path} is unreadable ({exc}); it was moved to {aside.name}",
            hint="run without --resume to start a new build (caches are kept)",
        ) from exc
