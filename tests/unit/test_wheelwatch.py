"""Wheel watch's pure decisions: the wheel watched by default, what the nightly does for each answer,
exit codes, and which errors are retried. The real HTTP server is in tests/integration/test_wheelwatch.py."""

from __future__ import annotations

import socket
import urllib.error
from pathlib import Path

import pytest
from packaging.version import Version

from spark_build.config import VLLM_DEFAULT_REF
from spark_build.nightly.fetch import Availability, WheelStatus
from spark_build.nightly.official import Expected, Wanted, expected_wheel, release_version
from spark_build.nightly.transport import RETRY_POLICY, HTTPStatusError, is_transient
from spark_build.nightly.watch import (
    EXIT_CODES,
    Action,
    OfficialRelease,
    Outcome,
    decide,
    read_history,
    skipped_locked,
)

NAME = "vllm-0.13.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"


# --------------------------------------------------------------------------- check


def test_the_default_ref_on_a_spark_watches_the_cu130_aarch64_wheel_the_guide_pinned() -> None:
    version = release_version(VLLM_DEFAULT_REF)
    assert version == Version("0.13.0")
    expected = expected_wheel(Wanted(version, 13, "aarch64"))
    assert isinstance(expected, Expected) and expected.filename == NAME


@pytest.mark.parametrize(
    ("ref", "cuda_major", "why"),
    [
        ("main", 13, "main is no release; vLLM publishes wheels of releases"),
        ("v0.13.0", None, "vLLM publishes no CPU wheel (--torch-cuda cpu)"),
    ],
    ids=["branch", "cpu-build"],
)
def test_an_official_wheel_that_cannot_exist_is_gone_without_asking_any_host(
    ref: str, cuda_major: int | None, why: str
) -> None:
    """The nightly then rebuilds (resuming a finished build of the same inputs): the wheel it keeps is its own."""
    watched = OfficialRelease(ref, cuda_major, "aarch64", index="http://unreachable.invalid/simple")
    status = watched.check(1.0, RETRY_POLICY, lambda line: None)
    assert (status.availability, status.status_line) == (Availability.GONE, why)


# --------------------------------------------------------------------------- decide


def _status(availability: Availability) -> WheelStatus:
    return WheelStatus("http://x/w.whl", availability, "HTTP 200 OK")


@pytest.mark.parametrize(
    ("availability", "mirrored", "force", "action"),
    [
        (Availability.PRESENT, True, False, Action.KEEP),
        (Availability.PRESENT, False, False, Action.MIRROR),
        (Availability.GONE, True, False, Action.REBUILD),
        (Availability.GONE, False, False, Action.REBUILD),
        (Availability.PRESENT, True, True, Action.REBUILD),
    ],
    ids=["hosted-and-mirrored", "hosted-not-mirrored", "gone-but-mirrored", "gone", "forced"],
)
def test_decide(availability: Availability, mirrored: bool, force: bool, action: Action) -> None:
    assert decide(_status(availability), mirrored, force) is action


def test_a_night_skipped_for_the_build_lock_has_its_own_exit_code_and_history_line(tmp_path: Path) -> None:
    watched = OfficialRelease("v0.13.0", 13, "aarch64")
    waited = "a manual build holds the lock; waited 10 min"
    result = skipped_locked(watched.url, waited, history_path=tmp_path / "h.jsonl")
    assert result.exit_code == 75
    assert read_history(tmp_path / "h.jsonl")[-1]["outcome"] == "skipped-locked"


def test_every_outcome_has_a_distinct_exit_code() -> None:
    assert len(set(EXIT_CODES.values())) == len(Outcome)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (HTTPStatusError("u", 503, "Service Unavailable"), True),
        (HTTPStatusError("u", 500, "Internal Server Error"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (urllib.error.URLError(ConnectionResetError(104, "reset")), True),
        (urllib.error.URLError(TimeoutError("timed out")), True),
        (TimeoutError("timed out"), True),
        (HTTPStatusError("u", 404, "Not Found"), False),
        (HTTPStatusError("u", 410, "Gone"), False),
        (HTTPStatusError("u", 429, "Too Many Requests"), False),
        (urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), False),
    ],
    ids=[
        "503",
        "500",
        "reset",
        "reset-in-urlerror",
        "timeout-in-urlerror",
        "timeout",
        "404",
        "410",
        "429",
        "unknown-host",
    ],
)
def test_only_5xx_timeouts_and_resets_are_retried(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
