"""tests/artifacts.py against a real HTTP index on 127.0.0.1 (PEP 691 JSON, as the package index
answers): a source distribution downloaded once, checked by the sha256 the index publishes,
reused from the cache; and what a test is told when it cannot be had."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import artifacts

SDIST = b"a stand-in for vllm-9.9.9.tar.gz: a release tests/artifacts.py pins no sha256 for\n"


@dataclass
class Index:
    url: str
    published_sha256: str
    downloads: list[str] = field(default_factory=list)


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    """An index that lists vllm-9.9.9.tar.gz and serves it; the cache and the mirror variable
    point at this test's own folders."""
    state = Index("", hashlib.sha256(SDIST).hexdigest())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/simple/vllm/":
                entry = {"filename": "vllm-9.9.9.tar.gz", "url": "/files/vllm-9.9.9.tar.gz"}
                body = json.dumps({"files": [{**entry, "hashes": {"sha256": state.published_sha256}}]}).encode()
                kind = artifacts.SIMPLE_JSON
            elif self.path == "/files/vllm-9.9.9.tar.gz":
                state.downloads.append(self.path)
                body, kind = SDIST, "application/gzip"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    monkeypatch.setenv("PIP_INDEX_URL", state.url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(artifacts.MIRROR_VARIABLE, raising=False)
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


# `__wrapped__`: the session's memo of each answer is left alone; these ask afresh.
find_vllm_sdist = artifacts.find_vllm_sdist.__wrapped__


def test_an_sdist_is_downloaded_once_into_the_cache_checked_by_the_sha256_the_index_publishes(
    index: Index, tmp_path: Path
) -> None:
    first = find_vllm_sdist("9.9.9")
    assert first == tmp_path / "cache" / "spark-build-tests" / "sdists" / "vllm-9.9.9.tar.gz"
    assert first.read_bytes() == SDIST
    again = find_vllm_sdist("9.9.9")
    assert again == first and index.downloads == ["/files/vllm-9.9.9.tar.gz"]


def test_an_sdist_that_is_not_what_the_index_publishes_fails_the_test_and_is_not_cached(
    index: Index, tmp_path: Path
) -> None:
    index.published_sha256 = "0" * 64
    found = find_vllm_sdist("9.9.9")
    assert isinstance(found, artifacts.Unavailable) and found.wrong
    assert f"not the published {'0' * 64}" in found.reason
    assert list((tmp_path / "cache" / "spark-build-tests" / "sdists").iterdir()) == []


def test_without_the_index_or_a_mirror_the_test_is_skipped_naming_both_ways(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://index.invalid/simple")  # .invalid never resolves
    found = find_vllm_sdist("0.13.0")
    assert isinstance(found, artifacts.Unavailable) and not found.wrong
    assert "vllm-0.13.0.tar.gz could not be had from the package index http://index.invalid/simple" in found.reason
    assert f"{artifacts.MIRROR_VARIABLE} is not set" in found.reason and "python -m tests.make_mirror" in found.reason


def test_without_the_index_a_mirror_folder_s_sdist_is_taken_only_with_the_pinned_sha256(
    index: Index, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "http://index.invalid/simple")
    monkeypatch.setenv(artifacts.MIRROR_VARIABLE, str(tmp_path / "mirror"))
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "vllm-0.13.0.tar.gz").write_bytes(SDIST)
    found = find_vllm_sdist("0.13.0")
    assert isinstance(found, artifacts.Unavailable) and found.wrong
    assert f"is not the pinned vllm-0.13.0.tar.gz (sha256 {artifacts.VLLM_SDIST_SHA256['0.13.0']})" in found.reason
