"""Wheel watch: is the wheel for the configured release still hosted, and what should tonight do about it?

A hosted vLLM wheel can vanish at any time (a nightly build at a commit URL does; a release asset
can be replaced or a mirror lose it); when it does, the only way to vLLM is a 25–35 minute source
build. So every night we look, keep a verified copy while it exists (`mirror_wheel`), and rebuild
once it is gone (`nightly`, with the build injected). What is watched is a `Watched`: vLLM's
official wheel of the `--ref` release, found by the lookup `--prefer-wheel` uses (`OfficialRelease`),
or a URL the user gave (`PinnedUrl`). `decide` is the pure part; the HTTP (retries, resumable
download, sha256 checks) lives in `nightly.fetch`, the retry policy in `nightly.transport`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from spark_build.durable import atomic_copy, atomic_write_text, sha256_of
from spark_build.errors import HostProblem, SparkBuildError
from spark_build.nightly.fetch import (
    Availability,
    WheelGone,
    WheelStatus,
    check_wheel,
    mirror_wheel,
    read_sidecar,
    sha256_from_index,
    split_sha256_fragment,
    wheel_filename,
    wheel_in_wheelhouse,
    write_sidecar,
)
from spark_build.nightly.official import GITHUB_RELEASES, PACKAGE_INDEX, Wanted, find_official, release_version
from spark_build.nightly.transport import RETRY_POLICY, RetryPolicy, Say


def _print(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------- what is watched


class Watched(Protocol):
    """The wheel a night is about. `url` is what the history and the notify command name, `name`
    the wheel's file name while the host has not named another, `check` asks the host tonight."""

    @property
    def url(self) -> str: ...

    @property
    def name(self) -> str: ...

    def check(self, timeout: float, policy: RetryPolicy, on_retry: Say) -> WheelStatus: ...


@dataclass(frozen=True)
class PinnedUrl:
    """A wheel URL the user gave (`--url`): asked with HEAD; its sha256 from the URL's `#sha256=`,
    else from `index_url`'s PEP 503 page when one is given."""

    url: str
    index_url: str | None = None

    @property
    def name(self) -> str:
        return wheel_filename(split_sha256_fragment(self.url)[0])

    def check(self, timeout: float, policy: RetryPolicy, on_retry: Say) -> WheelStatus:
        status = check_wheel(self.url, timeout=timeout, policy=policy, on_retry=on_retry)
        if status.sha256 is None and self.index_url and status.present:
            sha = sha256_from_index(self.index_url, self.name, timeout=timeout, policy=policy, on_retry=on_retry)
            status = replace(status, sha256=sha)
        return status


@dataclass(frozen=True)
class OfficialRelease:
    """vLLM's official wheel of the `ref` release for a CUDA major and CPU, looked up where
    `--prefer-wheel` looks (`nightly.official`: both naming schemes, the moving manylinux tags,
    index pages and release assets), so the nightly follows the configured release instead of one
    fixed URL. Listed with its sha256 = present; not published (or no release, or no CUDA build
    asked for) = gone, and the night rebuilds."""

    ref: str
    cuda_major: int | None  # None: a CPU build (--torch-cuda cpu), which vLLM publishes no wheel of
    machine: str
    index: str = PACKAGE_INDEX
    releases: str = GITHUB_RELEASES

    @property
    def url(self) -> str:
        return f"the official vLLM wheel of {self.ref} ({self.index}, {self.releases})"

    @property
    def name(self) -> str:
        return f"the official vLLM wheel of {self.ref}"

    def check(self, timeout: float, policy: RetryPolicy, on_retry: Say) -> WheelStatus:
        version = release_version(self.ref)
        if version is None:
            return WheelStatus(
                self.url, Availability.GONE, f"{self.ref} is no release; vLLM publishes wheels of releases"
            )
        if self.cuda_major is None:
            return WheelStatus(self.url, Availability.GONE, "vLLM publishes no CPU wheel (--torch-cuda cpu)")
        wanted = Wanted(version, self.cuda_major, self.machine)
        found = find_official(
            wanted, index=self.index, releases=self.releases, timeout=timeout, policy=policy, on_retry=on_retry
        )
        if isinstance(found, str):
            return WheelStatus(self.url, Availability.GONE, found)
        listed = f"listed with its sha256 in the {found.place.value}"
        return WheelStatus(found.url, Availability.PRESENT, listed, sha256=found.sha256)


# --------------------------------------------------------------------------- decide


class Action(Enum):
    KEEP = "keep"  # hosted and already mirrored: nothing to do
    MIRROR = "mirror"  # hosted, not yet ours: download and verify
    REBUILD = "rebuild"  # gone (or forced): build from source


