"""`--pr` and `--patch` as the config reads them (bad input stops before anything is written),
and which changes need no compile."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from spark_build import config
from spark_build.config import PullRequest, parse_pr
from spark_build.errors import UsageError
from spark_build.wheel.relabel import labelled
from spark_build.wheel.repatch import changed_files, python_only


@pytest.mark.parametrize(
    ("text", "pr"),
    [
        ("12345", PullRequest(12345)),
        (
            "https://github.com/vllm-project/vllm/pull/12345",
            PullRequest(12345, "https://github.com/vllm-project/vllm.git"),
        ),
        ("https://github.com/someone/vllm-fork/pull/7/", PullRequest(7, "https://github.com/someone/vllm-fork.git")),
    ],
    ids=["number", "url", "fork-url"],
)
def test_a_pr_is_a_number_or_a_github_pull_request_url(text: str, pr: PullRequest) -> None:
    assert parse_pr(text) == pr


@pytest.mark.parametrize("text", ["0", "#123", "https://github.com/vllm-project/vllm/issues/5", "pull/5"])
def test_anything_else_is_bad_input_that_shows_both_forms(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_pr(text)
    assert err.value.exit_code == 2 and "--pr 12345" in (err.value.hint or "")


def test_prs_and_patches_come_from_every_layer_and_a_missing_patch_file_is_bad_input(tmp_path: Path) -> None:
    patch = tmp_path / "fix.patch"
    patch.write_text("")
    cfg = config.resolve({"prs": ["123"], "patch_files": ["fix.patch"]}, None, {}, cwd=tmp_path)
    assert (cfg.prs, cfg.patch_files) == ((PullRequest(123),), (patch,))
    from_env = config.resolve({}, None, {"SPARK_BUILD_PRS": "123, 456"}, cwd=tmp_path)
    assert from_env.prs == (PullRequest(123), PullRequest(456))
    from_file = config.resolve({}, {"prs": [123]}, {}, cwd=tmp_path)
    assert from_file.prs == (PullRequest(123),)
    with pytest.raises(UsageError, match="--patch gone.patch: no such file"):
        config.resolve({"patch_files": ["gone.patch"]}, None, {}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("files", "only"),
    [
        (["vllm/model_executor/models/llama.py", "tests/test_llama.py"], True),
        (["vllm/model_executor/models/llama.py", "csrc/moe/topk.cu"], False),
        (["CMakeLists.txt"], False),
        (["setup.py"], False),  # Python, but the native build's
        (["cmake/hipify.py"], False),
        ([], False),
    ],
    ids=["python", "with-cuda", "cmake", "setup-py", "cmake-python", "nothing"],
)
def test_a_change_needs_no_compile_only_when_it_touches_the_package_s_python_alone(
    files: list[str], only: bool
) -> None:
    assert python_only(files) is only


def test_the_files_of_a_patch_are_read_from_its_headers_deleted_ones_included(tmp_path: Path) -> None:
    patch = tmp_path / "x.patch"
    patch.write_text(
        "diff --git a/vllm/a.py b/vllm/a.py\n--- a/vllm/a.py\n+++ b/vllm/a.py\n@@ -1 +1 @@\n-a\n+b\n"
        "diff --git a/old.py b/old.py\ndeleted file mode 100644\n--- a/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    )
    assert changed_files(patch) == ("vllm/a.py", "old.py"), "a deleted file is a change too"


@pytest.mark.parametrize(
    ("version", "label", "result"),
    [("0.15.0+cu130", "pr7", "0.15.0+cu130.pr7"), ("0.22.0", "pr7.patch1a2b", "0.22.0+pr7.patch1a2b")],
)
def test_the_local_version_gains_the_change_s_label(version: str, label: str, result: str) -> None:
    assert labelled(Version(version), label) == Version(result)


def test_a_local_version_label_that_pip_would_refuse_is_bad_input() -> None:
    with pytest.raises(UsageError, match="not letters and digits"):
        labelled(Version("0.15.0"), "pr-7")
