"""`python -m tests.make_mirror`, the script an air-gapped lab runs to make the test mirror folder.

GitHub cannot be reached here, so its upstreams are local stand-ins: a `file://` clone of the
qutlass bundle (the same objects GitHub serves, fetched by commit id as from GitHub), and a small
repository shaped like CUTLASS for the header archives.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import git
import pytest

from spark_build.durable import sha256_of
from spark_build.upstream.sources import fetch_sources
from spark_build.upstream.versions import ExternalProject
from tests.artifacts import GIT_BUNDLES, HeadersArchive, archive_commit, bundle_heads, git_bundle
from tests.conftest import ROOT
from tests.make_mirror import make_headers_archive
from tests.unit.test_sources import QUTLASS


def test_the_bundle_it_makes_holds_every_pinned_commit_and_the_fetch_checks_each_out(tmp_path: Path) -> None:
    upstream = tmp_path / "qutlass.git"
    git.Repo.clone_from(str(git_bundle("qutlass")), upstream, mirror=True)
    mirror = tmp_path / "mirror"
    argv = [sys.executable, "-m", "tests.make_mirror", str(mirror), "--only", "qutlass.bundle",
            "--upstream", f"qutlass=file://{upstream}"]  # fmt: skip
    made = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    bundle = mirror / "qutlass.bundle"
    assert (mirror / "SHA256SUMS").read_text() == f"{sha256_of(bundle)}  qutlass.bundle\n"
    pins = GIT_BUNDLES["qutlass"].pins
    assert bundle_heads(bundle) == {f"refs/heads/{branch}": commit for branch, commit in pins.items()}
    for commit in pins.values():
        project = ExternalProject("qutlass", QUTLASS.repository, commit, "QUTLASS_SRC_DIR", "qutlass.cmake")
        fetched = fetch_sources([project], tmp_path / "cache", mirrors={"qutlass": str(bundle)}, offline=True)
        assert fetched.projects[0].commit == commit


def test_an_unknown_artifact_or_upstream_is_bad_input_naming_the_choices(tmp_path: Path) -> None:
    for extra in (["--only", "cutlass.bundle"], ["--upstream", "triton=file:///x"]):
        argv = [sys.executable, "-m", "tests.make_mirror", str(tmp_path / "mirror"), *extra]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "qutlass" in result.stderr.splitlines()[-1]
        assert not (tmp_path / "mirror").exists()


def _cutlass_like(root: Path) -> tuple[str, str]:
    """A repository with CUTLASS's layout, tagged v9.9.9, and a commit after the tag."""
    repo = git.Repo.init(root, initial_branch="main")
    for rel in ("include/cutlass/cutlass.h", "tools/util/include/cutlass/util/helper.h", "docs/index.md"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"// {rel}\n")
    repo.git.add("-A")
    tagged = repo.index.commit("v9.9.9").hexsha
    repo.create_tag("v9.9.9")
    (root / "include" / "cutlass" / "later.h").write_text("// after the tag\n")
    repo.git.add("-A")
    return tagged, repo.index.commit("later").hexsha


def test_a_headers_archive_holds_the_named_folders_at_the_pin_and_records_its_commit(tmp_path: Path) -> None:
    tagged, _later = _cutlass_like(tmp_path / "cutlass")
    pin = HeadersArchive(
        "cutlass-v9.9.9-headers.tar.gz", "cutlass", "", "v9.9.9", tagged, ("include", "tools/util/include")
    )
    made = make_headers_archive(pin, f"file://{tmp_path / 'cutlass'}", tmp_path / "mirror" / pin.filename)
    with tarfile.open(made) as tar:
        files = sorted(member.name for member in tar.getmembers() if member.isfile())
    assert files == ["include/cutlass/cutlass.h", "tools/util/include/cutlass/util/helper.h"]
    assert archive_commit(made) == tagged  # what tests/artifacts.py checks a mirror's archive by


def test_a_headers_archive_whose_revision_is_not_the_pinned_commit_is_not_made(tmp_path: Path) -> None:
    tagged, later = _cutlass_like(tmp_path / "cutlass")
    pin = HeadersArchive("cutlass-main-headers.tar.gz", "cutlass", "", "main", tagged, ("include",))
    with pytest.raises(subprocess.CalledProcessError) as caught:
        make_headers_archive(pin, f"file://{tmp_path / 'cutlass'}", tmp_path / "mirror" / pin.filename)
    assert f"main is {later}" in caught.value.stderr and f"not the pinned {tagged}" in caught.value.stderr
    assert list((tmp_path / "mirror").iterdir()) == []