def decide(status: WheelStatus | None, in_wheelhouse: bool, force: bool) -> Action:
    """Tonight's action, from what the host said and what the wheelhouse holds. `None` = not checked."""
    if force:
        return Action.REBUILD
    if status is None:
        raise ValueError("decide() needs a wheel status unless force is set")
    if not status.present:
        return Action.REBUILD
    return Action.KEEP if in_wheelhouse else Action.MIRROR


# --------------------------------------------------------------------------- nightly


class Outcome(Enum):
    PRESENT = "present"
    MIRRORED = "mirrored"
    REBUILT = "rebuilt"
    FAILED = "failed"
    SKIPPED_LOCKED = "skipped-locked"


# Distinct so a wrapper script or `systemctl status` tells the nights apart. The scheduler lists
# 10, 11 and 75 in SuccessExitStatus= so that only a real failure marks the unit failed.
EXIT_CODES: Mapping[Outcome, int] = {
    Outcome.PRESENT: 0,
    Outcome.MIRRORED: 10,
    Outcome.REBUILT: 11,
    Outcome.FAILED: 1,
    Outcome.SKIPPED_LOCKED: 75,  # EX_TEMPFAIL: a manual build held the lock; try again next time
}


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class NightlyOutcome:
    """One night's result: the exit code, the one line the user reads, and the history record."""

    outcome: Outcome
    url: str
    message: str
    started: datetime
    finished: datetime
    wheel: Path | None = None
    sha256: str | None = None
    log: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def line(self) -> str:
        return f"nightly: {self.outcome.value} — {self.message}"

    def record(self) -> dict[str, Any]:
        return {
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            "outcome": self.outcome.value,
            "exit_code": self.exit_code,
            "url": self.url,
            "wheel": str(self.wheel) if self.wheel else None,
            "sha256": self.sha256,
            "log": str(self.log) if self.log else None,
            "message": self.message,
            **self.extra,
        }


def skipped_locked(
    url: str,
    message: str,
    *,
    history_path: Path,
    log_path: Path | None = None,
    clock: Callable[[], datetime] = _now,
) -> NightlyOutcome:
    """For the caller that waited on the build lock and gave up: recorded like any other night."""
    now = clock()
    outcome = NightlyOutcome(Outcome.SKIPPED_LOCKED, url, message, now, now, log=log_path)
    append_history(history_path, outcome.record())
    return outcome


HISTORY_KEEP = 400


def append_history(path: Path, record: Mapping[str, Any], *, keep: int = HISTORY_KEEP) -> None:
    """One JSON line per night; trimmed to the last `keep` so the history stays small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else []
    if len(lines) < keep:
        with path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return
    atomic_write_text(path, "".join(lines[-(keep - 1) :]) + line)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The recorded nights, oldest first; a torn or foreign line is skipped, not fatal."""
    records: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        for raw in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(raw)
                if isinstance(item, dict):
                    records.append(item)
    return records


def last_outcome(path: Path) -> dict[str, Any] | None:
    records = read_history(path)
    return records[-1] if records else None


NotifyRunner = Callable[[Sequence[str], Mapping[str, str]], int]


