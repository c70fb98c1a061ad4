"""Bad input, as a table: every row is refused by `config.resolve` — before any step, venv or
state file is touched — with exit 2, a message naming the option, and a fix.

`{file}` in a value stands for a regular file, `{missing}` for a path that does not exist.
The same inputs against a finished build, through the real command: tests/integration/test_bad_input.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spark_build import config
from spark_build.errors import UsageError

# (id, command-line options, invoke.yaml section, SPARK_BUILD_* environment, words the message holds)
REFUSED: list[tuple[str, dict[str, Any], Any, dict[str, str], str]] = [
    ("torch-index-missing-folder", {"torch_index": "{missing}"}, {}, {}, "--torch-index"),
    ("torch-index-is-a-file", {"torch_index": "{file}"}, {}, {}, "is not a folder"),
    ("torch-index-file-url-missing", {"torch_index": "file://{missing}"}, {}, {}, "is not a folder"),
    ("torch-index-ftp-scheme", {"torch_index": "ftp://mirror/whl"}, {}, {}, "'ftp' URL"),
    ("torch-index-from-yaml", {}, {"torch_index": "{missing}"}, {}, "--torch-index"),
    ("torch-index-from-env", {}, {}, {"SPARK_BUILD_TORCH_INDEX": "s3://bucket/whl"}, "'s3' URL"),
    ("wheelhouse-is-a-file", {"wheelhouse": "{file}"}, {}, {}, "--wheelhouse"),
    ("wheelhouse-under-a-file", {"wheelhouse": "{file}/wh"}, {}, {}, "is a file, not a folder"),
    ("workdir-is-a-file", {"workdir": "{file}"}, {}, {}, "--workdir"),
    ("logs-dir-is-a-file", {"logs_dir": "{file}"}, {}, {}, "--logs-dir"),
    ("cache-dir-is-a-file", {"cache_dir": "{file}"}, {}, {}, "--cache-dir"),
    ("uv-cache-dir-under-a-file", {"uv_cache_dir": "{file}/uv"}, {}, {}, "--uv-cache-dir"),
    ("wheels-missing", {"wheels": "{missing}"}, {}, {}, "--wheels"),
    ("serve-model-missing-path", {"serve_model": "{missing}"}, {}, {}, "--serve-model"),
    ("serve-model-folder-without-config", {"serve_model": "{folder}"}, {}, {}, "no config.json"),
    ("repo-missing-path", {"repo": "{missing}"}, {}, {}, "--repo"),
    ("repo-folder-not-git", {"repo": "{folder}"}, {}, {}, "is not a git repository or bundle"),
    ("repo-file-not-a-bundle", {"repo": "{file}"}, {}, {}, "is not a git repository or bundle"),
    ("python-missing", {"python": "{missing}"}, {}, {}, "--python"),
    ("python-not-executable", {"python": "{file}"}, {}, {}, "--python"),
    ("yaml-section-is-a-list", {}, [1, 2], {}, "spark_build section"),
    ("yaml-section-is-text", {}, "torch", {}, "spark_build section"),
    ("yaml-torch-packages-number", {}, {"torch_packages": 5}, {}, "torch_packages"),
    ("yaml-torch-packages-list-of-numbers", {}, {"torch_packages": [1, 2]}, {}, "torch_packages"),
    ("yaml-jobs-list", {}, {"jobs": [4]}, {}, "jobs in invoke.yaml"),
    ("yaml-ref-mapping", {}, {"ref": {"tag": "v1"}}, {}, "ref in invoke.yaml"),
    ("yaml-source-mirrors-number", {}, {"source_mirrors": 3}, {}, "source_mirrors"),
    ("yaml-unknown-key", {}, {"torch_indx": "x"}, {}, "torch_indx"),
    ("env-unknown-key", {}, {}, {"SPARK_BUILD_JOBZ": "4"}, "jobz"),
    ("jobs-zero", {"jobs": "0"}, {}, {}, "--jobs"),
    ("nvcc-threads-word", {"nvcc_threads": "many"}, {}, {}, "--nvcc-threads"),
    ("mem-budget-without-unit", {"mem_budget": "64"}, {}, {}, "64"),
    ("mem-reserve-word", {"mem_reserve": "lots"}, {}, {}, "--mem-reserve"),
    ("cache-size-without-unit", {"cache_size": "20"}, {}, {}, "20"),
    ("cache-unknown-mode", {"cache": "memcached://x"}, {}, {}, "memcached"),
    ("torch-cuda-word", {"torch_cuda": "twelve"}, {}, {}, "--torch-cuda"),
    ("torch-source-unknown", {"torch": "system"}, {}, {}, "--torch"),
    ("ninja-unknown", {"ninja": "fast"}, {}, {}, "--ninja"),
    ("torch-packages-empty", {"torch_packages": " "}, {}, {}, "--torch-packages"),
    ("build-type-unknown", {}, {"build_type": "Fast"}, {}, "Fast"),
    ("ref-blank", {"ref": "  "}, {}, {}, "--ref"),
    ("boolean-maybe", {}, {"offline": "maybe"}, {}, "offline"),
    ("dist-without-token", {"dist": "http://scheduler:10600"}, {}, {}, "--dist"),
]


def _fill(value: Any, places: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**places)
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("cli", "file", "env", "words"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_bad_input_is_refused_before_anything_runs_with_the_option_and_a_fix(tmp_path: Path, cli, file, env, words):
    regular = tmp_path / "a-file"
    regular.write_text("not a folder")
    (tmp_path / "empty-folder").mkdir()
    places = {"file": str(regular), "missing": str(tmp_path / "missing"), "folder": str(tmp_path / "empty-folder")}
    with pytest.raises(UsageError) as caught:
        config.resolve(_fill(cli, places), _fill(file, places), _fill(env, places), cwd=tmp_path)
    assert caught.value.exit_code == 2
    assert words in caught.value.message, caught.value.message
    assert caught.value.hint, "a refusal says how to fix it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty-folder"], "nothing was created"


@pytest.mark.parametrize(
    ("file", "packages"),
    [
        ({"torch_packages": "torch==2.9.0 torchvision"}, ("torch==2.9.0", "torchvision")),
        ({"torch_packages": ["torch"]}, ("torch",)),
    ],
    ids=["text", "list"],
)
def test_invoke_yaml_gives_torch_packages_as_text_or_a_list(tmp_path: Path, file, packages):
    assert config.resolve({}, file, {}, cwd=tmp_path).torch_packages == packages


def test_a_model_folder_and_a_hugging_face_name_are_both_accepted_for_the_serve_check(tmp_path: Path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert config.resolve({"serve_model": "./model"}, {}, {}, cwd=tmp_path).serve_model == str(tmp_path / "model")
    assert config.resolve({"serve_model": "Qwen/Qwen2.5-0.5B-Instruct"}, {}, {}, cwd=tmp_path).serve_model


def test_a_local_torch_index_folder_becomes_absolute_and_urls_stay_as_given(tmp_path: Path):
    (tmp_path / "wheels").mkdir()
    assert config.resolve({"torch_index": "wheels"}, {}, {}, cwd=tmp_path).torch_index == str(tmp_path / "wheels")
    url = f"file://{tmp_path / 'wheels'}"
    assert config.resolve({"torch_index": url}, {}, {}, cwd=tmp_path).torch_index == url


@pytest.mark.parametrize("kind", ["work-tree", "bare", "bundle"])
def test_a_local_repo_may_be_a_clone_a_bare_repository_or_a_bundle(tmp_path: Path, kind: str):
    source = tmp_path / "source"
    if kind == "work-tree":
        (source / ".git").mkdir(parents=True)
    elif kind == "bare":
        (source / "objects").mkdir(parents=True)
        (source / "HEAD").write_text("ref: refs/heads/main\n")
    else:
        source.write_bytes(b"# v2 git bundle\n")
    assert config.resolve({"repo": str(source)}, {}, {}, cwd=tmp_path).repo == str(source)
