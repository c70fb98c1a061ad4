"""Wheel watch against a real HTTP server on 127.0.0.1: what the nightly sees when the pinned wheel
is hosted, gone, flaky or corrupt — and what it leaves in the wheelhouse each time."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from spark_build.errors import HostProblem, SparkBuildError, StepFailed
from spark_build.nightly.fetch import (
    Availability,
    WheelGone,
    check_wheel,
    mirror_wheel,
    read_sidecar,
    sha256_from_index,
)
from spark_build.nightly.transport import RetryPolicy
from spark_build.nightly.watch import (
    OfficialRelease,
    Outcome,
    PinnedUrl,
    nightly,
    read_history,
)
from tests.servers import OfficialHost
from tests.unit.test_wheelwatch import NAME

PATH = "/72506c98/vllm-0.13.0%2Bcu130-cp38-abi3-manylinux_2_35_aarch64.whl"

BODY = bytes(range(256)) * 600  # 153,600 bytes: several read chunks, small enough to be instant

SHA = hashlib.sha256(BODY).hexdigest()

FAST = RetryPolicy(attempts=3, initial_wait=0.001, max_wait=0.005, jitter=0.001)

ONCE = RetryPolicy(attempts=1)


Respond = Callable[[BaseHTTPRequestHandler], None]


# --------------------------------------------------------------------------- the loopback wheel host


@dataclass
class WheelHost:
    """Scripted answers per path (consumed in order, the last one repeats) and a record of requests."""

    base: str
    scripts: dict[str, list[Respond]] = field(default_factory=dict)
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def script(self, path: str, *responses: Respond) -> str:
        self.scripts[path] = list(responses)
        return self.base + path

    def requests(self, method: str | None = None) -> list[tuple[str, str, dict[str, str]]]:
        return [r for r in self.seen if method is None or r[0] == method]


def _answer(handler: BaseHTTPRequestHandler) -> None:
    host: WheelHost = handler.server.host  # type: ignore[attr-defined]
    path = handler.path
    host.seen.append((handler.command, path, dict(handler.headers.items())))
    script = host.scripts.get(path)
    if not script:
        return status(404)(handler)
    respond = script.pop(0) if len(script) > 1 else script[0]
    respond(handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    do_GET = _answer
    do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output clean
        pass


@pytest.fixture
def wheel_host() -> Iterator[WheelHost]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    host = WheelHost(base=f"http://127.0.0.1:{server.server_address[1]}")
    server.host = host  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        host.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def _headers(handler: BaseHTTPRequestHandler, code: int, headers: dict[str, str]) -> None:
    handler.send_response(code)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Connection", "close")
    handler.end_headers()


def status(code: int) -> Respond:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        _headers(handler, code, {"Content-Length": "0"})

    return respond


def _wanted_range(handler: BaseHTTPRequestHandler, etag: str, ranges: bool) -> int:
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
    if not ranges or not match:
        return -1
    if_range = handler.headers.get("If-Range")
    return int(match.group(1)) if if_range in (None, etag) else -1


def serve(body: bytes = BODY, *, etag: str = '"v1"', ranges: bool = True, head: bool = True) -> Respond:
    """A static file server: HEAD, GET, and (optionally) Range with If-Range."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "HEAD" and not head:
            return status(405)(handler)
        start = _wanted_range(handler, etag, ranges)
        if start >= len(body):
            chunk = b""
            _headers(handler, 416, {"Content-Length": "0", "Content-Range": f"bytes */{len(body)}"})
        elif start >= 0:
            last = handler.headers["Range"].partition("-")[2]
            end = int(last) if last else len(body) - 1
            chunk = body[start : end + 1]
            _headers(
                handler,
                206,
                {
                    "Content-Length": str(len(chunk)),
                    "Content-Range": f"bytes {start}-{end}/{len(body)}",
                    "ETag": etag,
                },
            )
        else:
            chunk = body
            _headers(handler, 200, {"Content-Length": str(len(body)), "ETag": etag, "Accept-Ranges": "bytes"})
        if handler.command == "GET":
            handler.wfile.write(chunk)

    return respond


