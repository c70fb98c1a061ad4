"""Bad input: one line saying what is wrong and how to fix it, exit 2, nothing built lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Build, _env, published_wheel


def snapshot(build: Build) -> tuple[str, bytes]:
    return (build.workdir / "state.json").read_text(), published_wheel(build).read_bytes()


def finished_build(build: Build) -> tuple[object, ...]:
    """What a refused command must leave exactly as it was: the checkpoint, the published wheel
    and the index beside it, the build venv (a `uv venv --clear` renews its pyvenv.cfg), and the
    runs in the logs folder (a refusal is no run)."""
    venv_cfg = build.workdir / "venv" / "pyvenv.cfg"
    wheelhouse = build.workdir / "wheelhouse"
    return (
        sorted(p.name for p in (build.workdir / "logs").iterdir()),
        (build.workdir / "state.json").read_bytes(),
        {str(f.relative_to(wheelhouse)): f.read_bytes() for f in sorted(wheelhouse.rglob("*")) if f.is_file()},
        venv_cfg.stat().st_mtime_ns,
        sorted(p.name for p in (build.workdir / "venv").rglob("site-packages/*")),
    )


# (id, invoke.yaml text or None, command and its options, words the error holds). `{file}` is a
# regular file, `{missing}` a path that does not exist, `{folder}` a plain folder, `{notzip}` a .whl
# that is not a zip;
# `build-vllm` rows run with the baseline build's own options, the row's replacing them.
BAD_INPUTS: list[tuple[str, str | None, list[str], str]] = [
    ("torch-index-missing-folder", None, ["build-vllm", "--torch-index", "{missing}"], "--torch-index"),
    ("torch-index-ftp-url", None, ["build-vllm", "--torch-index", "ftp://mirror/whl"], "'ftp' URL"),
    ("torch-index-file-url-missing", None, ["build-vllm", "--torch-index", "file://{missing}"], "not a folder"),
    ("wheelhouse-is-a-file", None, ["build-vllm", "--wheelhouse", "{file}"], "--wheelhouse"),
    ("wheelhouse-under-a-file", None, ["build-vllm", "--wheelhouse", "{file}/wh"], "is a file"),
    ("serve-model-missing", None, ["build-vllm", "--serve-model", "{missing}"], "--serve-model"),
    ("repo-missing", None, ["build-vllm", "--repo", "{missing}"], "does not exist"),
    ("repo-not-git", None, ["build-vllm", "--repo", "{folder}"], "is not a git repository or bundle"),
    ("python-missing", None, ["build-vllm", "--python", "{missing}"], "--python"),
    ("python-not-python", None, ["build-vllm", "--python", "/bin/false"], "does not run as Python 3"),
    ("logs-dir-is-a-file", None, ["build-vllm", "--logs-dir", "{file}"], "--logs-dir"),
    ("uv-cache-dir-is-a-file", None, ["build-vllm", "--uv-cache-dir", "{file}"], "--uv-cache-dir"),
    ("cache-dir-is-a-file", None, ["build-vllm", "--cache-dir", "{file}"], "--cache-dir"),
    ("wheels-missing", None, ["build-vllm", "--wheels", "{missing}"], "--wheels"),
    ("mem-budget-without-unit", None, ["build-vllm", "--mem-budget", "64"], "64"),
    ("mem-reserve-word", None, ["build-vllm", "--mem-reserve", "lots"], "--mem-reserve"),
    ("cache-size-without-unit", None, ["build-vllm", "--cache-size", "20"], "20"),
    ("cache-unknown-scheme", None, ["build-vllm", "--cache", "memcached://host"], "memcached"),
    ("dist-without-token", None, ["build-vllm", "--dist", "http://127.0.0.1:10600"], "--dist"),
    ("nvcc-threads-word", None, ["build-vllm", "--nvcc-threads", "many"], "--nvcc-threads"),
    ("torch-source-unknown", None, ["build-vllm", "--torch", "system"], "--torch"),
    ("ninja-unknown", None, ["build-vllm", "--ninja", "fast"], "--ninja must be 'scheduling' or 'stock'"),
    ("arch-unknown", None, ["build-vllm", "--arch", "banana"], "banana"),
    ("cuda-home-without-nvcc", None, ["build-vllm", "--cuda-home", "{missing}"], "no nvcc"),
    ("yaml-torch-packages-number", "spark_build:\n  torch_packages: 5\n", ["build-vllm"], "torch_packages"),
    ("yaml-section-is-a-list", "spark_build: [1, 2]\n", ["build-vllm"], "spark_build section"),
    ("yaml-jobs-list", "spark_build:\n  jobs: [4]\n", ["build-vllm"], "jobs in invoke.yaml"),
    ("yaml-unknown-key", "spark_build:\n  torch_indx: /x\n", ["build-vllm"], "torch_indx"),
    ("arch-plan-torch-index-missing", None, ["arch-plan", "--torch-index", "{missing}"], "--torch-index"),
    ("validate-not-a-zip", None, ["validate", "{notzip}", "--arch", "12.1a"], "not a zip"),
    ("validate-no-wheel", None, ["validate", "{missing}.whl", "--arch", "12.1a"], "no wheel"),
    ("validate-yaml-section-is-a-list", "spark_build: [1]\n", ["validate", "{notzip}"], "spark_build section"),
    ("nightly-workdir-is-a-file", None, ["nightly", "--workdir", "{file}"], "--workdir"),
    ("nightly-offline", "spark_build:\n  offline: true\n", ["nightly", "--workdir", "{work}"], "offline build"),
    ("nightly-lock-wait-word", None, ["nightly", "--workdir", "{work}", "--lock-wait", "x"], "--lock-wait"),
    # the official wheel is proven for --arch before it is mirrored; no GPU here to read it from
    ("nightly-no-arch-no-gpu", None, ["nightly", "--workdir", "{work}", "--ref", "v0.22.0"], "no --arch given"),
    ("nightly-arch-unknown", None, ["nightly", "--workdir", "{work}", "--arch", "banana"], "banana"),
    ("schedule-bad-time", None, ["schedule", "--at", "25:00", "--workdir", "{work}"], "25:00"),
    ("report-unknown-run", None, ["report", "--run", "nope", "--logs-dir", "{work}/logs"], "'nope'"),
    ("report-logs-dir-is-a-file", None, ["report", "--logs-dir", "{file}"], "--logs-dir"),
    ("history-logs-dir-is-a-file", None, ["history", "--logs-dir", "{file}"], "--logs-dir"),
    ("doctor-workdir-is-a-file", None, ["doctor", "--workdir", "{file}"], "--workdir"),
]


def _command(build: Build, config_file: Path | None, words: list[str]) -> list[str]:
    if words[0] == "build-vllm":
        argv = build.argv(*words[1:])
    else:
        argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *words]
    return argv if config_file is None else [*argv[:3], "-f", str(config_file), *argv[3:]]


@pytest.mark.parametrize(
    ("yaml", "words", "message"), [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS]
)
def test_bad_input_to_any_command_is_refused_with_one_error_and_leaves_the_finished_build_as_it_was(
    baseline, tmp_path, yaml, words, message
):
    regular = tmp_path / "a-file"
    regular.write_text("not a folder")
    (tmp_path / "notzip-1.0-py3-none-any.whl").write_text("not a zip")
    places = {
        "file": str(regular),
        "missing": str(tmp_path / "missing"),
        "folder": str(tmp_path),
        "notzip": str(tmp_path / "notzip-1.0-py3-none-any.whl"),
        "work": str(baseline.workdir),
    }
    config_file = None
    if yaml is not None:
        config_file = tmp_path / "invoke.yaml"
        config_file.write_text(yaml)
    before = finished_build(baseline)
    argv = _command(baseline, config_file, [w.format(**places) for w in words])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert_refused(result, message)
    assert finished_build(baseline) == before


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


def test_a_workdir_inside_a_file_is_refused(make_build, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    build = make_build()
    build.workdir = blocker / "work"
    assert_refused(build.run(), "--workdir", "is a file, not a folder")


def test_resume_with_nothing_to_resume_is_refused(make_build):
    assert_refused(make_build().run("--resume"), "nothing to resume")


def test_a_corrupt_state_file_is_set_aside_and_never_trusted(make_build):
    build = make_build()
    build.workdir.mkdir(parents=True)
    (build.workdir / "state.json").write_text('{"schema": 1, "steps": {"clone": ')
    assert_refused(build.run("--resume"), "unreadable", "without --resume")
    assert not (build.workdir / "state.json").exists()
    assert len(list(build.workdir.glob("state.json.corrupt-*"))) == 1
