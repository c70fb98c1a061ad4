"""The serve check's two requests over loopback HTTP: their bodies, the SSE stream folded into
text, usage and the time to the first token, and whether an answer proves the server works.

A server can answer `/health` and still fail the first request (an attention backend that
rejects the model's head size takes the engine down: HTTP 500, or when streamed, an error
event after a 200), so status, stream errors, text and token counts are all checked.

Pure apart from `send_request`.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from typing import Any

from spark_build.wheel.serverproc import HOST, OPENER, Clock

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
PROMPT = "The capital of France is"
CHAT_MESSAGE = "Say hello in one short sentence."
EXCERPT_CHARS = 200


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


# ---------------------------------------------------------------- pure decisions


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


# ---------------------------------------------------------------- HTTP (loopback only)


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
        with OPENER.open(request, timeout=timeout_s) as resp:
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
