"""`invoke nightly` as cron would run it: against loopback stand-ins for the vLLM wheel server, and
for PyPI and GitHub where vLLM publishes its official wheels (`tests/servers.py`)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import platform
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from spark_build.lock import WorkdirLock
from tests.conftest import ROOT, Build, published_wheel
from tests.integration import test_prebuilt
from tests.integration.test_bad_input import assert_refused
from tests.integration.test_prebuilt import Extensions, vllm_wheel
from tests.servers import OfficialHost

PINNED = "vllm-0.13.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"
extensions = test_prebuilt.extensions  # nvcc-built extension modules for real official-looking wheels


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
    return nightly_of(build, "--url", url, *extra)


def nightly_of(build: Build, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`invoke nightly` with the build's options from SPARK_BUILD_* variables, as the timer runs it."""
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "nightly", *options]
    argv += ["--workdir", str(build.workdir), "--logs-dir", str(build.workdir / "logs")]
    return subprocess.run(argv, capture_output=True, text=True, env={**build.env(), **(env or {})}, timeout=900)


def judged_night(
    build: Build, host: OfficialHost, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A night of vLLM's official wheel (not the example's), judged with the stand-in for PyPI as
    the torch index (the wheels require no torch) and no serve check."""
    places = ["--wheel-releases", host.release_api, "--wheel-index", host.simple, "--torch-index", host.simple]
    vllm = {"SPARK_BUILD_EXAMPLE": "false", "SPARK_BUILD_NO_SERVE": "true", **(env or {})}
    return nightly_of(build, *places, "--torch-cuda", "13", *options, env=vllm)


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


# --------------------------------------------------------------------------------------------
# Without --url: vLLM's official wheel of the configured release, found as --prefer-wheel finds it


def test_without_url_the_official_wheel_of_the_configured_release_is_mirrored_then_reported_present(
    make_build, official_host: OfficialHost, extensions: Extensions, tmp_path
):
    """--ref v0.13.0 for CUDA 13: a `+cu130` GitHub release asset; its digest is the sha256 checked,
    and it is proven for the configured arch (from invoke.yaml or SPARK_BUILD_ARCH) before it is mirrored."""
    name = f"vllm-0.13.0+cu130-cp38-abi3-manylinux_2_35_{platform.machine()}.whl"
    wheel = vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3)
    official_host.releases["v0.13.0"] = [(name, official_host.add(wheel))]
    build = make_build()
    release = {"SPARK_BUILD_REF": "v0.13.0", "SPARK_BUILD_ARCH": "12.1a"}
    first = judged_night(build, official_host, env=release)
    second = judged_night(build, official_host, env=release)
    assert first.returncode == 10, first.stdout + first.stderr
    assert second.returncode == 0 and "nightly: present" in second.stdout, second.stdout + second.stderr
    assert (build.workdir / "wheelhouse" / "vllm" / name).read_bytes() == wheel.read_bytes()
    nights = history(build)
    assert [h["outcome"] for h in nights] == ["mirrored", "present"]
    assert nights[0]["url"] == f"{official_host.url}/files/{name.replace('+', '%2B')}"
    assert nights[0]["http"] == "listed with its sha256 in the GitHub release assets"


def test_without_url_a_release_with_no_official_wheel_is_rebuilt_from_source(baseline, official_host: OfficialHost):
    """The example's v0.2.0 has no official wheel: the night rebuilds (resuming the finished build)."""
    places = ["--wheel-releases", official_host.release_api, "--wheel-index", official_host.simple]
    result = nightly_of(baseline, *places)
    assert result.returncode == 11, result.stdout + result.stderr
    assert "is gone: vLLM publishes no CPU wheel (--torch-cuda cpu)" in result.stdout
    assert history(baseline)[-1]["wheel"] == str(published_wheel(baseline))


def test_a_wheel_index_that_is_no_url_is_refused_before_the_nightly_writes_anything(make_build, tmp_path):
    build = make_build()
    result = nightly_of(build, "--wheel-index", str(tmp_path / "simple"))
    assert_refused(result, "--wheel-index", "not an http(s) URL")
    assert not (build.workdir / "logs").exists()


# --------------------------------------------------------------------------------------------
# --ref and --arch on the command line: the official wheel is proven for --arch before it is mirrored


def test_the_nightly_takes_ref_and_arch_and_mirrors_an_official_wheel_that_proves_itself_for_that_arch(
    make_build, official_host: OfficialHost, extensions: Extensions, tmp_path
):
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{platform.machine()}.whl"
    wheel = vllm_wheel(tmp_path / "up", name, extensions.spark_c, extensions.fa3)
    official_host.publish_on_index(wheel)
    build = make_build()
    night = judged_night(build, official_host, "--ref", "v0.22.0", "--arch", "12.1a")
    assert night.returncode == 10, night.stdout + night.stderr
    assert f"prebuilt: validating {name} in a fresh venv" in night.stdout
    assert (build.workdir / "wheelhouse" / "vllm" / name).read_bytes() == wheel.read_bytes()
    assert name in (build.workdir / "wheelhouse" / "vllm" / "index.html").read_text()
    assert history(build)[-1]["message"].endswith(", validated here)")


def test_the_nightly_does_not_mirror_an_official_wheel_refused_for_the_arch_and_says_why(
    make_build, official_host: OfficialHost, extensions: Extensions, tmp_path
):
    """Built for an RTX 50xx only (sm_120a): a 12.1 cannot run it. The night says why it is not
    mirrored and rebuilds from source; the example repository has no v0.22.0, so that fails (1)."""
    name = f"vllm-0.22.0-cp38-abi3-manylinux_2_28_{platform.machine()}.whl"
    official_host.publish_on_index(vllm_wheel(tmp_path / "up", name, extensions.rtx_c, extensions.fa3))
    build = make_build()
    night = judged_night(build, official_host, "--ref", "v0.22.0", "--arch", "12.1a")
    said = f"nightly: rebuilding from source (the official {name} is not mirrored: failed validation: "
    assert said in night.stdout and "kernel family _C cannot run on 12.1" in night.stdout, night.stdout + night.stderr
    assert not (build.workdir / "wheelhouse" / "vllm" / name).exists()
    assert "vllm" not in (build.workdir / "wheelhouse" / "index.html").read_text(), "no index lists it"
    assert "kernel family _C cannot run on 12.1" in history(build)[-1]["refused"]
    last = night.stdout.strip().splitlines()[-2]  # the night's line, before where to look next
    assert last.startswith("nightly: failed — ") and f"because the official {name} was not mirrored: " in last
    assert night.returncode == 1
