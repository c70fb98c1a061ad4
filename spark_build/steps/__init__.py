"""The build's steps, in order: a registry, as the one place that says what runs after what.

Each step module holds one step or a small family (source: clone … sources); steps never
import each other, they read each other's checkpointed results by name.
"""

from __future__ import annotations

from spark_build.pipeline.step import Step
from spark_build.steps.archplan import ArchPlanStep
from spark_build.steps.changes import Changes
from spark_build.steps.compile import Compile
from spark_build.steps.preflight import Preflight
from spark_build.steps.publish import Publish
from spark_build.steps.source import BuildDeps, Clone, Patch, Sources, UseExistingTorch
from spark_build.steps.toolchain import Ninja, Torch, Venv
from spark_build.steps.validate import Validate

STEPS: tuple[Step, ...] = (
    Preflight(),
    Venv(),
    Torch(),
    Clone(),
    Patch(),
    Changes(),
    UseExistingTorch(),
    BuildDeps(),
    Sources(),
    ArchPlanStep(),
    Ninja(),
    Compile(),
    Validate(),
    Publish(),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
