"""The serve check's decisions, without a server: command line, environment, SSE parsing,
response judgement, failure causes and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spark_build.wheel.serve import (
    ServeOptions,
    StartAttempt,
    attempt_plan,
    build_report,
    find_cached_instruct_model,
    hf_hub_cache,
    log_cause,
    server_argv,
    server_env,
)
from spark_build.wheel.servecheck_http import (
    CHAT,
    COMPLETIONS,
    DONE,
    RequestResult,
    check_response,
    error_excerpt,
    sse_event,
    summarize_stream,
)
from spark_build.wheel.serverproc import socket_dir_too_long

VENV_PYTHON = Path("/work/validate-venv/bin/python")


def options(tmp_path: Path, **overrides: object) -> ServeOptions:
    settings: dict[str, object] = {"model": "Qwen/Qwen2.5-0.5B-Instruct", "python": VENV_PYTHON, "workdir": tmp_path}
    return ServeOptions(**(settings | overrides))  # type: ignore[arg-type]


# ---------------------------------------------------------------- command line and environment


def test_server_listens_on_loopback_only_and_starts_through_python_m(tmp_path: Path) -> None:
    argv = server_argv(options(tmp_path, extra_args=("--dtype", "float32")), port=8123, enforce_eager=False)
    assert argv == [
        str(VENV_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "Qwen/Qwen2.5-0.5B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--dtype",
        "float32",
    ]


def test_enforce_eager_is_passed_once_even_when_extra_args_already_have_it(tmp_path: Path) -> None:
    argv = server_argv(options(tmp_path, extra_args=("--enforce-eager",)), port=1, enforce_eager=True)
    assert argv.count("--enforce-eager") == 1


@pytest.mark.parametrize(
    ("overrides", "plan"),
    [
        pytest.param({}, [False, True], id="default-retries-with-enforce-eager"),
        pytest.param({"enforce_eager": True}, [True], id="eager-from-the-start-has-nothing-to-retry"),
        pytest.param({"extra_args": ("--enforce-eager",)}, [True], id="eager-in-extra-args-counts"),
        pytest.param({"retry_with_enforce_eager": False}, [False], id="retry-disabled"),
    ],
)
def test_attempt_plan(tmp_path: Path, overrides: dict[str, object], plan: list[bool]) -> None:
    assert attempt_plan(options(tmp_path, **overrides)) == plan


def test_caches_and_sockets_go_into_the_work_dir_and_caller_env_wins(tmp_path: Path) -> None:
    env = server_env(
        options(tmp_path, env={"VLLM_CPU_KVCACHE_SPACE": "1", "TMPDIR": "/scratch"}),
        {"PATH": "/usr/bin", "TMPDIR": "/tmp", "VLLM_CACHE_ROOT": "/home/u/.cache/vllm"},
    )
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm-cache")
    assert env["TMPDIR"] == "/scratch"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert env["VLLM_NO_USAGE_STATS"] == "1"


def test_a_local_model_path_is_served_offline_and_a_hub_name_is_not_forced_offline(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    assert server_env(options(tmp_path, model=str(model)), {})["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in server_env(options(tmp_path), {})


def test_serve_options_are_hashable_though_they_carry_an_env_mapping(tmp_path: Path) -> None:
    assert hash(options(tmp_path, env={"A": "1"})) == hash(options(tmp_path, env={"A": "2"}))


@pytest.mark.parametrize(
    ("tmpdir", "too_long"),
    [
        pytest.param("/home/u/work/tmp", False, id="short"),
        pytest.param("/tmp/pytest-of-root/pytest-52/test_real_vllm_serves_both_end0/serve/tmp", True, id="pytest-deep"),
    ],
)
def test_socket_dir_too_long(tmpdir: str, too_long: bool) -> None:
    assert socket_dir_too_long(tmpdir) is too_long


# ---------------------------------------------------------------- SSE and responses


@pytest.mark.parametrize(
    ("line", "event"),
    [
        pytest.param(b'data: {"choices": []}\n', {"choices": []}, id="data-line"),
        pytest.param(b"data: [DONE]\n", DONE, id="done"),
        pytest.param(b"\n", None, id="separator"),
        pytest.param(b": keep-alive\n", None, id="comment"),
        pytest.param(b"event: message\n", None, id="event-name"),
        pytest.param(
            b"data: {oops\n", {"error": {"message": "unparseable event: {oops"}}, id="broken-json-is-an-error"
        ),
    ],
)
def test_sse_event(line: bytes, event: object) -> None:
    assert sse_event(line) == event


def test_chat_time_to_first_token_skips_the_role_only_chunk_and_usage_comes_from_the_last_chunk() -> None:
    events = [
        (10.2, {"choices": [{"delta": {"role": "assistant", "content": ""}}]}),
        (10.5, {"choices": [{"delta": {"content": "Hi"}}]}),
        (10.6, {"choices": [{"delta": {"content": " there"}}]}),
        (10.7, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        (10.8, DONE),
    ]
    summary = summarize_stream(CHAT, 10.0, events)
    assert summary.text == "Hi there"
    assert summary.ttft_s == pytest.approx(0.5)
    assert summary.total_s == pytest.approx(0.8)
    assert summary.usage == {"prompt_tokens": 9, "completion_tokens": 2}
    assert summary.done and summary.error is None


def test_completion_text_is_read_from_choices_text() -> None:
    summary = summarize_stream(COMPLETIONS, 0.0, [(0.1, {"choices": [{"text": " Paris"}]}), (0.2, DONE)])
    assert summary.text == " Paris"


def test_an_error_event_after_http_200_fails_the_request() -> None:
    events = [(0.1, {"choices": [{"text": "a"}]}), (0.2, {"error": {"message": "EngineCore died", "code": 500}})]
    summary = summarize_stream(COMPLETIONS, 0.0, events)
    assert summary.error == "EngineCore died"
    assert not summary.done
    assert check_response(200, summary.text, summary.usage, summary.error) == (
        "the stream reported an error: EngineCore died"
    )


GOOD_USAGE = {"prompt_tokens": 5, "completion_tokens": 16}


@pytest.mark.parametrize(
    ("status", "text", "usage", "error", "why"),
    [
        pytest.param(200, "Paris", GOOD_USAGE, None, None, id="good"),
        pytest.param(
            500, "", None, "EngineCore encountered an issue", "HTTP 500: EngineCore encountered an issue", id="500"
        ),
        pytest.param(200, "  \n", GOOD_USAGE, None, "the response has no text", id="blank-text"),
        pytest.param(200, "Paris", None, None, "the response has no token usage", id="no-usage"),
        pytest.param(
            200,
            "Paris",
            {"prompt_tokens": 5, "completion_tokens": 0},
            None,
            "token counts are not positive: prompt_tokens=5, completion_tokens=0",
            id="zero-completion-tokens",
        ),
    ],
)
def test_check_response(
    status: int, text: str, usage: dict[str, int] | None, error: str | None, why: str | None
) -> None:
    assert check_response(status, text, usage, error) == why


@pytest.mark.parametrize(
    ("body", "excerpt"),
    [
        pytest.param(b'{"error": {"message": "boom", "code": 500}}', "boom", id="openai-error"),
        pytest.param(b'{"error": "model not found"}', "model not found", id="string-error"),
        pytest.param(b"Internal Server Error", "Internal Server Error", id="plain-text"),
    ],
)
def test_error_excerpt(body: bytes, excerpt: str) -> None:
    assert error_excerpt(body) == excerpt


# ---------------------------------------------------------------- log causes

# Trimmed from vLLM 0.32.0 (CPU) serving a model with head_dim 8, which its attention rejects.
HEAD_DIM_8_LOG = """\
(APIServer pid=26231) WARNING 11-25 17:38:41 [cpu.py:224] Triton is not installed.
(Worker pid=26721) ERROR 11-25 17:39:05 [multiproc_executor.py:1063] WorkerProc hit an exception.
(Worker pid=26721) ERROR 11-25 17:39:05 [multiproc_executor.py:1063] RuntimeError: Unsupported CPU attention \
configuration: head_dim=8 isa=1 kv_cache_idx=0
(EngineCore pid=26433) ERROR 11-25 17:39:05 [core.py:1512] RuntimeError: Worker failed with error 'Unsupported \
CPU attention configuration: head_dim=8 isa=1 kv_cache_idx=0', please check the stack trace above for the root cause
(APIServer pid=26231) ERROR 11-25 17:39:05 [async_llm.py:906] vllm.v1.engine.exceptions.EngineDeadError: \
EngineCore encountered an issue. See stack trace (above) for the root cause.
INFO:     127.0.0.1:56066 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error
"""


def test_log_cause_skips_the_engine_dead_wrapper_and_the_vllm_prefix() -> None:
    assert log_cause(HEAD_DIM_8_LOG.splitlines()) == (
        "RuntimeError: Worker failed with error 'Unsupported CPU attention configuration: head_dim=8 isa=1 "
        "kv_cache_idx=0', please check the stack trace above for the root cause"
    )


def test_log_cause_finds_a_plain_traceback_line() -> None:
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1', "ImportError: libcudart.so.12: cannot open"]
    assert log_cause(lines) == "ImportError: libcudart.so.12: cannot open"


def test_log_cause_is_none_for_a_clean_log() -> None:
    assert log_cause(["INFO: Started server process", "INFO: Application startup complete."]) is None


# ---------------------------------------------------------------- the report


def attempt(eager: bool, outcome: str, seconds: float = 30.0, **kw: object) -> StartAttempt:
    return StartAttempt(enforce_eager=eager, port=8000, outcome=outcome, seconds=seconds, **kw)  # type: ignore[arg-type]


def ok(endpoint: str) -> RequestResult:
    return RequestResult(endpoint, 200, ttft_s=0.1, total_s=0.3, text="hi", prompt_tokens=3, completion_tokens=4)


def test_report_passes_when_ready_both_requests_good_and_nothing_left(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path), [attempt(False, "ready", 24.5)], [ok(COMPLETIONS), ok(CHAT)], leftover_pids=[], log=tmp_path
    )
    assert report.passed and report.failure is None
    assert report.time_to_ready_s == 24.5
    assert not report.enforce_eager_needed and not report.enforce_eager_used
    data = report.to_dict()
    assert data["status_codes"] == {COMPLETIONS: 200, CHAT: 200}
    assert data["ttft_s"] == {COMPLETIONS: 0.1, CHAT: 0.1}
    json.dumps(data)


def test_report_says_enforce_eager_was_needed_when_only_the_eager_retry_got_ready(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path),
        [attempt(False, "timeout", 600.0), attempt(True, "ready", 40.0)],
        [ok(COMPLETIONS), ok(CHAT)],
        leftover_pids=[],
        log=tmp_path,
    )
    assert report.passed
    assert report.enforce_eager_needed and report.enforce_eager_used
    assert report.time_to_ready_s == 40.0


def test_enforce_eager_asked_for_from_the_start_is_used_but_not_needed(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path, enforce_eager=True),
        [attempt(True, "ready")],
        [ok(COMPLETIONS), ok(CHAT)],
        leftover_pids=[],
        log=tmp_path,
    )
    assert report.enforce_eager_used and not report.enforce_eager_needed


def test_report_of_two_ready_timeouts(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path, ready_timeout_s=600),
        [attempt(False, "timeout", 600.0), attempt(True, "timeout", 600.0)],
        [],
        leftover_pids=[],
        log=tmp_path,
    )
    assert not report.passed
    assert report.failure == "the vLLM server did not answer /health within 600 s and again with --enforce-eager"
    assert report.hint and "timeout" in report.hint


def test_report_names_the_failed_request_and_the_engine_error_from_the_log(tmp_path: Path) -> None:
    bad = RequestResult(COMPLETIONS, 500, error="HTTP 500: EngineCore encountered an issue.")
    report = build_report(
        options(tmp_path),
        [attempt(False, "ready")],
        [bad, RequestResult(CHAT, None, error="not sent: the server had exited with status 1")],
        leftover_pids=[],
        log=tmp_path,
        log_lines=HEAD_DIM_8_LOG.splitlines(),
    )
    assert not report.passed
    assert report.failure is not None
    assert report.failure.startswith("/v1/completions failed: HTTP 500: EngineCore encountered an issue.")
    assert "(server log: RuntimeError: Worker failed with error 'Unsupported CPU attention" in report.failure


def test_report_of_a_crash_before_ready_quotes_the_cause(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path),
        [attempt(False, "exited", 3.0, exit_code=1)],
        [],
        leftover_pids=[],
        log=tmp_path,
        log_lines=["ImportError: libcudart.so.12: cannot open shared object file"],
    )
    assert report.failure == (
        "the vLLM server exited with status 1 before it was ready "
        "(ImportError: libcudart.so.12: cannot open shared object file)"
    )


def test_a_process_left_after_stopping_fails_an_otherwise_good_check(tmp_path: Path) -> None:
    report = build_report(
        options(tmp_path), [attempt(False, "ready")], [ok(COMPLETIONS), ok(CHAT)], leftover_pids=[4242], log=tmp_path
    )
    assert not report.passed
    assert report.failure == "processes of the server were still running after it was stopped: [4242]"
    assert report.hint == "stop them with: kill -9 4242"


# ---------------------------------------------------------------- default model


def test_hf_hub_cache_follows_huggingface_precedence(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert hf_hub_cache({}, home) == home / ".cache" / "huggingface" / "hub"
    assert hf_hub_cache({"XDG_CACHE_HOME": "/x"}, home) == Path("/x/huggingface/hub")
    assert hf_hub_cache({"HF_HOME": "/hf", "XDG_CACHE_HOME": "/x"}, home) == Path("/hf/hub")
    assert hf_hub_cache({"HF_HUB_CACHE": "/c", "HF_HOME": "/hf"}, home) == Path("/c")


def _cached_model(hub: Path, repo: str, weights: int, *, config: bool = True) -> Path:
    """A model as huggingface_hub lays it out: blobs, and a snapshot of symlinks to them."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / f"{abs(hash(repo))}"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"\0" * weights)
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(blob)
    if config:
        (snapshot / "config.json").write_text("{}")
    return snapshot


def test_default_model_is_the_smallest_complete_instruct_model_in_the_cache(tmp_path: Path) -> None:
    hub = tmp_path / "hub"
    _cached_model(hub, "Qwen/Qwen2.5-1.5B-Instruct", 3000)
    small = _cached_model(hub, "Qwen/Qwen2.5-0.5B-Instruct", 1000)
    _cached_model(hub, "gpt2", 10)  # not an instruct model
    _cached_model(hub, "org/Tiny-Chat", 5, config=False)  # incomplete download
    assert find_cached_instruct_model(hub) == small
    assert find_cached_instruct_model(hub, max_bytes=500) is None


def test_no_cache_means_no_default_model(tmp_path: Path) -> None:
    assert find_cached_instruct_model(tmp_path / "nowhere") is None
