"""HTTP to the wheel host: one opener and one bounded retry policy for every request the wheel
watch makes.

Kept apart from what is fetched (`nightly.fetch`) because the policy is the part that must not
drift: "gone" (404/410) is final, "the network hiccupped" (5xx, timeouts, resets) is retried
with a bound and a log line per retry.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from spark_build.errors import HostProblem, UsageError

USER_AGENT = "spark-build-wheelwatch/0.1"

Say = Callable[[str], None]
T = TypeVar("T")


def _print(line: str) -> None:
    print(line, flush=True)


# --------------------------------------------------------------------------- retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before a transient failure becomes the night's failure.

    Bounded on purpose: a nightly that retries forever never reports, and the next night tries again.
    """

    attempts: int = 5
    initial_wait: float = 2.0
    max_wait: float = 60.0
    jitter: float = 2.0


RETRY_POLICY = RetryPolicy()


class HTTPStatusError(Exception):
    """A final HTTP answer that is not success, kept without its socket (urllib's HTTPError holds one)."""

    def __init__(self, url: str, code: int, reason: str, content_range: str | None = None) -> None:
        super().__init__(f"HTTP {code} {reason}".rstrip())
        self.url = url
        self.code = code
        self.status_line = str(self)
        self.content_range = content_range  # a 416 says how long the file really is


class TruncatedDownload(Exception):
    """The body ended before Content-Length/Content-Range said it would: a dropped connection."""

    def __init__(self, received: int, expected: int) -> None:
        super().__init__(f"connection closed after {received} of {expected} bytes")


class StaleRange(Exception):
    """Our `.part` does not fit what the server offers to resume; the next attempt starts over."""


def is_transient(exc: BaseException) -> bool:
    """Worth another try: 5xx, timeouts, resets, truncated bodies — never a 4xx, which will not change."""
    if isinstance(exc, HTTPStatusError):
        return exc.code >= 500
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"
    return isinstance(
        exc,
        (
            TimeoutError,
            ConnectionError,
            http.client.IncompleteRead,
            http.client.BadStatusLine,
            ssl.SSLEOFError,
            TruncatedDownload,
            StaleRange,
        ),
    )


def transient_retry(policy: RetryPolicy = RETRY_POLICY, *, on_retry: Say | None = None) -> tenacity.Retrying:
    """The one retry policy for wheel traffic: bounded attempts, exponential backoff with jitter.

    Jitter keeps many Sparks on the same 03:30 timer from hammering the wheel host in lockstep.
    Each retry says why and how long it waits, so a slow night is explained in the log.
    """
    say = on_retry or _print

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        say(f"retry {state.attempt_number}/{policy.attempts - 1} in {wait:.1f}s: {error}")

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(policy.attempts),
        # spelled as a sum rather than wait_exponential_jitter, whose arguments differ across tenacity 8 and 9
        wait=tenacity.wait_exponential(multiplier=policy.initial_wait, max=policy.max_wait)
        + tenacity.wait_random(0, policy.jitter),
        before_sleep=before_sleep,
        reraise=True,
    )


def status_failure(what: str, url: str, err: HTTPStatusError, policy: RetryPolicy, hint: str) -> HostProblem:
    """A final non-success answer as one error, saying whether the policy's attempts were spent on it.
    A host problem: a 403 or a 500 says nothing about the wheel (404/410, "gone", the callers judge)."""
    tries = f" (after {policy.attempts} attempts)" if is_transient(err) else ""
    return HostProblem(f"{what} {url}: {err.status_line}{tries}", hint=hint)


def with_retry(policy: RetryPolicy, on_retry: Say | None, what: str, url: str, fn: Callable[[], T]) -> T:
    """Run `fn` under the policy; a failure left after it becomes one actionable error: a host
    problem (the network, the host, this disk), never a verdict on the wheel."""
    try:
        return transient_retry(policy, on_retry=on_retry)(fn)
    except HTTPStatusError:
        raise  # the caller knows which codes mean "gone"
    except ValueError as err:  # urllib: "unknown url type"
        raise UsageError(f"{what} {url}: {err}", hint="give an http(s) URL to the wheel") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException, TruncatedDownload, StaleRange) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        tries = f" after {policy.attempts} attempts" if is_transient(err) else ""
        raise HostProblem(
            f"{what} {url} failed{tries}: {reason}",
            hint="check the network",
        ) from err


# --------------------------------------------------------------------------- HTTP plumbing


class _KeepHeadOnRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET: a host redirecting to a CDN would stream 250 MB."""

    def redirect_request(  # type: ignore[override]
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and req.get_method() == "HEAD":
            new.method = "HEAD"
        return new


_OPENER = urllib.request.build_opener(_KeepHeadOnRedirect)


def open_url(url: str, *, timeout: float, method: str = "GET", headers: Mapping[str, str] | None = None) -> Any:
    """Open `url` with our User-Agent; an HTTP error comes back as `HTTPStatusError`, its socket closed."""
    request = urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})})
    try:
        return _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        status = HTTPStatusError(url, err.code, str(err.reason), err.headers.get("Content-Range"))
        err.close()
        raise status from None