def reset_after(sent: int, body: bytes = BODY, etag: str = '"v1"') -> Respond:
    """Promise the whole body, send `sent` bytes, then reset the connection (RST, not a clean close)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        _headers(handler, 200, {"Content-Length": str(len(body)), "ETag": etag, "Accept-Ranges": "bytes"})
        handler.wfile.write(body[:sent])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.close_connection = True

    return respond


def hang(handler: BaseHTTPRequestHandler) -> None:
    """Answer nothing until the test ends: the client's timeout has to fire."""
    handler.server.host.release.wait(10)  # type: ignore[attr-defined]


def wheelhouse_files(wheelhouse: Path) -> list[str]:
    return sorted(str(p.relative_to(wheelhouse)) for p in wheelhouse.rglob("*") if p.is_file())


def test_check_reports_a_hosted_wheel_present_with_its_size(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, serve())
    status_ = check_wheel(url, timeout=5, policy=FAST)
    assert status_.availability is Availability.PRESENT
    assert status_.size == len(BODY)
    assert [m for m, _, _ in wheel_host.seen] == ["HEAD"]


def test_check_takes_the_expected_sha256_from_the_url_fragment(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, serve())
    assert check_wheel(f"{url}#sha256={SHA}", timeout=5, policy=FAST).sha256 == SHA


@pytest.mark.parametrize("code", [404, 410], ids=["404-not-found", "410-gone"])
def test_check_reports_gone_for_404_and_410_without_retrying(wheel_host: WheelHost, code: int) -> None:
    url = wheel_host.script(PATH, status(code))
    status_ = check_wheel(url, timeout=5, policy=FAST)
    assert status_.availability is Availability.GONE
    assert status_.status_line.startswith(f"HTTP {code}")
    assert len(wheel_host.seen) == 1


def test_check_falls_back_to_a_ranged_get_when_head_is_refused(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, serve(head=False))
    status_ = check_wheel(url, timeout=5, policy=FAST)
    assert status_.present and status_.size == len(BODY)
    assert [(m, h.get("Range")) for m, _, h in wheel_host.seen] == [("HEAD", None), ("GET", "bytes=0-0")]


def test_check_retries_503_with_a_log_line_per_retry_then_reports_present(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, status(503), status(503), serve())
    retries: list[str] = []
    status_ = check_wheel(url, timeout=5, policy=FAST, on_retry=retries.append)
    assert status_.present
    assert len(retries) == 2 and all("HTTP 503" in line for line in retries)


def test_check_retries_a_timeout(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, hang, serve())
    retries: list[str] = []
    assert check_wheel(url, timeout=0.3, policy=FAST, on_retry=retries.append).present
    assert len(retries) == 1 and "timed out" in retries[0]


def test_check_gives_up_after_the_bounded_attempts_naming_the_status_line(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, status(502))
    with pytest.raises(SparkBuildError, match=r"HTTP 502 Bad Gateway \(after 3 attempts\)"):
        check_wheel(url, timeout=5, policy=FAST, on_retry=lambda _: None)
    assert len(wheel_host.seen) == 3


def test_check_never_retries_a_4xx_and_says_which(wheel_host: WheelHost) -> None:
    url = wheel_host.script(PATH, status(401))
    with pytest.raises(SparkBuildError, match="HTTP 401 Unauthorized"):
        check_wheel(url, timeout=5, policy=FAST)
    assert len(wheel_host.seen) == 1


# --------------------------------------------------------------------------- mirror


def test_mirror_puts_the_verified_wheel_and_its_sha256_into_the_wheelhouse(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, serve())
    wheel = mirror_wheel(f"{url}#sha256={SHA}", tmp_path, timeout=5, policy=FAST)
    assert wheel == tmp_path / NAME and wheel.read_bytes() == BODY
    assert (tmp_path / f"{NAME}.sha256").read_text() == f"{SHA}  {NAME}\n"
    assert wheelhouse_files(tmp_path) == [NAME, f"{NAME}.sha256"]


