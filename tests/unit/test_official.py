"""Where vLLM's official CUDA 13 wheel for a release is, by name and place: the two naming schemes
(a `+cu130` GitHub release asset up to 0.19.1, the plain wheel on the package index from 0.20.0)
and the moving manylinux tag; and reading an index page (PEP 691 JSON, PEP 503 HTML) or a GitHub
release's assets, where only a wheel with a published sha256 is taken."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from packaging.version import Version
from rich.console import Console

from spark_build.errors import HostProblem, StepFailed, UsageError
from spark_build.insight.report import history_main, report_main
from spark_build.nightly.official import (
    PACKAGE_INDEX,
    Expected,
    OfficialWheel,
    Place,
    Wanted,
    expected_wheel,
    find_in_folder,
    parse_index_page,
    parse_release,
    pick,
    release_version,
)
from spark_build.nightly.prebuilt import (
    Decision,
    PreferWheel,
    cause_of,
    torch_conflict,
    wanted_for,
    write_decision_run,
    write_taken_run,
)
from spark_build.pipeline.progress import StepOutcome, summary_payload
from spark_build.wheel.proof import Proof

SHA = "ab" * 32


@pytest.mark.parametrize(
    ("version", "place", "filename"),
    [
        ("0.13.0", Place.RELEASE, "vllm-0.13.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"),
        ("0.19.1", Place.RELEASE, "vllm-0.19.1+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"),
        ("0.20.0", Place.INDEX, "vllm-0.20.0-cp38-abi3-manylinux_2_35_aarch64.whl"),
        ("0.21.0", Place.INDEX, "vllm-0.21.0-cp38-abi3-manylinux_2_24_aarch64.whl"),
        ("0.22.1", Place.INDEX, "vllm-0.22.1-cp38-abi3-manylinux_2_28_aarch64.whl"),
        ("0.33.0", Place.INDEX, "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"),
    ],
    ids=lambda v: str(v),
)
def test_the_official_cuda13_wheel_is_named_and_placed_as_its_release_published_it(
    version: str, place: Place, filename: str
) -> None:
    expected = expected_wheel(Wanted(Version(version), 13, "aarch64"))
    assert isinstance(expected, Expected)
    assert (expected.place, expected.filename) == (place, filename)


@pytest.mark.parametrize(
    ("wanted", "why"),
    [
        (Wanted(Version("0.12.0"), 13, "aarch64"), "from 0.13.0 on"),
        (Wanted(Version("0.33.0"), 12, "aarch64"), "CUDA 13 wheels only"),
    ],
    ids=["before-0.13", "cuda-12"],
)
def test_no_official_wheel_is_looked_for_where_vllm_published_none(wanted: Wanted, why: str) -> None:
    answer = expected_wheel(wanted)
    assert isinstance(answer, str) and why in answer


@pytest.mark.parametrize(
    ("ref", "version"),
    [("v0.13.0", "0.13.0"), ("0.33.0", "0.33.0"), ("main", None), ("v0.14.0rc1", None), ("72506c98", None)],
)
def test_only_a_release_tag_has_an_official_wheel(ref: str, version: str | None) -> None:
    assert release_version(ref) == (Version(version) if version else None)


def _wheel(name: str) -> OfficialWheel:
    return OfficialWheel(name, f"http://host/{name}", SHA, Place.INDEX)


def test_the_expected_name_wins_and_an_unknown_manylinux_tag_of_the_same_build_is_still_taken() -> None:
    wanted = Wanted(Version("0.23.0"), 13, "aarch64")
    expected = expected_wheel(wanted)
    assert isinstance(expected, Expected)
    other_tag = _wheel("vllm-0.23.0-cp38-abi3-manylinux_2_31_aarch64.whl")
    exact = _wheel(expected.filename)
    assert pick(expected, wanted, [other_tag, exact]) == exact
    assert pick(expected, wanted, [other_tag]) == other_tag


def test_a_cuda12_alternate_another_cpu_or_another_release_is_never_taken() -> None:
    wanted = Wanted(Version("0.23.0"), 13, "aarch64")
    expected = expected_wheel(wanted)
    assert isinstance(expected, Expected)
    offered = [
        _wheel("vllm-0.23.0+cu129-cp38-abi3-manylinux_2_28_aarch64.whl"),
        _wheel("vllm-0.23.0-cp38-abi3-manylinux_2_28_x86_64.whl"),
        _wheel("vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl"),
        _wheel("vllm-0.23.0.tar.gz"),
    ]
    assert pick(expected, wanted, offered) is None


def test_a_pep691_json_page_gives_each_file_with_its_sha256_and_leaves_out_yanked_and_unhashed() -> None:
    body = json.dumps(
        {
            "meta": {"api-version": "1.1"},
            "files": [
                {"filename": "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl", "url": "../../files/a.whl",
                 "hashes": {"sha256": SHA.upper()}},
                {"filename": "vllm-0.32.0-cp38-abi3-manylinux_2_28_aarch64.whl", "url": "b.whl",
                 "hashes": {"sha256": SHA}, "yanked": "broken"},
                {"filename": "vllm-0.31.0-cp38-abi3-manylinux_2_28_aarch64.whl", "url": "c.whl", "hashes": {}},
            ],
        }
    )  # fmt: skip
    (wheel,) = parse_index_page("http://host/simple/vllm/", "application/vnd.pypi.simple.v1+json", body)
    assert (wheel.url, wheel.sha256) == ("http://host/files/a.whl", SHA)


def test_a_pep503_html_page_gives_each_file_with_its_sha256_and_leaves_out_yanked_and_unhashed() -> None:
    body = (
        f'<a href="vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl#sha256={SHA}">x</a>'
        f'<a href="old.whl#sha256={SHA}" data-yanked="">y</a>'
        '<a href="vllm-0.31.0-cp38-abi3-manylinux_2_28_aarch64.whl">z</a>'
    )
    (wheel,) = parse_index_page("http://host/simple/vllm/", "text/html", body)
    assert wheel.filename == "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    assert wheel.url == "http://host/simple/vllm/vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"


def test_a_release_asset_is_taken_only_with_the_sha256_digest_github_publishes() -> None:
    body = json.dumps(
        {
            "tag_name": "v0.15.0",
            "assets": [
                {"name": "vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl", "digest": f"sha256:{SHA}",
                 "browser_download_url": "http://host/download/v0.15.0/vllm-0.15.0%2Bcu130-cp38-abi3-manylinux_2_35_aarch64.whl"},
                {"name": "vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_x86_64.whl", "digest": None,
                 "browser_download_url": "http://host/download/v0.15.0/x86.whl"},
            ],
        }
    )  # fmt: skip
    (wheel,) = parse_release(body)
    assert (wheel.filename, wheel.sha256, wheel.place) == (
        "vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl",
        SHA,
        Place.RELEASE,
    )


# --------------------------------------------------------------------------------------------
# The user's torch is never changed for a prebuilt wheel


@pytest.mark.parametrize(
    ("wheel_requires", "asked", "existing", "conflict"),
    [
        (["torch==2.14.0"], ["torch==2.14.0", "torchvision"], None, None),
        (["torch==2.14.0"], ["torch"], None, None),  # the newest: the wheel's pin is what gets validated
        (["torch==2.14.0"], ["torch==2.9.0"], None, "it needs torch==2.14.0; --torch-packages asks for torch==2.9.0"),
        (["torch==2.14.0"], [], Version("2.14.0+cu130"), None),  # a local build of the same release fits
        (
            ["torch==2.14.0"],
            [],
            Version("2.9.0a0+nv25.10"),
            "it needs torch==2.14.0; your torch is 2.9.0a0+nv25.10 (--torch existing), "
            "which spark-build does not change",
        ),
        (["torch==2.14.0; extra == 'cpu'", "numpy"], ["torch==2.9.0"], None, None),  # only for an extra
        ([], ["torch==2.9.0"], None, None),
    ],
    ids=["same-pin", "unpinned-ask", "other-pin", "existing-fits", "existing-other", "extra-only", "no-pin"],
)
def test_a_wheel_is_taken_only_when_its_torch_is_the_one_the_user_has_or_asked_for(
    wheel_requires: list[str], asked: list[str], existing: Version | None, conflict: str | None
) -> None:
    assert torch_conflict(wheel_requires, asked, existing) == conflict


@pytest.mark.parametrize(
    ("ref", "index", "message"),
    [
        ("main", PACKAGE_INDEX, "--prefer-wheel needs a release tag and 'main' is not one"),
        ("v0.33.0", "/mirror/simple", "--wheel-index /mirror/simple: not an http(s) URL"),
    ],
    ids=["branch", "index-not-a-url"],
)
def test_prefer_wheel_refuses_bad_input_before_looking_anything_up(ref: str, index: str, message: str) -> None:
    nowhere = Path("/nonexistent")
    options = PreferWheel(ref, "12.1a", 13, nowhere, nowhere / "logs", PACKAGE_INDEX, (), None, index=index)
    with pytest.raises(UsageError, match=re.escape(message)) as err:
        wanted_for(options)
    assert err.value.exit_code == 2


# --------------------------------------------------------------------------------------------
# Offline (--wheels DIR): the official wheel is looked up in DIR, with its sha256 in NAME.sha256


def test_offline_the_official_wheel_is_taken_from_the_wheel_folder_with_the_sha256_beside_it(tmp_path: Path) -> None:
    name = "vllm-0.15.0+cu130-cp38-abi3-manylinux_2_35_aarch64.whl"
    (tmp_path / name).write_bytes(b"wheel")
    (tmp_path / f"{name}.sha256").write_text(f"{SHA}  {name}\n")  # as `sha256sum NAME` writes it
    (tmp_path / "vllm-0.15.0-cp38-abi3-manylinux_2_31_aarch64.whl").write_bytes(b"the CUDA 12 one")
    found = find_in_folder(Wanted(Version("0.15.0"), 13, "aarch64"), tmp_path)
    assert found == OfficialWheel(name, str(tmp_path / name), SHA, Place.FOLDER)


def test_offline_a_wheel_without_its_sha256_is_not_taken_and_the_message_names_the_file_to_write(
    tmp_path: Path,
) -> None:
    name = "vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    (tmp_path / name).write_bytes(b"wheel")
    found = find_in_folder(Wanted(Version("0.22.0"), 13, "aarch64"), tmp_path)
    assert found == (
        f"{tmp_path / name} has no {name}.sha256 beside it: "
        "write into it the sha256 published with the wheel (package index), as `sha256sum` formats it"
    )


def test_offline_a_folder_without_the_wheel_says_which_wheel_it_lacks(tmp_path: Path) -> None:
    found = find_in_folder(Wanted(Version("0.22.0"), 13, "aarch64"), tmp_path)
    assert found == (
        f"no vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl in {tmp_path} "
        "(offline, the official wheel is looked up only there)"
    )


# --------------------------------------------------------------------------------------------
# The decision in summary.json, shown by `invoke report` and `invoke history`


def _shown(logs: Path) -> tuple[str, str]:
    report, history = io.StringIO(), io.StringIO()
    report_main(logs, None, False, Console(file=report, width=250))
    history_main(logs, False, Console(file=history, width=250))
    return report.getvalue(), history.getvalue()


def test_a_taken_official_wheel_leaves_a_run_that_report_and_history_show(tmp_path: Path) -> None:
    name = "vllm-0.22.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    install = f"uv pip install {name}"
    decision = Decision(
        True, "validated here with torch 2.14.0", name, "package index", f"/wh/vllm/{name}", SHA, install
    )
    verdicts = {"12.1": "native"}
    proof = Proof(
        results={"verdicts": verdicts, "imports": {"vllm": True}, "linkage": {"ok": True}}, reports=[], problems=[]
    )
    path = write_taken_run(tmp_path, "v0.22.0", "12.1a", decision, proof, seconds=90.0, validate_seconds=60.0)
    summary = json.loads(path.read_text())
    assert summary["prefer_wheel"] == decision.to_dict()
    assert (tmp_path / "latest" / "summary.json").read_text() == path.read_text()
    report, history = _shown(tmp_path)
    assert f"prefer-wheel: took {name} (package index): validated here with torch 2.14.0" in report
    assert f"install with: {install}" in report
    assert "ok (official wheel)" in history


def test_a_completed_official_wheel_s_run_times_its_completion_as_a_step_with_objects_and_jobs(tmp_path: Path) -> None:
    name = "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    decision = Decision(True, "completed here (_qutlass_C built for 12.1a)", name, "package index", f"/wh/{name}")
    proof = Proof(results={"imports": {"vllm": True}}, reports=[], problems=[])
    completed = {"max_jobs": 4, "objects_built": 8, "objects_total": 8, "seconds": 200.0, "oom_retries": 0}
    path = write_taken_run(
        tmp_path, "v0.26.0", "12.1a", decision, proof, seconds=300.0, validate_seconds=60.0, completed=completed
    )
    summary = json.loads(path.read_text())
    steps = {step["name"]: (step["seconds"], step["detail"]) for step in summary["steps"]}
    assert steps["complete"] == (200.0, "MAX_JOBS 4, 8 of 8 objects")
    assert steps["prefer-wheel"][0] == 40.0 and summary["total_seconds"] == 300.0
    assert summary["results"]["complete"] == completed
    report, _history = _shown(tmp_path)
    assert "prefer-wheel completion compiled in 3m20s: MAX_JOBS 4, 8 of 8 objects" in report


def test_a_source_build_after_a_refused_official_wheel_keeps_why_in_its_summary(tmp_path: Path) -> None:
    name = "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    why = f"{name} failed validation: vllm/_qutlass_C.abi3.so: kernel family _qutlass_C cannot run on 12.1"
    decision = Decision(False, why, name, "package index")
    summary = summary_payload(
        run_id="20261130-100000-1",
        exit_code=0,
        ref="v0.33.0",
        arch="12.1a",
        outcomes=[],
        results={},
        error=None,
        prebuilt=decision.to_dict(),
    )
    assert summary["prefer_wheel"]["taken"] is False and summary["prefer_wheel"]["why"] == why
    (tmp_path / "20261130-100000-1").mkdir()
    (tmp_path / "20261130-100000-1" / "summary.json").write_text(json.dumps(summary))
    report, history = _shown(tmp_path)
    assert f"prefer-wheel: {name} (package index) not taken, built from source: {why}" in report
    assert "(official wheel not taken)" in history


def test_a_run_a_host_problem_stopped_is_reported_as_no_verdict_not_as_a_refusal(tmp_path: Path) -> None:
    name = "vllm-0.33.0-cp38-abi3-manylinux_2_28_aarch64.whl"
    stopped = "validating it could not finish: cannot run cuobjdump at /usr/local/cuda/bin/cuobjdump"
    why = f"no verdict on the official wheel: {stopped}"
    decision = Decision(False, why, name, "package index", stopped_by=stopped)
    outcome = StepOutcome("prefer-wheel", "failed", 12.0, "a host problem", 1, stopped)
    write_decision_run(tmp_path, "v0.33.0", "12.1a", decision, [outcome], {}, HostProblem(stopped))
    report, history = _shown(tmp_path)
    assert f"prefer-wheel: stopped by a host problem, no verdict on {name} (package index): {stopped}" in report
    assert "built from source" not in report
    assert "failed at prefer-wheel (official wheel not judged: host problem)" in history


def test_a_failed_command_is_named_by_its_cause_not_by_its_argv() -> None:
    failed = StepFailed("`uv pip install --python` … exited with status 2", step="validate")
    assert cause_of(failed) == failed.message
    failed.details = ["log says: error: Failed to fetch: http://127.0.0.1:9/simple/torch/"]
    assert cause_of(failed) == "error: Failed to fetch: http://127.0.0.1:9/simple/torch/"
