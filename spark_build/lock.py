"""One build per workdir: an flock on `<workdir>/.lock` that names its holder.

The kernel drops an flock when its holder dies, even by `kill -9`, so a crashed build never
leaves a stale lock. The file also records the process group of the command the build was
running, so the next build can stop what a killed orchestrator left behind (a Ninja that goes
on compiling into the tree we are about to resume would corrupt it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from spark_build.errors import BuildLocked
from spark_build.layout import Workdir


class WorkdirLock:
    def __init__(self, workdir: Path) -> None:
        self.path = Workdir(workdir).lock_file
        self._fd: int | None = None
        self.leftover_pgid: int | None = None

    def acquire(self, *, wait: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Take the lock, waiting up to `wait` seconds (the nightly waits; a user's build
        does not), else raise `BuildLocked` naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if clock() < deadline:
                    time.sleep(min(1.0, max(0.0, deadline - clock())))
                    continue
                holder = _read(fd).get("pid", "?")
                os.close(fd)
                raise BuildLocked(
                    f"another build (PID {holder}) is using {self.path.parent}",
                    hint=f"wait for it to finish, or stop it with: kill {holder}",
                ) from None
        previous = _read(fd)
        self._fd = fd
        pgid = previous.get("child_pgid")
        self.leftover_pgid = int(pgid) if isinstance(pgid, int) else None
        self._write({"pid": os.getpid()})

    def stop_leftover(self) -> int:
        """Stop the process group a killed holder left running (a Ninja still compiling into the
        tree this run resumes); how many processes it had."""
        if self.leftover_pgid is None:
            return 0
        stopped = stop_process_group(self.leftover_pgid)
        self.leftover_pgid = None
        return stopped

    def note_child(self, pgid: int | None) -> None:
        """Record the process group now running, for the next build to clean up after a crash."""
        payload: dict[str, int] = {"pid": os.getpid()}
        if pgid is not None:
            payload["child_pgid"] = pgid
        self._write(payload)

    def release(self) -> None:
        if self._fd is None:
            return
        self._write({})
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _write(self, payload: dict[str, int]) -> None:
        assert self._fd is not None
        data = json.dumps(payload).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    @contextlib.contextmanager
    def held(self, *, wait: float = 0.0) -> Iterator[WorkdirLock]:
        self.acquire(wait=wait)
        try:
            yield self
        finally:
            self.release()


def _read(fd: int) -> dict[str, object]:
    try:
        raw = os.pread(fd, 4096, 0)
        value = json.loads(raw.decode() or "{}")
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def stop_process_group(pgid: int, *, grace: float = 5.0) -> int:
    """SIGTERM the group, then SIGKILL what is still there after `grace` seconds.

    Stopped (SIGSTOP'd) members get SIGCONT too, or they would never see the SIGTERM.
    Returns how many processes were found in the group.
    """
    members = group_members(pgid)
    if not members:
        return 0
    for sig in (signal.SIGTERM, signal.SIGCONT):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in members):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    psutil.wait_procs(members, timeout=grace)
    return len(members)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a process group (zombies hold no memory and are left to their reaper)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error):
            if _pgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
