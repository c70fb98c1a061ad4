"""`--ref latest`, `--ref main`, `invoke recipe` and `--dry-run` against a real git repository
whose history holds the recipe files of the real vLLM 0.13.0 and 0.33.0 sdists (from the package
index, tests/artifacts.py), tagged as upstream tags them, with a release candidate and a development commit on top.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spark_build.upstream.patches import find_series
from spark_build.upstream.refs import resolve_ref
from spark_build.upstream.sdist import unpack_recipe_files
from tests.artifacts import vllm_sdist
from tests.gitrepo import git

ROOT = Path(__file__).resolve().parents[2]
RELEASES = ("0.13.0", "0.33.0")


@pytest.fixture(scope="module")
def vllm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """main: 0.13.0 (tag v0.13.0) → 0.33.0 (tag v0.33.0) → a commit tagged v0.34.0rc1."""
    base = tmp_path_factory.mktemp("vllm-history")
    repo = base / "vllm"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for version in RELEASES:
        sdist = vllm_sdist(version)
        for child in repo.iterdir():
            if child.name != ".git":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        tree = unpack_recipe_files(sdist, base / version)
        shutil.copytree(tree, repo, dirs_exist_ok=True)
        (repo / "PKG-INFO").unlink()  # a git checkout has none; its tag says the version
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"vLLM {version}")
        git(repo, "tag", "-a", f"v{version}", "-m", f"v{version}")
    with (repo / "setup.py").open("a") as handle:
        handle.write("# development after 0.33.0\n")
    git(repo, "commit", "-q", "-am", "dev")
    git(repo, "tag", "v0.34.0rc1")
    return repo


def _invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_ref_latest_is_the_newest_release_tag_not_a_release_candidate(vllm_repo: Path) -> None:
    latest = resolve_ref(str(vllm_repo), "latest")
    assert (latest.name, latest.kind, str(latest.version)) == ("v0.33.0", "tag", "0.33.0")
    assert latest.commit == git(vllm_repo, "rev-parse", "v0.33.0^{commit}")  # the annotated tag, peeled


def test_ref_main_is_the_branch_head_versioned_after_the_newest_release(vllm_repo: Path) -> None:
    main = resolve_ref(str(vllm_repo), "main")
    assert (main.kind, main.commit, str(main.version)) == (
        "branch",
        git(vllm_repo, "rev-parse", "main"),
        "0.33.1.dev0",
    )


def test_recipe_of_latest_prints_the_facts_of_v0_33_0_read_from_the_repository(vllm_repo: Path, tmp_path: Path) -> None:
    result = _invoke("recipe", "--ref", "latest", "--repo", str(vllm_repo), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "latest → v0.33.0 (tag, commit" in result.stdout
    assert "torch==2.14.0 torchvision==0.29.0 torchaudio==2.11.0 (requirements/cuda.txt)" in result.stdout
    assert "tools/use_existing_torch.py" in result.stdout and "C++ standard         20" in result.stdout


def test_recipe_json_over_the_two_sdists_gives_one_object_per_release(tmp_path: Path) -> None:
    sources = [arg for v in RELEASES for arg in ("--source", str(vllm_sdist(v)))]
    result = _invoke("recipe", "--json", *sources, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    assert [f["version"] for f in facts] == list(RELEASES)
    assert [len(f["projects"]) for f in facts] == [5, 10]
    assert facts[1]["torch"]["index"] == "https://pypi.org/simple"


def test_dry_run_of_v0_33_0_names_commit_torch_the_fa3_patch_its_range_covers_and_its_ten_projects(
    vllm_repo: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    result = _invoke(
        "build-vllm", "--dry-run", "--ref", "v0.33.0", "--repo", str(vllm_repo), "--arch", "12.1a",
        "--workdir", str(work), "--logs-dir", str(tmp_path / "logs"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"ref: v0.33.0 (tag, commit {git(vllm_repo, 'rev-parse', 'v0.33.0^{commit}')})" in out
    assert "torch: torch==2.14.0 torchvision==0.29.0 torchaudio==2.11.0 from https://pypi.org/simple" in out
    assert "pinned by requirements/cuda.txt of v0.33.0" in out
    assert "patches (vllm/series, for vllm 0.33.0):" in out
    assert "0006-build-fa3-only-for-9.x-archs-0.17.patch (releases >=0.17.0,<0.34.0): written against" in out
    assert "qutlass-12.0f" not in out  # 0001 and 0003 end before 0.19.0
    assert "external projects the sources step fetches (10;" in out
    assert "deepgemm 0820030756945b2daec208e8e8255268360f337d from https://github.com/vllm-project/DeepGEMM.git" in out
    assert not work.exists() and not (tmp_path / "logs").exists()  # a plan writes nothing, not even a lock


def test_dry_run_of_v0_13_0_applies_the_patches_its_range_covers_with_torch_2_9_from_cu130(
    vllm_repo: Path, tmp_path: Path
) -> None:
    result = _invoke(
        "build-vllm", "--dry-run", "--ref", "v0.13.0", "--repo", str(vllm_repo), "--arch", "12.1a",
        "--workdir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\n", " ")
    assert "torch==2.9.0 torchvision==0.24.0 torchaudio==2.9.0 from https://download.pytorch.org/whl/cu130" in out
    assert "0001-qutlass-12.0f-family-code-with-cuda13.patch (releases >=0.13.0,<0.14.0)" in out
    assert "0002-build-fa3-only-for-9.x-archs.patch (releases >=0.13.0,<0.14.0)" in out
    assert "0007-native-12.x-code-for-ptx-only-families.patch (releases >=0.13.0,<0.14.0)" in out


def test_an_unknown_ref_is_one_error_naming_the_recent_tags_and_exit_2(vllm_repo: Path, tmp_path: Path) -> None:
    result = _invoke("recipe", "--ref", "v9.9.9", "--repo", str(vllm_repo), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == f"error: --ref 'v9.9.9' is not a tag, branch or commit of {vllm_repo}"
    assert "v0.13.0, v0.33.0" in result.stderr


@pytest.mark.parametrize("version", RELEASES)
def test_the_patches_a_release_gets_apply_to_it_and_the_others_do_not(vllm_repo: Path, version: str) -> None:
    """What the Releases: headers claim, checked with git apply on the release's real files."""
    series = find_series(ROOT / "patches", "vllm", resolve_ref(str(vllm_repo), f"v{version}").version)
    assert series is not None
    git(vllm_repo, "checkout", "-q", f"v{version}")
    try:
        for patch in series.patches:
            git(vllm_repo, "apply", "--check", str(patch.path))
        for patch in series.skipped:
            check = subprocess.run(
                ["git", "-C", str(vllm_repo), "apply", "--check", str(patch.path)], capture_output=True
            )
            assert check.returncode != 0, f"{patch.name} applies to {version} outside its range {patch.declared}"
    finally:
        git(vllm_repo, "checkout", "-q", "main")


