"""vLLM 0.34.0, the release after the newest the patch series was tested on, read from its real
sdist (package index, cached per user by `tests.artifacts`): the recipe reads what it added."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from spark_build.upstream.facts import SourceFacts, read_facts
from spark_build.upstream.sdist import unpack_recipe_files
from tests.artifacts import vllm_sdist
from tests.conftest import ROOT
from tests.gitrepo import git


@pytest.fixture(scope="module")
def facts_0_34(tmp_path_factory: pytest.TempPathFactory) -> SourceFacts:
    tree = unpack_recipe_files(vllm_sdist("0.34.0"), tmp_path_factory.mktemp("vllm-0.34.0"))
    return read_facts(tree)


def test_0_34_fetches_triton_kernels_from_its_tag_archive_and_no_rocm_pin(facts_0_34: SourceFacts) -> None:
    projects = {p.name: p for p in facts_0_34.projects}
    assert len(projects) == 9 and "qutlass" not in projects
    kernels = projects["triton_kernels"]
    assert (kernels.repository, kernels.revision, kernels.src_dir_env) == (
        "https://github.com/triton-lang/triton.git",
        "v3.5.1",
        "TRITON_KERNELS_SRC_DIR",
    )
    assert all(p.revision and "669b31ac" not in p.revision for p in facts_0_34.projects)


def test_0_34_asks_for_gcc_13_or_newer(facts_0_34: SourceFacts) -> None:
    assert facts_0_34.gcc_minimum == "13"
    assert (facts_0_34.version, facts_0_34.cxx_standard, facts_0_34.cutlass_revision) == ("0.34.0", "20", "v4.7.1")


@pytest.fixture(scope="module")
def repo_0_34(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository whose one commit, tagged v0.34.0, holds the 0.34.0 sdist's recipe files."""
    base = tmp_path_factory.mktemp("vllm-0.34-repo")
    tree = unpack_recipe_files(vllm_sdist("0.34.0"), base / "unpacked")
    repo = base / "vllm"
    shutil.copytree(tree, repo)
    (repo / "PKG-INFO").unlink()  # a git checkout has none; its tag says the version
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "vLLM 0.34.0")
    git(repo, "tag", "-a", "v0.34.0", "-m", "v0.34.0")
    return repo


def test_dry_run_of_v0_34_0_applies_the_fa3_patch_beyond_its_tested_range(repo_0_34: Path, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-vllm", "--dry-run", "--ref", "v0.34.0",
        "--repo", str(repo_0_34), "--arch", "12.1a", "--workdir", str(tmp_path / "work"),
        "--logs-dir", str(tmp_path / "logs"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\n", " ")  # the console wraps long lines
    assert "host compiler: GCC >= 13 (v0.34.0's CMakeLists.txt stops the configure below it)" in out
    assert "patches (vllm/series, for vllm 0.34.0):" in out
    assert (
        "0006-build-fa3-only-for-9.x-archs-0.17.patch (releases >=0.17.0,<0.34.0): applied beyond its tested range "
        "(tested up to 0.33.x) — applies cleanly to setup.py of v0.34.0"
    ) in out
    assert "0002-" not in out and "qutlass-12.0f" not in out  # ranges that end for good stay ended
    assert "external projects the sources step fetches (9;" in out
    assert "triton_kernels v3.5.1 from https://github.com/triton-lang/triton.git" in out


def test_doctor_judges_this_hosts_gcc_against_the_gcc_the_workdirs_0_34_source_requires(tmp_path: Path) -> None:
    """This machine's `c++` is Debian 12's GCC 12; vLLM 0.34.0's configure stops below GCC 13."""
    tree = unpack_recipe_files(vllm_sdist("0.34.0"), tmp_path / "unpacked")
    shutil.copytree(tree, tmp_path / "work" / "src")  # where the clone step puts the source
    command = [
        sys.executable, "-m", "invoke", "--search-root", str(ROOT), "doctor", "--workdir", str(tmp_path / "work"),
        "--arch", "12.1a", "--example", "--json",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    compiler = next(c for c in json.loads(result.stdout)["checks"] if c["check"] == "host compiler")
    found = subprocess.run(["c++", "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    if int(found.split(".")[0]) >= 13:
        assert compiler["severity"] == "ok", compiler
        return
    assert result.returncode == 1
    assert compiler["severity"] == "error"
    assert compiler["value"] == f"GNU {found} (c++); the source needs GCC >= 13 (the source's CMakeLists.txt)"
    assert compiler["fix"].startswith("install g++-13 and build with CC=gcc-13 CXX=g++-13")


@pytest.fixture
def sdist_index(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 page on 127.0.0.1 with the real 0.33.0 and 0.34.0 sdists and their sha256, no wheel."""
    page = tmp_path / "index" / "simple" / "vllm"
    page.mkdir(parents=True)
    links = []
    for sdist in (vllm_sdist("0.33.0"), vllm_sdist("0.34.0")):
        (page / sdist.name).symlink_to(sdist)
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        links.append(f'<a href="{sdist.name}#sha256={digest}">{sdist.name}</a>')
    (page / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def test_the_release_watch_lists_0_34_0_its_recipe_and_the_fa3_gate_beyond_its_range(
    sdist_index: str, tmp_path: Path
) -> None:
    """`invoke recipe --check-new` over an index holding 0.33.0 (tested) and 0.34.0 (not): only
    0.34.0 is listed, read from its sdist; the index has no wheel, so there is nothing to audit."""
    command = [
        sys.executable, "-m", "invoke", "--search-root", str(ROOT), "recipe", "--check-new", "--arch", "12.1a",
        "--wheel-index", sdist_index,
    ]  # fmt: skip
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.replace("\n", " ")
    assert f"release watch: 1 release(s) on {sdist_index} newer than the series was tested on (0.34.0)" in out
    assert (
        "patch 0006-build-fa3-only-for-9.x-archs-0.17.patch: applied beyond its tested range (tested up to 0.33.x) "
        "— applies cleanly"
    ) in out
    assert "patch 0001-" not in out and "0.33.0:" not in out
    assert f"official wheel for 12.1a: -: no vllm-0.34.0-cp38-abi3-manylinux_2_28_{platform.machine()}.whl" in out
    assert "triton_kernels" in out and "GCC >= 13" in out
    assert (tmp_path / "cache" / "spark-build" / "releases" / "vllm-0.34.0.tar.gz.sha256").is_file()