def run_notify_command(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run the user's notify argv as given — no shell, so a wheel name can never become a command."""
    completed = subprocess.run(list(argv), env=dict(env), stdin=subprocess.DEVNULL, timeout=300, check=False)
    return completed.returncode


def notify_env(outcome: NightlyOutcome, base: Mapping[str, str]) -> dict[str, str]:
    return {
        **base,
        "SPARK_BUILD_OUTCOME": outcome.outcome.value,
        "SPARK_BUILD_EXIT_CODE": str(outcome.exit_code),
        "SPARK_BUILD_WHEEL": str(outcome.wheel or ""),
        "SPARK_BUILD_SHA256": outcome.sha256 or "",
        "SPARK_BUILD_LOG": str(outcome.log or ""),
        "SPARK_BUILD_MESSAGE": outcome.message,
        "SPARK_BUILD_URL": outcome.url,
    }


def _notify(argv: Sequence[str] | None, outcome: NightlyOutcome, runner: NotifyRunner, say: Say) -> None:
    """Tell the user about the nights that need them (a rebuild or a failure); never changes the outcome."""
    if not argv or outcome.outcome not in (Outcome.REBUILT, Outcome.FAILED):
        return
    try:
        code = runner(argv, notify_env(outcome, os.environ))
    except (OSError, subprocess.SubprocessError) as err:
        say(f"notify: {argv[0]} could not run: {err}")
        return
    if code != 0:
        say(f"notify: {argv[0]} exited {code}")


def _mirror_proven(wheel: Path, wheelhouse: Path, sha: str) -> Path:
    """The proven wheel into the wheelhouse, its sha256 beside it first (as `mirror_wheel` does)."""
    target = wheelhouse / wheel.name
    wheelhouse.mkdir(parents=True, exist_ok=True)
    write_sidecar(target, sha)
    atomic_copy(wheel, target)
    return target


def nightly(
    watched: Watched,
    wheelhouse: Path,
    *,
    build: Callable[[], Path],
    history_path: Path,
    force: bool = False,
    notify: Sequence[str] | None = None,
    log_path: Path | None = None,
    clock: Callable[[], datetime] = _now,
    timeout: float = 30.0,
    policy: RetryPolicy = RETRY_POLICY,
    say: Say = _print,
    notify_runner: NotifyRunner = run_notify_command,
    judge: Callable[[Path], str | None] | None = None,
    staging: Path | None = None,
) -> NightlyOutcome:
    """Check → decide → keep / mirror / rebuild; record one history line; notify on rebuild or failure.

    `build` builds, validates and publishes (build-vllm, resuming an unfinished build of the same
    inputs) and returns the published wheel; the caller holds the build lock around this call.
    `judge` proves a downloaded wheel as `--prefer-wheel` does (None, or why it is refused): the
    wheel is then downloaded into `staging`, which no index lists, and mirrored only once proven;
    a refused wheel is rebuilt from source, as `--prefer-wheel` would. A failure is returned as the
    FAILED outcome, not raised, so the night is always recorded; a `HostProblem` (the host, its
    tools or its network) fails the night without a rebuild, for it says nothing about the wheel.
    """
    if judge is not None and staging is None:
        raise ValueError("nightly() judges a wheel only in a staging folder that no index lists")
    started = clock()
    name, url = watched.name, watched.url  # the host's answer may name the wheel and its URL
    extra: dict[str, Any] = {}

    def finish(outcome: Outcome, message: str, wheel: Path | None = None, sha: str | None = None) -> NightlyOutcome:
        result = NightlyOutcome(outcome, url, message, started, clock(), wheel, sha, log_path, extra)
        append_history(history_path, result.record())
        _notify(notify, result, notify_runner, say)
        return result

    def rebuild(why: str) -> NightlyOutcome:
        say(f"nightly: rebuilding from source ({why})")
        wheel = build()
        if not wheel.is_file():
            return finish(Outcome.FAILED, f"the build reported {wheel}, which does not exist")
        sha = sha256_of(wheel)
        return finish(Outcome.REBUILT, f"built {wheel.name} (sha256 {sha})", wheel, sha)

    try:
        status: WheelStatus | None = None
        expected: str | None = None
        if not force:
            status = watched.check(timeout, policy, say)
            extra["http"] = status.status_line
            expected = status.sha256
            if status.present:
                url = status.url
                name = wheel_filename(split_sha256_fragment(url)[0])
        have = wheel_in_wheelhouse(wheelhouse, name, expected)
        action = decide(status, have, force)
        state = "forced" if status is None else status.availability.value
        say(f"nightly: {name}: {state}; in wheelhouse: {'yes' if have else 'no'} → {action.value}")

        if action is Action.KEEP:
            wheel = wheelhouse / name
            sha = read_sidecar(wheel) or sha256_of(wheel)  # always record it, even for a hand-placed wheel
            return finish(Outcome.PRESENT, f"{name} is hosted and mirrored", wheel, sha)
        if action is Action.MIRROR:
            into = staging if staging is not None and judge is not None else wheelhouse
            try:
                if into is staging and wheel_in_wheelhouse(into, name, expected):  # refused last night
                    wheel = into / name
                else:
                    wheel = mirror_wheel(url, into, expected, timeout=timeout, policy=policy, on_retry=say)
            except WheelGone as gone:
                return rebuild(gone.message)
            sha = read_sidecar(wheel) or sha256_of(wheel)
            proven = ""
            if judge is not None:
                refused = judge(wheel)
                if refused is not None:
                    extra["refused"] = refused
                    return rebuild(f"the official {name} is not mirrored: {refused}")
                wheel, proven = _mirror_proven(wheel, wheelhouse, sha), ", validated here"
            return finish(Outcome.MIRRORED, f"mirrored {name} into {wheelhouse} (sha256 {sha}{proven})", wheel, sha)
        return rebuild("--force" if force else f"{name} is gone: {status.status_line if status else ''}")
    except HostProblem as err:
        why = f"a host problem, no verdict on the wheel and nothing rebuilt: {err.message}"
        return finish(Outcome.FAILED, why + (f" (fix: {err.hint})" if err.hint else ""))
    except SparkBuildError as err:
        message = err.message + (f" (fix: {err.hint})" if err.hint else "")
        if "refused" in extra:  # the last line says why a build ran at all
            message += f"; the source build ran because the official {name} was not mirrored: {extra['refused']}"
        return finish(Outcome.FAILED, message)
    except Exception as err:  # a bug: still record the night and tell the user, then show the traceback
        finish(Outcome.FAILED, f"unexpected {type(err).__name__}: {err}")
        raise
