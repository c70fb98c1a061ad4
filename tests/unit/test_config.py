"""Options: layered, validated once, bad input named with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_build import config
from spark_build.errors import UsageError


def resolve(cli=None, file=None, env=None, tmp: Path | None = None):
    return config.resolve(cli or {}, file or {}, env or {}, cwd=tmp or Path("/tmp"))


def test_defaults_target_vllm_with_cuda_13_torch():
    cfg = resolve()
    assert cfg.repo == config.VLLM_UPSTREAM and cfg.ref == "v0.13.0"
    assert cfg.torch_cuda == "13" and cfg.torch_index.endswith("/cu130")
    assert cfg.jobs is None and cfg.arch is None
    assert cfg.workdir == Path("/tmp/work") and cfg.wheelhouse == Path("/tmp/work/wheelhouse")


def test_torch_left_unset_is_read_from_the_source_at_the_ref_not_from_a_table():
    # The pins live in the release's requirements/cuda.txt (steps.sourceplan reads them).
    cfg = resolve(cli={"ref": "v0.33.0"})
    assert cfg.from_source == ("torch_packages", "torch_index")
    assert "from_source" not in config.SETTABLE


def test_torch_packages_given_win_over_the_release_pins():
    cfg = resolve(cli={"torch_packages": "torch==2.14.1"}, env={"SPARK_BUILD_REF": "v0.13.0"})
    assert cfg.torch_packages == ("torch==2.14.1",)
    assert cfg.from_source == ("torch_index",)


def test_command_line_beats_environment_beats_invoke_yaml():
    cfg = resolve(
        cli={"ref": "v3"},
        file={"ref": "v1", "torch_cuda": "cpu", "arch": "9.0a"},
        env={"SPARK_BUILD_REF": "v2", "SPARK_BUILD_ARCH": "12.1a"},
    )
    assert (cfg.ref, cfg.arch, cfg.torch_cuda) == ("v3", "12.1a", "cpu")


def test_example_mode_builds_a_generated_upstream_inside_the_workdir():
    cfg = resolve(cli={"example": True, "workdir": "/w"})
    assert cfg.repo == "/w/example-upstream" and cfg.ref == config.EXAMPLE_DEFAULT_REF


def test_local_repo_paths_become_absolute(tmp_path):
    (tmp_path / "up" / ".git").mkdir(parents=True)
    cfg = resolve(cli={"repo": "up"}, tmp=tmp_path)
    assert cfg.repo == str(tmp_path / "up")


@pytest.mark.parametrize("jobs", ["0", "-1", "abc", "2.5"], ids=["zero", "negative", "word", "fraction"])
def test_jobs_must_be_a_positive_whole_number(jobs):
    with pytest.raises(UsageError) as caught:
        resolve(cli={"jobs": jobs})
    assert caught.value.exit_code == 2
    assert f"got '{jobs}'" in caught.value.message and "--jobs" in caught.value.message


def test_jobs_auto_means_planned():
    assert resolve(cli={"jobs": "auto"}).jobs is None
    assert resolve(cli={"jobs": "6"}).jobs == 6


def test_an_unknown_invoke_yaml_key_suggests_the_nearest_one():
    with pytest.raises(UsageError) as caught:
        resolve(file={"torch_indx": "x"})
    assert "torch_indx" in caught.value.message and "torch_index" in (caught.value.hint or "")


def test_an_unknown_environment_variable_with_our_prefix_is_a_typo_worth_stopping_for():
    with pytest.raises(UsageError) as caught:
        resolve(env={"SPARK_BUILD_JOBZ": "4"})
    assert "jobz" in caught.value.message and "'jobs'" in (caught.value.hint or "")


def test_the_test_suites_own_variables_are_not_taken_for_build_options():
    """SPARK_BUILD_TEST_MIRROR, exported to run the tests, once stopped every build in that
    shell (and every build the tests start) as an unknown option 'test_mirror'."""
    env = {"SPARK_BUILD_TEST_MIRROR": "/srv/mirror", "SPARK_BUILD_JOBS": "3"}
    assert config.from_env(env) == {"jobs": "3"}


@pytest.mark.parametrize(
    ("option", "value"),
    [("torch_cuda", "twelve"), ("build_type", "Fast"), ("resume", "maybe"), ("ref", "  ")],
    ids=["torch-cuda", "build-type", "boolean", "empty-ref"],
)
def test_bad_values_are_rejected_with_a_fix(option, value):
    with pytest.raises(UsageError) as caught:
        resolve(file={option: value})
    assert caught.value.hint


@pytest.mark.parametrize(
    ("cuda", "wanted", "fits"),
    [("13.0", "13", True), ("12.8", "13", False), (None, "13", False), (None, "cpu", True), ("13.0", "cpu", False)],
    ids=["cu130-for-spark", "cu128-on-spark", "cpu-when-cuda-wanted", "cpu-for-tests", "cuda-when-cpu-wanted"],
)
def test_the_torch_step_accepts_only_the_cuda_major_asked_for(cuda, wanted, fits):
    from spark_build.steps.toolchain import torch_matches

    assert torch_matches(cuda, wanted) is fits


def test_a_reserve_may_be_zero_but_a_budget_may_not():
    assert resolve(cli={"mem_reserve": "0"}).mem_reserve == 0
    assert resolve(cli={"mem_reserve": "0K"}).mem_reserve == 0
    assert resolve(cli={"mem_reserve": "2G"}).mem_reserve == 2 << 30
    with pytest.raises(UsageError):
        resolve(cli={"mem_budget": "0"})


def test_the_resume_hint_is_the_users_own_command_with_resume_instead_of_dry_run() -> None:
    from spark_build.cli import resume_command

    argv = ["-f", "examples/example-cpu.yaml", "build-vllm", "--example", "--arch", "12.1a", "--dry-run"]
    assert resume_command(argv) == "invoke -f examples/example-cpu.yaml build-vllm --example --arch 12.1a --resume"
    assert resume_command(["build-vllm", "--resume", "--workdir", "my work"]) == (
        "invoke build-vllm --workdir 'my work' --resume"
    )


def test_logs_live_in_the_workdir_and_ccaches_cache_is_shared_by_a_users_workdirs(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cfg = resolve(cli={"workdir": "/builds/a"})
    assert cfg.logs_dir == Path("/builds/a/logs")
    assert cfg.cache_dir == tmp_path / "xdg" / "spark-build" / "compiler-cache" / "ccache"
    assert resolve(cli={"workdir": "/builds/b"}).cache_dir == cfg.cache_dir
    assert resolve(cli={"cache_dir": "/fast/ccache"}).cache_dir == Path("/fast/ccache")


def test_sccache_for_dist_keeps_its_cache_and_server_socket_in_the_workdir(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    cfg = resolve(cli={"dist": "http://scheduler:10600", "dist_token_file": str(token)})
    assert cfg.cache_dir is None  # compile.cache's per-workdir default


def test_the_resume_hint_names_the_command_the_user_ran() -> None:
    from spark_build.cli import resume_command

    assert resume_command(["build-vllm", "--example"], "spark-build") == "spark-build build-vllm --example --resume"