def test_a_patch_that_no_longer_applies_inside_its_range_stops_the_build_naming_it_and_its_range(
    make_build, tmp_path: Path
) -> None:
    """The example upstream at v0.2.0, with a series of two drifted patches: the one whose range
    covers 0.2.0 fails the patch step by name and range; the other is never tried."""
    series = tmp_path / "patches" / "spark-example"
    series.mkdir(parents=True)
    diff = "diff --git a/setup.py b/setup.py\n--- a/setup.py\n+++ b/setup.py\n@@ -1,1 +1,1 @@\n-no such line\n+x\n"
    for name, releases in (("0001-drifted.patch", ">=0.2.0,<0.3.0"), ("0002-older.patch", ">=0.1.0,<0.2.0")):
        (series / name).write_text(f"{name}\n\nReleases: {releases}\nReleases-why: a test\n---\n{diff}")
    (series / "series").write_text("0001-drifted.patch\n0002-older.patch\n")
    build = make_build()
    env = {**build.env(), "SPARK_BUILD_PATCHES_DIR": str(tmp_path / "patches")}
    result = subprocess.run(build.argv(), capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == [
        "error: [patch] 0001-drifted.patch declares releases >=0.2.0,<0.3.0 but no longer applies to "
        "spark-example 0.2.0 (the log names file and hunk)"
    ]
    assert "0002-older.patch" not in (build.workdir / "logs" / "latest" / "patch.log").read_text()


def test_a_torch_given_on_the_command_line_wins_and_gets_the_index_that_serves_it(
    vllm_repo: Path, tmp_path: Path
) -> None:
    result = _invoke(
        "build-vllm", "--dry-run", "--ref", "v0.13.0", "--repo", str(vllm_repo), "--arch", "12.1a",
        "--torch-packages", "torch==2.14.0", "--workdir", str(tmp_path / "work"), "--logs-dir", str(tmp_path / "logs"),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout.replace("\n", " ")
    assert "torch: torch==2.14.0 from https://pypi.org/simple — as given (--torch-packages); torch 2.14.0 ≥ 2.11" in out


def test_a_short_commit_id_is_read_from_the_history_and_an_unknown_one_is_bad_input(
    vllm_repo: Path, tmp_path: Path
) -> None:
    short = git(vllm_repo, "rev-parse", "--short=10", "v0.13.0^{commit}")
    found = _invoke("recipe", "--ref", short, "--repo", str(vllm_repo), cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert f"@ {short} (a commit id" in found.stdout and "torch==2.9.0" in found.stdout
    missing = _invoke("recipe", "--ref", "deadbeef12", "--repo", str(vllm_repo), cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.splitlines()[0] == f"error: --ref 'deadbeef12' is not a commit of {vllm_repo}"


def test_patches_beyond_their_tested_range_apply_when_clean_and_are_skipped_with_their_cost_when_not(
    make_build, tmp_path: Path
) -> None:
    """The example upstream at v0.2.0 is newer than two patches were tested on (<0.2.0, untested
    end): the one that applies is applied and reported so, the drifted one is skipped with what
    its absence costs, and the build goes on — here to a --patch that conflicts on purpose, so it
    stops at the changes step with the patch step's result recorded in summary.json."""
    series = tmp_path / "patches" / "spark-example"
    series.mkdir(parents=True)
    clean = (
        "diff --git a/setup.py b/setup.py\n--- a/setup.py\n+++ b/setup.py\n@@ -1,2 +1,3 @@\n"
        ' """Build script for spark_example, shaped like vLLM 0.13.0\'s setup.py.\n+# patched beyond its range\n \n'
    )
    drifted = "diff --git a/setup.py b/setup.py\n--- a/setup.py\n+++ b/setup.py\n@@ -1,1 +1,1 @@\n-no such line\n+x\n"
    headers = "Releases: >=0.1.0,<0.2.0\nReleases-why: a test\nReleases-end: untested\n"
    (series / "0001-clean.patch").write_text(f"clean\n\n{headers}---\n{clean}")
    (series / "0002-drifted.patch").write_text(f"drifted\n\n{headers}Without: the widget stays slow\n---\n{drifted}")
    (series / "series").write_text("0001-clean.patch\n0002-drifted.patch\n")
    conflict = tmp_path / "conflict.diff"
    conflict.write_text(drifted.replace("setup.py", "pyproject.toml"))
    build = make_build()
    env = {**build.env(), "SPARK_BUILD_PATCHES_DIR": str(tmp_path / "patches")}
    result = subprocess.run(build.argv("--patch", str(conflict)), capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 1 and "[changes]" in result.stderr, result.stdout + result.stderr
    out = (result.stdout + result.stderr).replace("\n", " ")
    assert "patch: 0001-clean.patch applied beyond its tested range (tested up to 0.1.x) on spark-example 0.2.0" in out
    assert "patch: 0002-drifted.patch tested up to 0.1.x, no longer applies: skipped — the widget stays slow" in out
    summary = json.loads((build.workdir / "logs" / "latest" / "summary.json").read_text())
    patch = summary["results"]["patch"]
    assert patch["applied"] == ["0001-clean.patch"]
    assert [(b["patch"], b["outcome"]) for b in patch["beyond"]] == [
        ("0001-clean.patch", "applied beyond its tested range (tested up to 0.1.x)"),
        ("0002-drifted.patch", "tested up to 0.1.x, no longer applies: skipped"),
    ]
