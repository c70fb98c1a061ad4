"""`invoke nightly` as cron would run it: against a loopback stand-in for the vLLM wheel server."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from spark_build.lock import WorkdirLock
from tests.conftest import ROOT, Build, published_wheel

PINNED = "vllm-0.13.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def wheel_server(folder: Path) -> Iterator[str]:
    """Serves `folder` on 127.0.0.1 (a missing file answers 404, as a vanished nightly does)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def nightly(build: Build, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "invoke",
        "--search-root",
        str(ROOT),
        "nightly",
        "--url",
        url,
        "--workdir",
        str(build.workdir),
        "--logs-dir",
        str(build.workdir / "logs"),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=build.env(), timeout=900)


def history(build: Build) -> list[dict]:
    lines = (build.workdir / "logs" / "nightly-history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_present_wheel_is_mirrored_once_then_reported_present(make_build, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    # Stand-in bytes for the real aarch64 wheel (unreachable here); only its name and bytes matter.
    (served / PINNED).write_bytes(b"PK\x05\x06" + b"\0" * 18)
    build = make_build()
    with wheel_server(served) as base:
        first = nightly(build, base + PINNED)
        second = nightly(build, base + PINNED)
    assert first.returncode == 10, first.stdout + first.stderr
    assert "nightly: mirrored" in first.stdout
    assert second.returncode == 0 and "nightly: present" in second.stdout
    assert (build.workdir / "wheelhouse" / "vllm" / PINNED).read_bytes() == (served / PINNED).read_bytes()
    assert PINNED in (build.workdir / "wheelhouse" / "vllm" / "index.html").read_text()
    assert [h["outcome"] for h in history(build)] == ["mirrored", "present"]


def test_a_vanished_wheel_is_rebuilt_from_source_resuming_the_finished_build(baseline, tmp_path):
    with wheel_server(tmp_path) as base:
        result = nightly(baseline, base + PINNED)
    assert result.returncode == 11, result.stdout + result.stderr
    assert "nightly: rebuilt" in result.stdout
    steps = {s["name"]: s["status"] for s in baseline.summary()["steps"]}
    assert steps["compile"] == "skipped", "the finished build of the same inputs is reused"
    assert history(baseline)[-1]["wheel"] == str(published_wheel(baseline))


def test_the_nightly_skips_with_exit_75_while_another_build_holds_the_workdir(make_build, tmp_path):
    build = make_build()
    with WorkdirLock(build.workdir).held(), wheel_server(tmp_path) as base:
        result = nightly(build, base + PINNED, "--lock-wait", "1")
    assert result.returncode == 75, result.stdout + result.stderr
    assert history(build)[-1]["outcome"] == "skipped-locked"