def test_mirror_resumes_with_range_after_a_reset_mid_download(wheel_host: WheelHost, tmp_path: Path) -> None:
    url = wheel_host.script(PATH, reset_after(100_000), serve())
    retries: list[str] = []
    wheel = mirror_wheel(url, tmp_path, SHA, timeout=5, policy=FAST, on_retry=retries.append, chunk_size=4096)
    assert wheel.read_bytes() == BODY
    resumed = wheel_host.requests("GET")[1][2]
    assert re.fullmatch(r"bytes=[1-9]\d*-", resumed["Range"]) and resumed["If-Range"] == '"v1"'
    assert len(retries) == 1
    assert wheelhouse_files(tmp_path) == [NAME, f"{NAME}.sha256"]


def test_mirror_restarts_cleanly_when_the_server_ignores_range(wheel_host: WheelHost, tmp_path: Path) -> None:
    url = wheel_host.script(PATH, reset_after(100_000), serve(ranges=False))
    wheel = mirror_wheel(url, tmp_path, SHA, timeout=5, policy=FAST, on_retry=lambda _: None, chunk_size=4096)
    assert wheel.read_bytes() == BODY


def test_mirror_starts_over_when_the_file_changed_under_a_partial_download(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    new_body = BODY[::-1]
    url = wheel_host.script(PATH, reset_after(100_000), serve(new_body, etag='"v2"'))
    wheel = mirror_wheel(url, tmp_path, timeout=5, policy=FAST, on_retry=lambda _: None, chunk_size=4096)
    assert wheel.read_bytes() == new_body  # If-Range saw a new ETag: no splice of two files


def test_an_interrupted_download_leaves_only_a_part_file_and_the_next_run_resumes(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, reset_after(100_000), serve())
    with pytest.raises(SparkBuildError, match="after 1 attempts"):
        mirror_wheel(url, tmp_path, SHA, timeout=5, policy=ONCE, chunk_size=4096)
    assert wheelhouse_files(tmp_path) == [f".partial/{NAME}.part", f".partial/{NAME}.part.json"]
    kept = (tmp_path / ".partial" / f"{NAME}.part").stat().st_size
    assert 0 < kept < len(BODY)

    wheel = mirror_wheel(url, tmp_path, SHA, timeout=5, policy=ONCE)
    assert wheel.read_bytes() == BODY
    assert wheel_host.requests("GET")[-1][2]["Range"] == f"bytes={kept}-"


def test_a_part_file_completed_before_the_rename_is_finished_without_downloading_again(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, serve())
    partial = tmp_path / ".partial"
    partial.mkdir()
    (partial / f"{NAME}.part").write_bytes(BODY)
    (partial / f"{NAME}.part.json").write_text(json.dumps({"url": url, "etag": '"v1"'}))

    wheel = mirror_wheel(url, tmp_path, SHA, timeout=5, policy=ONCE)
    assert wheel.read_bytes() == BODY
    assert wheel_host.requests("GET")[0][2]["Range"] == f"bytes={len(BODY)}-"  # answered 416, nothing re-sent
    assert wheelhouse_files(tmp_path) == [NAME, f"{NAME}.sha256"]


def test_a_wrong_sha256_leaves_nothing_in_the_wheelhouse_and_names_both_hashes(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, serve())
    wrong = "0" * 64
    with pytest.raises(SparkBuildError) as caught:
        mirror_wheel(f"{url}#sha256={wrong}", tmp_path, timeout=5, policy=FAST)
    assert wrong in caught.value.message and SHA in caught.value.message
    assert wheelhouse_files(tmp_path) == []


def test_mirror_of_a_wheel_that_vanished_raises_wheel_gone(wheel_host: WheelHost, tmp_path: Path) -> None:
    url = wheel_host.script(PATH, status(410))
    with pytest.raises(WheelGone):
        mirror_wheel(url, tmp_path, timeout=5, policy=FAST)


def test_the_index_page_supplies_the_sha256_of_the_pinned_file(wheel_host: WheelHost) -> None:
    page = (
        f'<html><body><a href="other-1.0-py3-none-any.whl#sha256={"1" * 64}">x</a>'
        f'<a href="..{PATH}#sha256={SHA}">{NAME}</a></body></html>'
    ).encode()
    index = wheel_host.script("/72506c98/vllm/", serve(page))
    assert sha256_from_index(index, NAME, timeout=5, policy=FAST) == SHA


# --------------------------------------------------------------------------- nightly


@dataclass
class FakeBuild:
    """Stand-in for `build-vllm` + validate + publish (the real build is tested elsewhere): writes a wheel."""

    wheelhouse: Path
    calls: int = 0
    error: Exception | None = None

    def __call__(self) -> Path:
        self.calls += 1
        if self.error is not None:
            raise self.error
        wheel = self.wheelhouse / "vllm-0.13.0+spark-cp312-cp312-linux_aarch64.whl"
        wheel.write_bytes(b"built from source")
        return wheel


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 2, 3, 30, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def notify_script(tmp_path: Path) -> tuple[list[str], Path]:
    """A real notify command (argv, no shell) that writes what it was told to a JSON file."""
    out = tmp_path / "notified.json"
    script = tmp_path / "notify.py"
    script.write_text(
        "import json, os, sys\n"
        "keys = [k for k in os.environ if k.startswith('SPARK_BUILD_')]\n"
        "json.dump({'argv': sys.argv[1:], **{k: os.environ[k] for k in keys}}, open(sys.argv[1], 'w'))\n"
    )
    return [sys.executable, str(script), str(out), "two words; rm -rf /"], out


def _nightly(url: str, tmp_path: Path, build: FakeBuild, index_url: str | None = None, **kw: object) -> tuple:
    lines: list[str] = []
    result = nightly(
        PinnedUrl(url, index_url),
        tmp_path / "wheelhouse",
        build=build,
        history_path=tmp_path / "history.jsonl",
        log_path=tmp_path / "logs" / "nightly.log",
        clock=Clock(),
        timeout=5,
        policy=FAST,
        say=lines.append,
        **kw,  # type: ignore[arg-type]
    )
    return result, lines


def test_nightly_mirrors_a_hosted_wheel_then_reports_it_present(wheel_host: WheelHost, tmp_path: Path) -> None:
    url = wheel_host.script(PATH, serve())
    build = FakeBuild(tmp_path)
    first, _ = _nightly(url, tmp_path, build)
    second, _ = _nightly(url, tmp_path, build)

    assert (first.outcome, first.exit_code, first.sha256) == (Outcome.MIRRORED, 10, SHA)
    assert (second.outcome, second.exit_code, second.sha256) == (Outcome.PRESENT, 0, SHA)
    assert second.line().startswith("nightly: present")
    assert build.calls == 0
    assert len(wheel_host.requests("GET")) == 1  # the second night only looked
    history = read_history(tmp_path / "history.jsonl")
    assert [h["outcome"] for h in history] == ["mirrored", "present"]
    assert history[0]["sha256"] == SHA and history[0]["wheel"] == str(tmp_path / "wheelhouse" / NAME)


def test_nightly_rebuilds_when_the_wheel_is_gone_and_notifies(
    wheel_host: WheelHost, tmp_path: Path, notify_script: tuple[list[str], Path]
) -> None:
    url = wheel_host.script(PATH, status(404))
    argv, out = notify_script
    build = FakeBuild(tmp_path)
    result, lines = _nightly(url, tmp_path, build, notify=argv)

    assert (result.outcome, result.exit_code) == (Outcome.REBUILT, 11)
    assert build.calls == 1
    assert result.sha256 == hashlib.sha256(b"built from source").hexdigest()
    told = json.loads(out.read_text())
    assert told["argv"] == [str(out), "two words; rm -rf /"]
    assert told["SPARK_BUILD_OUTCOME"] == "rebuilt"
    assert told["SPARK_BUILD_WHEEL"] == str(result.wheel)
    assert told["SPARK_BUILD_LOG"] == str(tmp_path / "logs" / "nightly.log")
    assert any("gone" in line for line in lines)
    assert read_history(tmp_path / "history.jsonl")[-1]["exit_code"] == 11


def test_nightly_with_force_rebuilds_without_asking_the_host(wheel_host: WheelHost, tmp_path: Path) -> None:
    url = wheel_host.script(PATH, serve())
    result, _ = _nightly(url, tmp_path, FakeBuild(tmp_path), force=True)
    assert result.outcome is Outcome.REBUILT
    assert wheel_host.seen == []


def test_a_failed_rebuild_is_recorded_notified_and_returned_not_raised(
    wheel_host: WheelHost, tmp_path: Path, notify_script: tuple[list[str], Path]
) -> None:
    url = wheel_host.script(PATH, status(410))
    argv, out = notify_script
    build = FakeBuild(tmp_path, error=StepFailed("compile: nvcc killed", step="compile"))
    result, _ = _nightly(url, tmp_path, build, notify=argv)

    assert (result.outcome, result.exit_code) == (Outcome.FAILED, 1)
    assert "nvcc killed" in result.line()
    assert json.loads(out.read_text())["SPARK_BUILD_OUTCOME"] == "failed"
    assert read_history(tmp_path / "history.jsonl")[-1]["outcome"] == "failed"


def test_an_unclear_answer_from_the_host_fails_the_night_without_a_rebuild(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, status(403))
    build = FakeBuild(tmp_path)
    result, _ = _nightly(url, tmp_path, build)
    assert result.outcome is Outcome.FAILED and "HTTP 403" in result.message
    assert build.calls == 0


def test_a_wrong_sha256_from_the_index_fails_the_night_and_mirrors_nothing(
    wheel_host: WheelHost, tmp_path: Path
) -> None:
    url = wheel_host.script(PATH, serve())
    index = wheel_host.script("/index/", serve(f'<a href="{PATH}#sha256={"e" * 64}">w</a>'.encode()))
    result, _ = _nightly(url, tmp_path, FakeBuild(tmp_path), index_url=index)
    assert result.outcome is Outcome.FAILED and "sha256 mismatch" in result.message
    assert not (tmp_path / "wheelhouse" / NAME).exists()


def test_notify_runs_only_after_a_rebuild_or_a_failure(
    wheel_host: WheelHost, tmp_path: Path, notify_script: tuple[list[str], Path]
) -> None:
    url = wheel_host.script(PATH, serve())
    argv, out = notify_script
    result, _ = _nightly(url, tmp_path, FakeBuild(tmp_path), notify=argv)
    assert result.outcome is Outcome.MIRRORED
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# The official wheel of a release (no --url): looked up on the stand-in for PyPI and GitHub


def _official_night(host: OfficialHost, tmp_path: Path, build: FakeBuild, ref: str = "v0.15.0", **kw: object) -> tuple:
    lines: list[str] = []
    watched = OfficialRelease(ref, 13, "aarch64", index=host.simple, releases=host.release_api)
    result = nightly(
        watched,
        tmp_path / "wheelhouse",
        build=build,
        history_path=tmp_path / "history.jsonl",
        clock=Clock(),
        timeout=5,
        policy=FAST,
        say=lines.append,
        **kw,  # type: ignore[arg-type]
    )
    return result, lines


def test_a_release_whose_official_wheel_is_not_published_is_rebuilt_saying_which_wheel(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    build = FakeBuild(tmp_path)
    result, lines = _official_night(official_host, tmp_path, build)
    assert (result.outcome, build.calls) == (Outcome.REBUILT, 1)
    assert "no vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl with a sha256 in the v0.15.0 release" in (
        "\n".join(lines)
    )


def test_an_index_wheel_that_does_not_match_its_published_sha256_fails_the_night_and_mirrors_nothing(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    name = "vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    (tmp_path / name).write_bytes(b"not the published bytes")
    official_host.publish_on_index(tmp_path / name, published_sha256="0" * 64)
    build = FakeBuild(tmp_path)
    result, _ = _official_night(official_host, tmp_path, build, ref="v0.22.0")
    assert result.outcome is Outcome.FAILED and "sha256 mismatch" in result.message
    assert build.calls == 0
    assert not (tmp_path / "wheelhouse" / name).exists()


def test_an_unreachable_official_host_fails_the_night_without_a_rebuild(tmp_path: Path) -> None:
    """Silence from the host says nothing about the wheel: it must not cost a 30-minute build."""
    closed = OfficialHost(url="http://127.0.0.1:9")  # discard port: nothing listens
    build = FakeBuild(tmp_path)
    result, _ = _official_night(closed, tmp_path, build)
    assert (result.outcome, build.calls) == (Outcome.FAILED, 0)
    assert "failed after 3 attempts" in result.message, result.message


# --------------------------------------------------------------------------------------------
# The official wheel is judged before the wheelhouse's index lists it. `Judge` stands in for the
# proof `--prefer-wheel` runs (the real one, on real wheels, in test_nightly_e2e.py).


@dataclass
class Judge:
    refusal: str | None = None
    error: Exception | None = None
    judged: list[Path] = field(default_factory=list)

    def __call__(self, wheel: Path) -> str | None:
        self.judged.append(wheel)
        if self.error is not None:
            raise self.error
        return self.refusal


OFFICIAL = "vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl"


def _publish_official(host: OfficialHost, tmp_path: Path) -> Path:
    wheel = tmp_path / "upstream" / OFFICIAL
    wheel.parent.mkdir()
    wheel.write_bytes(b"the official wheel")
    host.publish_on_index(wheel)
    return wheel


def test_an_official_wheel_the_proof_refuses_is_not_mirrored_and_the_night_rebuilds_saying_why(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    _publish_official(official_host, tmp_path)
    build, judge = FakeBuild(tmp_path), Judge("failed validation: vllm/_C.abi3.so cannot run on 12.1")
    staging = tmp_path / "wheelhouse" / ".official"
    result, lines = _official_night(official_host, tmp_path, build, "v0.22.0", judge=judge, staging=staging)
    assert (result.outcome, result.exit_code, build.calls) == (Outcome.REBUILT, 11, 1)
    assert judge.judged == [staging / OFFICIAL], "judged where no index lists it"
    assert not (tmp_path / "wheelhouse" / OFFICIAL).exists()
    assert f"nightly: rebuilding from source (the official {OFFICIAL} is not mirrored: failed validation" in lines[-1]
    assert read_history(tmp_path / "history.jsonl")[-1]["refused"] == judge.refusal

    staged = (staging / OFFICIAL).stat().st_mtime_ns
    again, _ = _official_night(official_host, tmp_path, build, "v0.22.0", judge=judge, staging=staging)
    assert again.outcome is Outcome.REBUILT and len(judge.judged) == 2
    assert (staging / OFFICIAL).stat().st_mtime_ns == staged, "the next night judges the copy it has"


def test_an_official_wheel_the_proof_takes_is_mirrored_with_its_sha256(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    wheel = _publish_official(official_host, tmp_path)
    build, judge = FakeBuild(tmp_path), Judge()
    staging = tmp_path / "wheelhouse" / ".official"
    result, _ = _official_night(official_host, tmp_path, build, "v0.22.0", judge=judge, staging=staging)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (result.outcome, result.exit_code, build.calls, result.sha256) == (Outcome.MIRRORED, 10, 0, sha)
    assert result.message.endswith(", validated here)")
    mirrored = tmp_path / "wheelhouse" / OFFICIAL
    assert mirrored.read_bytes() == wheel.read_bytes() and read_sidecar(mirrored) == sha


def test_a_host_problem_while_judging_fails_the_night_without_a_rebuild_or_a_mirror(
    official_host: OfficialHost, tmp_path: Path
) -> None:
    _publish_official(official_host, tmp_path)
    build = FakeBuild(tmp_path)
    judge = Judge(error=HostProblem("validating the wheel could not finish: cannot run cuobjdump"))
    staging = tmp_path / "wheelhouse" / ".official"
    result, _ = _official_night(official_host, tmp_path, build, "v0.22.0", judge=judge, staging=staging)
    assert (result.outcome, result.exit_code, build.calls) == (Outcome.FAILED, 1, 0)
    assert result.message.startswith("a host problem, no verdict on the wheel and nothing rebuilt: validating")
    assert not (tmp_path / "wheelhouse" / OFFICIAL).exists()
