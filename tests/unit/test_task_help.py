"""`invoke --list` shows each task's first docstring line: it must be a whole sentence, not the
start of one cut off where the line ended (`nightly` and `recipe` read "(looked up as --prefer-wheel"
and "torch pins and index, C++ standard,")."""

from __future__ import annotations

import pytest
from invoke.tasks import Task

import tasks

TASKS = {name: value for name, value in vars(tasks).items() if isinstance(value, Task)}


def test_every_task_of_the_command_is_checked() -> None:
    assert {"build_vllm", "nightly", "recipe", "doctor"} <= set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_tasks_list_line_is_one_complete_short_sentence(name: str) -> None:
    first = (TASKS[name].__doc__ or "").strip().splitlines()[0]
    assert first.endswith("."), first
    assert first.count("(") == first.count(")"), first
    assert len(first) <= 110, first
