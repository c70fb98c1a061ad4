"""Wheel fetch: the HTTP side of the wheel watch — ask the host about the pinned wheel, and copy it whole.

Every fetch here runs behind one retry policy (`nightly.transport`), because each must tell "gone" (404/410, final) from
"the network hiccupped" (5xx, timeouts, resets: retried with a bound). `check_wheel` asks with HEAD
(a ranged GET where HEAD is refused); `mirror_wheel` streams into `.partial/`, resumes with Range +
If-Range, verifies the sha256 and only then renames the wheel into the wheelhouse. What to do with
the answers is `nightly.watch`'s business.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from enum import Enum
from html.parser import HTMLParser
from pathlib import Path

from spark_build.durable import atomic_write_text, fsync_dir, sha256_of
from spark_build.errors import SparkBuildError, UsageError
from spark_build.nightly.transport import (
    RETRY_POLICY,
    HTTPStatusError,
    RetryPolicy,
    Say,
    StaleRange,
    TruncatedDownload,
    open_url,
    status_failure,
    with_retry,
)

PARTIAL_DIR = ".partial"
GONE_CODES = frozenset({404, 410})
# Some hosts (S3 presigned URLs, a few CDNs) refuse HEAD although GET works: fall back to a 1-byte GET.
HEAD_REFUSED_CODES = frozenset({403, 405, 501})


class WheelGone(SparkBuildError):
    """The wheel answered 404/410 while we were fetching it: from now on only a rebuild gives vLLM."""


def split_sha256_fragment(url: str) -> tuple[str, str | None]:
    """`…whl#sha256=HEX` (PEP 503 style) → (URL to fetch, expected hash)."""
    fetch_url, fragment = urllib.parse.urldefrag(url)
    if not fragment:
        return fetch_url, None
    algo, _, value = fragment.partition("=")
    if algo != "sha256":
        return fetch_url, None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise UsageError(f"bad sha256 in URL fragment: {fragment!r}", hint="use #sha256=<64 hex digits>")
    return fetch_url, value.lower()


def wheel_filename(url: str) -> str:
    """The wheel's file name as pip wants it on disk: the URL's last segment, %2B decoded to '+'."""
    name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
    if not name.endswith(".whl") or "/" in name or name.startswith("."):
        raise UsageError(f"not a wheel URL: {url}", hint="the URL must end in a .whl file name")
    return name


# --------------------------------------------------------------------------- check


class Availability(Enum):
    PRESENT = "present"
    GONE = "gone"


@dataclass(frozen=True)
class WheelStatus:
    """What the wheel host said about the pinned URL, tonight."""

    url: str
    availability: Availability
    status_line: str
    size: int | None = None
    sha256: str | None = None

    @property
    def present(self) -> bool:
        return self.availability is Availability.PRESENT


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def check_wheel(
    url: str, *, timeout: float = 30.0, policy: RetryPolicy = RETRY_POLICY, on_retry: Say | None = None
) -> WheelStatus:
    """HEAD the wheel (ranged GET where HEAD is refused): PRESENT, GONE on 404/410, else an error.

    Anything but 2xx/404/410 is an error naming the status line: a 403 or 500 that outlasts the
    retries says nothing about whether the wheel exists, so it must not trigger a 30-minute rebuild.
    """
    fetch_url, fragment_sha = split_sha256_fragment(url)

    def probe() -> tuple[str, int | None]:
        try:
            with open_url(fetch_url, method="HEAD", timeout=timeout) as resp:
                return f"HTTP {resp.status} {resp.reason}", _int_header(resp.headers.get("Content-Length"))
        except HTTPStatusError as err:
            if err.code not in HEAD_REFUSED_CODES:
                raise
        with open_url(fetch_url, headers={"Range": "bytes=0-0"}, timeout=timeout) as resp:
            size = _total_from_content_range(resp.headers.get("Content-Range"))
            if resp.status != 206:
                size = _int_header(resp.headers.get("Content-Length"))
            return f"HTTP {resp.status} {resp.reason}", size

    try:
        status_line, size = with_retry(policy, on_retry, "checking", fetch_url, probe)
    except HTTPStatusError as err:
        if err.code in GONE_CODES:
            return WheelStatus(url, Availability.GONE, err.status_line)
        hint = "neither present nor gone (404/410); check the URL and the host, then run the nightly again"
        raise status_failure("checking", fetch_url, err, policy, hint) from err
    return WheelStatus(url, Availability.PRESENT, status_line, size=size, sha256=fragment_sha)


class _WheelLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for key, value in attrs if key == "href" and value)


def sha256_from_index(
    index_url: str,
    filename: str,
    *,
    timeout: float = 30.0,
    policy: RetryPolicy = RETRY_POLICY,
    on_retry: Say | None = None,
) -> str | None:
    """The sha256 a PEP 503 index page publishes for `filename` (`<a href="…whl#sha256=…">`), if any."""

    def fetch() -> str:
        with open_url(index_url, timeout=timeout) as resp:
            return str(resp.read().decode("utf-8", "replace"))

    try:
        page = with_retry(policy, on_retry, "reading index", index_url, fetch)
    except HTTPStatusError as err:
        raise status_failure("reading index", index_url, err, policy, "check --index-url") from err
    parser = _WheelLinks()
    parser.feed(page)
    for href in parser.hrefs:
        target, sha = split_sha256_fragment(urllib.parse.urljoin(index_url, href))
        if sha and urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(target).path)) == filename:
            return sha
    return None


# --------------------------------------------------------------------------- mirror


def _resume_validator(meta: Path, fetch_url: str) -> str | None:
    """The ETag/Last-Modified the `.part` was started with; without one a resume could splice two files."""
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("url") != fetch_url:
        return None
    validator = data.get("etag") or data.get("last_modified")
    return validator if isinstance(validator, str) else None


def _download_once(fetch_url: str, part: Path, meta: Path, timeout: float, chunk_size: int) -> None:
    """One attempt: resume `part` with Range when we can, else start over; raise on a short body."""
    offset = part.stat().st_size if part.exists() else 0
    validator = _resume_validator(meta, fetch_url) if offset else None
    headers = {"Range": f"bytes={offset}-", "If-Range": validator} if validator else {}
    try:
        resp = open_url(fetch_url, headers=headers, timeout=timeout)
    except HTTPStatusError as err:
        if err.code == 416 and headers:
            if _total_from_content_range(err.content_range) == offset:
                return  # stopped after the last byte, before the rename: the .part is whole
            part.unlink(missing_ok=True)  # longer than the file: not a prefix we can continue
            raise StaleRange(f"cannot resume at byte {offset}: {err.status_line}; starting over") from err
        raise
    with resp:
        if resp.status == 206 and headers:
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
            if not match or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise StaleRange(f"server resumed at the wrong offset ({match and match.group(1)})")
            total = int(match.group(2)) if match.group(2) != "*" else None
            mode, received = "ab", offset
        else:  # 200: Range unsupported, or If-Range saw a changed file — restart cleanly
            etag = resp.headers.get("ETag")
            strong_etag = etag if etag and not etag.startswith("W/") else None
            atomic_write_text(
                meta,
                json.dumps(
                    {
                        "url": fetch_url,
                        "etag": strong_etag,
                        "last_modified": resp.headers.get("Last-Modified"),
                    }
                ),
            )
            total = _int_header(resp.headers.get("Content-Length"))
            mode, received = "wb", 0
        with part.open(mode) as f:
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                received += len(chunk)
            f.flush()
            os.fsync(f.fileno())
    if total is not None and received != total:
        raise TruncatedDownload(received, total)


def sidecar_path(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + ".sha256")


def read_sidecar(wheel: Path) -> str | None:
    """The recorded hash (`sha256sum` format, so `sha256sum -c NAME.sha256` works in the wheelhouse)."""
    try:
        first = sidecar_path(wheel).read_text(encoding="utf-8").split()
    except OSError:
        return None
    return first[0].lower() if first and re.fullmatch(r"[0-9a-fA-F]{64}", first[0]) else None


def write_sidecar(wheel: Path, sha256: str) -> Path:
    path = sidecar_path(wheel)
    atomic_write_text(path, f"{sha256}  {wheel.name}\n")
    return path


def wheel_in_wheelhouse(wheelhouse: Path, filename: str, expected_sha256: str | None = None) -> bool:
    """Observed state, not a flag: the file is there and matches the hash we recorded (and the pin's)."""
    wheel = wheelhouse / filename
    if not wheel.is_file():
        return False
    recorded = read_sidecar(wheel)
    if recorded is None and expected_sha256 is None:
        return True  # put there by hand or by publish without a sidecar; nothing to compare against
    actual = sha256_of(wheel)
    return all(want is None or want == actual for want in (recorded, expected_sha256))


def mirror_wheel(
    url: str,
    wheelhouse: Path,
    expected_sha256: str | None = None,
    *,
    timeout: float = 60.0,
    policy: RetryPolicy = RETRY_POLICY,
    on_retry: Say | None = None,
    chunk_size: int = 1 << 20,
) -> Path:
    """Copy the wheel into `wheelhouse` so it outlives its URL — whole and verified, or not at all.

    Streams into `wheelhouse/.partial/NAME.part` (resumed with Range + If-Range across retries and
    across runs), checks the sha256 (argument, else `#sha256=` in the URL), writes `NAME.sha256`,
    then renames into place. pip and a PEP 503 server only ever see complete, verified wheels.
    """
    name = wheel_filename(split_sha256_fragment(url)[0])
    return mirror_file(
        url, wheelhouse, name, expected_sha256, timeout=timeout, policy=policy, on_retry=on_retry, chunk_size=chunk_size
    )


def mirror_file(
    url: str,
    folder: Path,
    name: str,
    expected_sha256: str | None = None,
    *,
    timeout: float = 60.0,
    policy: RetryPolicy = RETRY_POLICY,
    on_retry: Say | None = None,
    chunk_size: int = 1 << 20,
) -> Path:
    """`mirror_wheel` for any file (a source distribution the release watch reads) saved as `name`."""
    fetch_url, fragment_sha = split_sha256_fragment(url)
    if expected_sha256 and fragment_sha and expected_sha256.lower() != fragment_sha:
        raise UsageError(
            f"two different sha256 for {url}: {expected_sha256} given, {fragment_sha} in the URL",
            hint="drop one of them",
        )
    expected = (expected_sha256 or fragment_sha or "").lower() or None
    partial_dir = folder / PARTIAL_DIR
    partial_dir.mkdir(parents=True, exist_ok=True)
    part = partial_dir / f"{name}.part"
    meta = partial_dir / f"{name}.part.json"

    try:
        with_retry(
            policy,
            on_retry,
            "downloading",
            fetch_url,
            lambda: _download_once(fetch_url, part, meta, timeout, chunk_size),
        )
    except HTTPStatusError as err:
        if err.code in GONE_CODES:
            raise WheelGone(f"{fetch_url} is gone ({err.status_line})", hint="rebuild from source") from err
        hint = "the next run resumes from what was kept in .partial/"
        raise status_failure("downloading", fetch_url, err, policy, hint) from err

    actual = sha256_of(part)
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        raise SparkBuildError(
            f"sha256 mismatch for {name}: expected {expected}, got {actual}",
            hint="the hosted file is not the pinned one; nothing was put in the wheelhouse — check the pin",
        )
    wheel = folder / name
    write_sidecar(wheel, actual)  # first, so a wheel in the wheelhouse always has its hash beside it
    os.replace(part, wheel)
    fsync_dir(folder)
    meta.unlink(missing_ok=True)
    return wheel
