"""The vLLM server as a process: started in its own process group with all its output going
to a log, polled on `/health` until ready, and stopped whole.

The server runs in its own process group (vLLM starts an engine core and workers beside the
API process); it is stopped SIGINT → SIGTERM → SIGKILL, and the check verifies that no
process of the group is left — a leaked worker would hold gigabytes of GPU memory.

Also here: a loopback port free to bind, and a short path to the work dir's socket folder
for a work dir too deep for vLLM's Unix sockets.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Literal

import psutil

from spark_build.lock import group_members

Clock = Callable[[], float]
Say = Callable[[str], None]

HOST = "127.0.0.1"
# A Unix socket path holds 107 bytes (sun_path); vLLM binds its ZMQ sockets at
# `$TMPDIR/<uuid4>` (37 more) and multiprocessing at `$TMPDIR/pymp-…/listener-…` (31 more).
# A longer TMPDIR fails the start with `ZMQError: ipc path … is longer than 107 characters`.
SOCKET_DIR_MAX = 60
PROGRESS_EVERY_S = 10.0

# No proxies: a corporate http_proxy must never see (or swallow) a request meant for 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port free right now (the kernel's pick); the server binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server: its process (the group leader) and where its output goes."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    log_offset: int  # where this start's output begins in the shared log

    @property
    def group(self) -> int:
        return self.process.pid


def start_server(argv: list[str], *, env: Mapping[str, str], log: Path, cwd: Path, note: str = "") -> Server:
    """Start in the background, in its own session (so its process group is ours to stop
    whole), with the argument list logged first and all output going straight to the log
    file — no pipe to drain, so a chatty server can never block on a full pipe."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        offset = out.tell()
        header = [f"# {time.strftime('%Y-%m-%d %H:%M:%S')} in {cwd}"]
        if note:
            header.append(f"# {note}")
        header += [f"#   {k}={env[k]}" for k in sorted(env) if k.startswith(("VLLM_", "HF_")) or k == "TMPDIR"]
        header.append(f"+ {shlex.join(argv)}")
        out.write(("\n".join(header) + "\n").encode())
        out.flush()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 0
    return Server(process=process, port=port, log=log, log_offset=offset)


def _alive(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


@dataclass(frozen=True)
class StopResult:
    stopped_by: str | None  # the signal after which nothing was left; None: nothing was running
    exit_code: int | None
    leftover_pids: tuple[int, ...]


def stop_server(
    server: Server, *, sigint_grace_s: float, sigterm_grace_s: float, kill_grace_s: float = 5.0
) -> StopResult:
    """SIGINT (vLLM's clean shutdown), then SIGTERM, then SIGKILL, each to the whole group and
    to any descendant that left it; done when none of them is alive. Returns what, if
    anything, survived even SIGKILL (a process stuck in the kernel, in uninterruptible sleep)."""
    leader = server.process
    tracked = {p.pid: p for p in group_members(server.group)}
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(leader.pid).children(recursive=True):
            tracked.setdefault(child.pid, child)
    stopped_by: str | None = None
    for sig, grace in (
        (signal.SIGINT, sigint_grace_s),
        (signal.SIGTERM, sigterm_grace_s),
        (signal.SIGKILL, kill_grace_s),
    ):
        # Members may have appeared since (a worker spawned during shutdown).
        for proc in group_members(server.group):
            tracked.setdefault(proc.pid, proc)
        if not _alive(tracked.values()) and leader.poll() is not None:
            break
        stopped_by = sig.name
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.group, sig)
        for proc in _alive(tracked.values()):
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                if os.getpgid(proc.pid) != server.group:
                    proc.send_signal(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            leader.poll()  # reap our child, or it stays a zombie
            if not _alive(tracked.values()):
                break
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        leader.wait(timeout=kill_grace_s)
    leftover = {p.pid for p in _alive(tracked.values())} | {p.pid for p in group_members(server.group)}
    with open(server.log, "ab") as out:
        out.write(
            f"# stopped by {stopped_by or 'itself'}; exit {leader.returncode}; left: {sorted(leftover)}\n".encode()
        )
    return StopResult(stopped_by=stopped_by, exit_code=leader.returncode, leftover_pids=tuple(sorted(leftover)))


def log_lines(server: Server, *, max_bytes: int = 256 * 1024) -> list[str]:
    """This start's part of the log (its last `max_bytes`), as lines."""
    with open(server.log, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        start = max(server.log_offset, end - max_bytes)
        f.seek(start)
        return f.read().decode("utf-8", "replace").splitlines()


# ---------------------------------------------------------------- readiness (loopback only)


def health_ok(port: int, *, timeout_s: float = 2.0) -> bool:
    try:
        with OPENER.open(f"http://{HOST}:{port}/health", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (OSError, HTTPException):
        return False


def wait_ready(
    server: Server, *, timeout_s: float, clock: Clock, say: Say, label: str
) -> tuple[Literal["ready", "timeout", "exited"], float]:
    """Poll `/health` until 200, the process exits (no point waiting out the timeout for a
    server that crashed), or the timeout; a progress line every PROGRESS_EVERY_S seconds."""
    started = clock()
    next_note = started + PROGRESS_EVERY_S
    while True:
        elapsed = clock() - started
        if server.process.poll() is not None:
            return "exited", elapsed
        if health_ok(server.port):
            return "ready", clock() - started
        if elapsed >= timeout_s:
            return "timeout", elapsed
        if clock() >= next_note:
            say(f"serve: waiting for {label} on {HOST}:{server.port}/health — {elapsed:.0f} s of {timeout_s:.0f} s")
            next_note += PROGRESS_EVERY_S
        time.sleep(0.5)


# ---------------------------------------------------------------- IPC socket folder


def socket_dir_too_long(tmpdir: str) -> bool:
    """Whether vLLM's IPC sockets under `tmpdir` would exceed the Unix socket path limit."""
    return len(tmpdir) > SOCKET_DIR_MAX


@contextlib.contextmanager
def short_socket_dir(tmpdir: Path) -> Iterator[Path]:
    """`tmpdir`, or when its path is too long for a Unix socket, a short path to it: a link
    in a private (0700, random-named) folder under /tmp. The sockets still live in the work
    dir; only the name that reaches bind() is short. The link goes when the check ends."""
    if not socket_dir_too_long(str(tmpdir)):
        yield tmpdir
        return
    holder = Path(tempfile.mkdtemp(prefix="sb-", dir="/tmp" if Path("/tmp").is_dir() else None))
    link = holder / "t"
    link.symlink_to(tmpdir, target_is_directory=True)
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            holder.rmdir()
