"""Upstream pull requests and local patches on top of the ref, with real git: a local repository
stands in for GitHub (it publishes `refs/pull/N/head` as GitHub does), the build's checkout is a
shallow clone of a tag, as the clone step makes it.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from spark_build import config
from spark_build.build import build
from spark_build.config import PullRequest
from spark_build.errors import StepFailed
from spark_build.pipeline import state
from spark_build.steps.changes import apply_change, fetch_pr
from spark_build.upstream.example import make_example_upstream
from spark_build.wheel.repatch import python_only
from tests.conftest import CPU_TORCH

MODEL = "".join(f"line {n}\n" for n in range(1, 21))


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def pull_request(repo: Path, number: int, base: str, files: dict[str, str]) -> str:
    """A PR branch from `base`, published as GitHub does: refs/pull/N/head."""
    git(repo, "checkout", "-q", "-b", f"pr{number}", base)
    head = commit(repo, files, f"PR {number}")
    git(repo, "update-ref", f"refs/pull/{number}/head", head)
    git(repo, "checkout", "-q", "main")
    return head


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """main: base → (PR 9 merged with its commit) → (PR 10 squashed) → line 3 reworded → tag v1.0.
    Open PRs forked from base: 7 (Python only), 8 (CUDA source), 11 (rewords line 3 too)."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    base = commit(repo, {"vllm/model.py": MODEL, "csrc/kernel.cu": "// kernel\n", "setup.py": "# setup\n"}, "base")
    pull_request(repo, 7, base, {"vllm/model.py": MODEL.replace("line 10\n", "line 10 fixed\n")})
    pull_request(repo, 8, base, {"csrc/kernel.cu": "// kernel, faster\n"})
    pull_request(repo, 11, base, {"vllm/model.py": MODEL.replace("line 3\n", "line 3 by the PR\n")})
    nine = pull_request(repo, 9, base, {"vllm/nine.py": "nine = 9\n"})
    git(repo, "merge", "-q", "--no-ff", "-m", "merge PR 9", nine)
    pull_request(repo, 10, base, {"vllm/ten.py": "ten = 10\n"})
    commit(repo, {"vllm/ten.py": "ten = 10\n"}, "PR 10 squashed")
    current = (repo / "vllm/model.py").read_text()
    commit(repo, {"vllm/model.py": current.replace("line 3\n", "line 3 on main\n")}, "main rewords line 3")
    git(repo, "tag", "v1.0")
    return repo


