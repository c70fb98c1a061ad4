"""`invoke schedule` against the real crontab: install twice, then remove."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_build.nightly.schedule import (
    CRON_MARKER,
    cron_at,
    install_cron,
    remove_cron,
    user_crontab,
)
from tests.unit.test_schedule import COMMAND, WORK

# --------------------------------------------------------------------------- the real crontab


def _crontab_l() -> str | None:
    done = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


@pytest.fixture
def real_crontab() -> Iterator[None]:
    """The invoking user's crontab, restored exactly (or removed again) afterwards."""
    if shutil.which("crontab") is None:
        pytest.skip("no crontab program (apt-get install cron)")
    saved = _crontab_l()
    try:
        yield
    finally:
        if saved is None:
            subprocess.run(["crontab", "-r"], capture_output=True, check=False)
        else:
            subprocess.run(["crontab", "-"], input=saved, text=True, check=True)


def test_real_crontab_round_trip_install_twice_then_remove(real_crontab: None, tmp_path: Path) -> None:
    install_cron("03:30", COMMAND, WORK, tmp_path / "logs", crontab=user_crontab)
    install_cron("03:30", COMMAND, WORK, tmp_path / "logs", crontab=user_crontab)
    listed = _crontab_l() or ""
    assert [line for line in listed.splitlines() if CRON_MARKER in line][0].startswith("30 3 * * * ")
    assert listed.count(CRON_MARKER) == 1
    assert cron_at(user_crontab()) == "03:30"

    remove_cron(crontab=user_crontab)
    assert CRON_MARKER not in (_crontab_l() or "")
