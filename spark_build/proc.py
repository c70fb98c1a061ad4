"""The one runner every external command goes through.

Each command: its argument list logged before it runs (`+ cmake -G Ninja …`), output streamed
line by line to the step's log (a 30-minute compile's output is never held in memory), its
own process group (so Ctrl-C reaches nvcc grandchildren, and one `killpg` stops them all), and
a live status line with the step, the elapsed time and the last line of output.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from spark_build.errors import StepFailed
from spark_build.lock import stop_process_group


class InterruptSignal(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM. A BaseException so no `except Exception`
    on the way up can swallow it before the running process group is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interrupt_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into `InterruptSignal` for the duration of a build."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise InterruptSignal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StatusSink:
    """Where the runner reports progress; the console implementation is `pipeline.progress.Progress`."""

    def command(self, argv: Sequence[str]) -> None: ...
    def line(self, text: str) -> None: ...
    def tick(self) -> None: ...
    def progress(self, text: str) -> None:
        """A step's own measure of how far it is (the compile's objects done and ETA); any thread."""


def _tee(stream: object, log: object, sink: StatusSink) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        log.write(raw)  # type: ignore[attr-defined]
        log.flush()  # type: ignore[attr-defined]
        text = raw.decode("utf-8", "replace").rstrip()
        if text:
            sink.line(text)


class Runner:
    """Runs commands for one build; `on_group` hears each new process group (and None after)."""

    def __init__(
        self,
        sink: StatusSink | None = None,
        on_group: Callable[[int | None], None] | None = None,
    ) -> None:
        self.sink = sink or StatusSink()
        self.on_group = on_group or (lambda _pgid: None)

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log: Path,
        step: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        env_note: Mapping[str, str] | None = None,
        on_start: Callable[[int], None] | None = None,
        check: bool = True,
    ) -> int:
        """Run to completion and return the exit code; raise `StepFailed` when `check` and it
        fails. `env_note` lists the variables worth recording in the log (the full environment
        would bury them). `on_start` gets the pid, which is also the process group id."""
        args = [os.fspath(a) for a in argv]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(_log_header(args, cwd or Path.cwd(), env_note or {}, time.strftime("%Y-%m-%d %H:%M:%S")))
            out.flush()
            self.sink.command(args)
            try:
                proc = subprocess.Popen(
                    args,
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise StepFailed(f"command not found: {args[0]}", step=step, log=log) from exc
            code = self._follow(proc, out, on_start)
            out.write(f"# exit {code}\n".encode())
        if check and code != 0:
            raise StepFailed(
                f"`{shlex.join(args[:3])}{' …' if len(args) > 3 else ''}` exited with {_describe(code)}",
                step=step,
                log=log,
            )
        return code

    def _follow(self, proc: subprocess.Popen[bytes], out: BinaryIO, on_start: Callable[[int], None] | None) -> int:
        """Stream the output into the log until the process ends, ticking the status line. On
        any exception (an interrupt, or a bug of ours) the whole group goes, grandchildren
        included; after a normal end, so does a daemonised grandchild still holding it."""
        self.on_group(proc.pid)
        reader = threading.Thread(target=_tee, args=(proc.stdout, out, self.sink), daemon=True)
        reader.start()
        try:
            if on_start is not None:
                on_start(proc.pid)
            while True:
                try:
                    code = proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    self.sink.tick()
        except BaseException:
            stop_process_group(proc.pid)
            proc.wait()
            reader.join(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            out.write(b"# stopped: the build was interrupted\n")
            raise
        finally:
            self.on_group(None)
        reader.join()
        assert proc.stdout is not None
        proc.stdout.close()
        stop_process_group(proc.pid, grace=1.0)
        return code


def _log_header(args: Sequence[str], cwd: Path, env_note: Mapping[str, str], when: str) -> bytes:
    """When and where, the variables worth recording, and the argument list as a shell line."""
    header = [f"# {when} in {cwd}"]
    header += [f"#   {k}={v}" for k, v in sorted(env_note.items())]
    header.append(f"+ {shlex.join(args)}")
    return ("\n".join(header) + "\n").encode()


def log_tail(log: Path, size: int = 4 << 20) -> str:
    """The last `size` bytes of a step log, where a failure's evidence is (a compile's log can
    run to hundreds of MB; reading all of it to find the last error is wasted work)."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - size))
        return handle.read().decode("utf-8", "replace")


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"
