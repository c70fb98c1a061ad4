"""Every test in this folder runs real processes (git, uv, CMake, nvcc, Redis, loopback HTTP),
so every one is marked `integration`: `pytest -m "not integration"` leaves the folder out."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
