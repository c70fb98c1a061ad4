"""Bad input: one line saying what is wrong and how to fix it, exit 2, nothing built lost."""

from __future__ import annotations

import pytest

from tests.conftest import Build, published_wheel


def snapshot(build: Build) -> tuple[str, bytes]:
    return (build.workdir / "state.json").read_text(), published_wheel(build).read_bytes()


def assert_refused(result, *words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    assert "fix:" in result.stderr


@pytest.mark.parametrize("jobs", ["0", "-1", "abc"], ids=["zero", "negative", "word"])
def test_bad_jobs_is_refused_and_the_finished_build_survives(baseline, jobs):
    before = snapshot(baseline)
    args = baseline.argv()
    args[args.index("--jobs") + 1] = jobs
    import subprocess

    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert_refused(result, "--jobs", f"'{jobs}'")
    assert snapshot(baseline) == before


def test_a_ref_the_repo_does_not_have_is_refused_before_anything_is_built(baseline):
    before = snapshot(baseline)
    result = baseline.run("--ref", "v9.9.9")
    assert_refused(result, "v9.9.9", "v0.2.0")
    assert snapshot(baseline) == before


def test_an_unknown_option_value_is_refused(baseline):
    before = snapshot(baseline)
    assert_refused(baseline.run("--torch-cuda", "twelve"), "--torch-cuda")
    assert snapshot(baseline) == before


def test_no_nvcc_is_refused_with_where_to_point(baseline, tmp_path):
    before = snapshot(baseline)
    assert_refused(baseline.run("--cuda-home", str(tmp_path / "no-cuda")), "no nvcc", "--cuda-home")
    assert snapshot(baseline) == before


def test_an_unwritable_workdir_is_refused(make_build, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    build = make_build()
    build.workdir = blocker / "work"
    assert_refused(build.run(), "cannot write to the workdir", "--workdir")


def test_resume_with_nothing_to_resume_is_refused(make_build):
    assert_refused(make_build().run("--resume"), "nothing to resume")


def test_a_corrupt_state_file_is_set_aside_and_never_trusted(make_build):
    build = make_build()
    build.workdir.mkdir(parents=True)
    (build.workdir / "state.json").write_text('{"schema": 1, "steps": {"clone": ')
    assert_refused(build.run("--resume"), "unreadable", "without --resume")
    assert not (build.workdir / "state.json").exists()
    assert len(list(build.workdir.glob("state.json.corrupt-*"))) == 1