@pytest.fixture
def checkout(upstream: Path, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    git(tmp_path, "clone", "-q", "--depth", "1", "--branch", "v1.0", upstream.as_uri(), str(src))
    return src


def runner(argv: Sequence[str | os.PathLike[str]]) -> int:
    return subprocess.run([str(a) for a in argv], capture_output=True).returncode


def test_a_python_only_pr_is_fetched_against_its_merge_base_applied_and_named_python_only(
    upstream: Path, checkout: Path, tmp_path: Path
) -> None:
    fetched = fetch_pr(checkout, PullRequest(7), upstream.as_uri(), tmp_path / "pr-7.diff", runner)
    assert fetched.head == git(upstream, "rev-parse", "refs/pull/7/head")
    assert fetched.files == ("vllm/model.py",) and python_only(fetched.files)
    assert apply_change(checkout, fetched.diff, "PR #7", runner) is True
    text = (checkout / "vllm/model.py").read_text()
    assert "line 10 fixed" in text and "line 3 on main" in text, "the PR on top of the ref, not the ref replaced"
    assert apply_change(checkout, fetched.diff, "PR #7", runner) is False, "applied twice: skipped"


def test_a_pr_touching_cuda_sources_is_native(upstream: Path, checkout: Path, tmp_path: Path) -> None:
    fetched = fetch_pr(checkout, PullRequest(8), upstream.as_uri(), tmp_path / "pr-8.diff", runner)
    assert fetched.files == ("csrc/kernel.cu",) and not python_only(fetched.files)
    assert apply_change(checkout, fetched.diff, "PR #8", runner) is True
    assert (checkout / "csrc/kernel.cu").read_text() == "// kernel, faster\n"


@pytest.mark.parametrize("number", [9, 10], ids=["merged-with-its-commit", "squash-merged"])
def test_a_pr_already_in_the_ref_is_skipped(upstream: Path, checkout: Path, tmp_path: Path, number: int) -> None:
    fetched = fetch_pr(checkout, PullRequest(number), upstream.as_uri(), tmp_path / "pr.diff", runner)
    assert apply_change(checkout, fetched.diff, f"PR #{number}", runner) is False
    assert git(checkout, "status", "--porcelain") == ""


def test_a_conflicting_pr_stops_naming_the_file_and_leaves_the_tree_as_it_was(
    upstream: Path, checkout: Path, tmp_path: Path
) -> None:
    seven = fetch_pr(checkout, PullRequest(7), upstream.as_uri(), tmp_path / "pr-7.diff", runner)
    apply_change(checkout, seven.diff, "PR #7", runner)
    before = (checkout / "vllm/model.py").read_text()
    eleven = fetch_pr(checkout, PullRequest(11), upstream.as_uri(), tmp_path / "pr-11.diff", runner)
    with pytest.raises(StepFailed, match=r"PR #11 does not apply to this ref: conflicts in vllm/model.py"):
        apply_change(checkout, eleven.diff, "PR #11", runner)
    assert (checkout / "vllm/model.py").read_text() == before, "PR 7 kept, no conflict markers left"
    assert "<<<<<<<" not in before


def test_a_local_patch_file_is_applied_like_a_pr(checkout: Path, tmp_path: Path) -> None:
    """Offline, a PR's change comes as a file (here made the way `gh pr diff` would make it)."""
    work = tmp_path / "elsewhere"
    git(tmp_path, "clone", "-q", str(checkout), str(work))
    (work / "vllm/model.py").write_text((work / "vllm/model.py").read_text().replace("line 20\n", "line 20!\n"))
    patch = tmp_path / "gb10.patch"
    patch.write_text(git(work, "diff") + "\n")
    assert apply_change(checkout, patch, patch.name, runner) is True
    assert "line 20!" in (checkout / "vllm/model.py").read_text()


def test_a_pr_the_repository_does_not_have_is_a_failure_that_says_how_to_go_offline(
    upstream: Path, checkout: Path, tmp_path: Path
) -> None:
    with pytest.raises(StepFailed, match=r"cannot fetch PR #404") as err:
        fetch_pr(checkout, PullRequest(404), upstream.as_uri(), tmp_path / "pr.diff", runner)
    assert "--patch" in (err.value.hint or "")


def test_the_build_applies_a_pr_after_the_patch_series_records_its_head_and_a_resume_keeps_it(
    tmp_path: Path, torch_index: str, uv_cache: Path
) -> None:
    """Through the pipeline, on the built-in example (its upstream publishing one PR)."""
    upstream = make_example_upstream(tmp_path / "upstream")
    init = "spark_example/__init__.py"
    text = (upstream / init).read_text()
    head = pull_request(upstream, 3, "v0.2.0", {init: text + "GREETING = 'from PR 3'\n"})
    cli = {"example": True, "repo": str(upstream), "ref": "v0.2.0", "prs": ["3"], "arch": "12.1a"}
    cli |= {"workdir": str(tmp_path / "work"), "logs_dir": str(tmp_path / "logs"), "uv_cache_dir": str(uv_cache)}
    cli |= {"torch_index": torch_index, "torch_packages": CPU_TORCH, "torch_cuda": "cpu"}
    out = io.StringIO()
    build(config.resolve(cli), Console(file=out, width=200), stop_after="changes")
    recorded = state.load(tmp_path / "work" / "state.json")
    assert recorded is not None
    (change,) = recorded.steps["changes"].result["changes"]
    assert (change["label"], change["head"], change["applied"], change["python_only"]) == ("PR #3", head, True, True)
    assert "from PR 3" in (tmp_path / "work" / "src" / init).read_text()
    assert f"changes: PR #3 (head {head[:12]}) applied; Python only" in out.getvalue()
    build(config.resolve({**cli, "resume": True}), Console(file=io.StringIO()), stop_after="changes")
    again = state.load(tmp_path / "work" / "state.json")
    assert again is not None and again.steps["changes"].result == recorded.steps["changes"].result


def test_a_pr_from_an_unrelated_history_is_refused_naming_the_repository_to_check(
    upstream: Path, checkout: Path, tmp_path: Path
) -> None:
    git(upstream, "checkout", "-q", "--orphan", "elsewhere")
    git(upstream, "rm", "-rq", "--cached", ".")
    head = commit(upstream, {"README": "another project\n"}, "unrelated")
    git(upstream, "update-ref", "refs/pull/12/head", head)
    with pytest.raises(StepFailed, match=r"PR #12 shares no history with the checked-out ref") as err:
        fetch_pr(checkout, PullRequest(12), upstream.as_uri(), tmp_path / "pr.diff", runner)
    assert "--repo" in (err.value.hint or "")
