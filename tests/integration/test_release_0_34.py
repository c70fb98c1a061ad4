"""vLLM 0.34.0, the release after the newest the patch series was tested on, read from its real
sdist (package index, cached per user by `tests.artifacts`): the recipe reads what it added."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spark_build.upstream.facts import SourceFacts, read_facts
from spark_build.upstream.sdist import unpack_recipe_files
from tests.artifacts import vllm_sdist
from tests.conftest import ROOT


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


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def repo_0_34(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository whose one commit, tagged v0.34.0, holds the 0.34.0 sdist's recipe files."""
    base = tmp_path_factory.mktemp("vllm-0.34-repo")
    tree = unpack_recipe_files(vllm_sdist("0.34.0"), base / "unpacked")
    repo = base / "vllm"
    shutil.copytree(tree, repo)
    (repo / "PKG-INFO").unlink()  # a git checkout has none; its tag says the version
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "vLLM 0.34.0")
    _git(repo, "tag", "-a", "v0.34.0", "-m", "v0.34.0")
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
