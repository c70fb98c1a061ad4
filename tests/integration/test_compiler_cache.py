"""The compiler cache for real: the example upstream's CUDA objects compiled (CMake, Ninja, nvcc
behind ccache) against a real `redis-server` on 127.0.0.1, Redis PING over a real socket, and a
real sccache-dist scheduler and build server.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uv

from spark_build.compile import cache as cc
from spark_build.compile import cache_mode as cm
from spark_build.compile import cache_plan as cp
from spark_build.compile import cache_stats as cs
from spark_build.compile import distcache
from spark_build.proc import Runner
from spark_build.upstream.example import TEMPLATE_DIR
from spark_build.venv import Installer
from tests.conftest import CUDA_HOME, needs_nvcc

UV = uv.find_uv_bin()


# --- Redis PING over a socket ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _one_line_server(reply: bytes) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers each RESP command with `reply`."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as lines:
                while line := lines.readline():
                    if line.rstrip() == b"PING" or line.rstrip() == b"AUTH":
                        conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        thread.join(timeout=5)


def test_redis_ping_sees_pong_and_reports_an_error_reply_or_a_closed_port() -> None:
    with _one_line_server(b"+PONG\r\n") as port:
        assert cc.redis_reachable(cm.RedisEndpoint("127.0.0.1", port)) == cp.Reachability(True, "PONG")
    with _one_line_server(b"-DENIED Redis is running in protected mode\r\n") as port:
        denied = cc.redis_reachable(cm.RedisEndpoint("127.0.0.1", port))
    assert not denied.ok and "protected mode" in denied.detail
    closed = cc.redis_reachable(cm.RedisEndpoint("127.0.0.1", _free_port()), timeout=1.0)
    assert not closed.ok and closed.detail


# --- integration: real compiles, a real Redis, a real sccache-dist ------------------------

CUDA_OBJECTS = ("CMakeFiles/_C.dir/csrc/saxpy.cu.o", "CMakeFiles/_C.dir/csrc/device.cu.o")


def _run(argv: list[str | Path], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != 0:
        pytest.fail(f"{argv} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def tool_venv(tmp_path_factory: pytest.TempPathFactory, uv_cache: Path) -> Path:
    """A build venv as the compile step leaves it: CMake and Ninja from PyPI (the example needs
    CMake >= 3.26) and both cache tools, installed the way `compiler_cache` installs them."""
    venv = tmp_path_factory.mktemp("cache-tools") / "venv"
    env = {**os.environ, "UV_CACHE_DIR": str(uv_cache)}
    _run([UV, "venv", "--python", sys.executable, venv], env=env)
    python = venv / "bin" / "python"
    _run([UV, "pip", "install", "--python", python, "cmake>=3.26.1", "ninja"], env=env)
    installer = Installer(uv_cache_dir=uv_cache)
    _run(installer.install_argv(python, cp.tool_requirement("ccache")), env=env)
    _run(installer.install_argv(python, cp.tool_requirement("sccache")), env=env)
    return venv


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[cm.RedisEndpoint]:
    """Debian's redis-server on 127.0.0.1 and a free port, stopped when the test ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: these tests need Debian's package (apt-get install -y redis-server)")
    port = _free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    log = tmp_path / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = cm.RedisEndpoint("127.0.0.1", port, 1)
    try:
        deadline = time.monotonic() + 10
        while not cc.redis_reachable(endpoint, timeout=0.5).ok:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class StepCtx:
    """The slice of `steps.Context` that `compiler_cache.start/finish` use, over a real Runner."""

    venv: Path
    log_dir: Path
    uv_cache: Path
    runner: Runner = field(default_factory=Runner)
    notes: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def log(self, step: str) -> Path:
        return self.log_dir / f"{step}.log"

    def run(self, step: str, argv: list[str | os.PathLike[str]], **kwargs: object) -> int:
        return self.runner.run(argv, log=self.log(step), step=step, **kwargs)  # type: ignore[arg-type]

    def install(self, step: str, *args: str | os.PathLike[str], **kwargs: object) -> int:
        installer = Installer(uv_cache_dir=self.uv_cache)
        return self.run(step, installer.install_argv(self.python, *args), env=installer.env(), **kwargs)


def build_example_objects(workdir: Path, venv: Path, cache_vars: dict[str, str]) -> cs.CacheStats:
    """Configure the example upstream in `workdir/src` and build its CUDA objects, as vLLM's
    setup.py runs CMake, with the compiler launcher from the cache environment. Returns what
    ccache counted for the objects alone (configure's own try-compiles go through it too)."""
    assert CUDA_HOME is not None
    src = workdir / "src"
    shutil.copytree(TEMPLATE_DIR, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    env = {
        **os.environ,
        **cache_vars,
        "TORCH_CUDA_ARCH_LIST": "12.1a",
        "PATH": os.pathsep.join([str(venv / "bin"), str(CUDA_HOME / "bin"), os.environ.get("PATH", "")]),
    }
    build = src / "build"
    nvcc = CUDA_HOME / "bin" / "nvcc"
    python = f"-DSPARK_EXAMPLE_PYTHON_EXECUTABLE={sys.executable}"
    _run(["cmake", "-S", src, "-B", build, "-G", "Ninja", f"-DCMAKE_CUDA_COMPILER={nvcc}", python], env=env)
    ccache = cp.tool_path(venv, "ccache")
    before = cs.query_stats("ccache", ccache, env)
    _run(["cmake", "--build", build, "-j", "2", *[f"--target={target}" for target in CUDA_OBJECTS]], env=env)
    after = cs.query_stats("ccache", ccache, env)
    for target in CUDA_OBJECTS:
        assert (build / target).is_file(), target
    assert after is not None
    return cs.stats_delta(before, after)


def _start(ctx: StepCtx, workdir: Path, mode: cm.CacheMode) -> cc.ActiveCache:
    return cc.start(ctx, "compile", mode=mode, size_limit=2**30, workdir=workdir, redis_timeout=1.0)


@needs_nvcc
def test_a_second_work_dir_gets_its_cuda_objects_from_the_first_ones_redis(
    tool_venv: Path, redis_server: cm.RedisEndpoint, tmp_path: Path, uv_cache: Path
) -> None:
    mode = cm.CacheMode("redis", redis_server)
    objects, records = [], []
    for name in ("spark-a", "spark-b"):  # as two machines: own work dirs at other paths, own local caches
        workdir = tmp_path / name / "work"
        ctx = StepCtx(tool_venv, workdir / "logs", uv_cache)
        active = _start(ctx, workdir, mode)
        assert active.plan.storage == "redis" and ctx.notes == []
        objects.append(build_example_objects(workdir, tool_venv, active.env))
        records.append(cc.finish(ctx, "compile", active))

    # Hits across paths need every absolute path in a CUDA compile line to be one ccache can
    # rewrite under CCACHE_BASEDIR: the example's -ffile-prefix-map flags are host options
    # nvcc forwards, not -Xcompiler=… strings ccache cannot look into (benchmarks/CACHE.md).
    first, second = objects
    assert (first.hits, first.misses) == (0, len(CUDA_OBJECTS))
    assert (second.hits, second.misses, second.hit_rate) == (len(CUDA_OBJECTS), 0, 1.0)
    assert second.remote_hits == len(CUDA_OBJECTS)  # from Redis: spark-b's local cache was empty
    stats = records[1]["stats"]
    assert isinstance(stats, dict) and stats["hits"] >= len(CUDA_OBJECTS) and stats["remote_errors"] == 0


@needs_nvcc
def test_an_unreachable_redis_builds_with_a_warning_and_caches_locally(
    tool_venv: Path, tmp_path: Path, uv_cache: Path
) -> None:
    workdir = tmp_path / "work"
    ctx = StepCtx(tool_venv, workdir / "logs", uv_cache)
    dead = cm.RedisEndpoint("127.0.0.1", _free_port(), 0)
    active = _start(ctx, workdir, cm.CacheMode("redis", dead))
    assert active.plan.storage == "local" and "CCACHE_REMOTE_STORAGE" not in active.env
    (warning,) = ctx.notes
    assert dead.display in warning and "caching locally" in warning

    cold = build_example_objects(workdir, tool_venv, active.env)
    shutil.rmtree(workdir / "src")  # a fresh tree, as after a new clone: only the cache is left
    warm = build_example_objects(workdir, tool_venv, active.env)
    record = cc.finish(ctx, "compile", active)

    assert (cold.misses, warm.hits, warm.misses) == (len(CUDA_OBJECTS), len(CUDA_OBJECTS), 0)
    assert warm.remote_errors == 0  # Redis was left out, not tried and failed
    assert (record["storage"], record["warnings"]) == ("local", [warning])
    assert any(path.is_file() for path in (workdir / "compiler-cache" / "ccache").rglob("*"))


@needs_nvcc
def test_redis_dying_after_the_check_costs_only_remote_errors_never_the_build(tool_venv: Path, tmp_path: Path) -> None:
    dead = cm.RedisEndpoint("127.0.0.1", _free_port(), 0)
    plan = cp.plan_cache(cm.CacheMode("redis", dead), redis_check=cp.Reachability(True, "PONG"))
    tool_bin = cp.tool_path(tool_venv, "ccache")
    env = cp.cache_env(plan, tool_bin=tool_bin, cache_dir=tmp_path / "cache", size_limit=2**30, base_dir=tmp_path)

    objects = build_example_objects(tmp_path, tool_venv, env)

    assert objects.misses == len(CUDA_OBJECTS) and objects.remote_errors >= len(CUDA_OBJECTS)


# A urlsafe-base64 key starts with "-" one time in 64; the CLI must get it as `--secret-key=KEY`.
LEADING_DASH_KEY = base64.urlsafe_b64encode(bytes([0xF8] + [7] * 31)).decode().rstrip("=")


@pytest.mark.parametrize("key", [distcache.new_secrets().secret_key, LEADING_DASH_KEY], ids=["fresh", "leading-dash"])
def test_the_server_token_is_the_one_sccache_dist_itself_generates(tool_venv: Path, key: str) -> None:
    dist = tool_venv / "bin" / "sccache-dist"
    argv: list[str | Path] = [dist, "auth", "generate-jwt-hs256-server-token", f"--secret-key={key}"]
    argv += ["--server", "10.0.0.2:10501"]
    assert distcache.server_token(key, "10.0.0.2:10501") == _run(argv).strip()


@contextlib.contextmanager
def _daemon(argv: list[str | Path], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SCCACHE_NO_DAEMON": "1", "RUST_LOG": "sccache=info"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{proc.args!r} is not listening on {port}:\n{log.read_text()}")
        time.sleep(0.1)


def _client_compile(venv: Path, workdir: Path, client_conf: Path, sources: list[Path]) -> cs.CacheStats:
    """Compile `sources` through the sccache client with this client config; its counters."""
    assert CUDA_HOME is not None
    plan = cp.plan_cache(cm.CacheMode("local"), dist="http://unused")
    tool_bin = cp.tool_path(venv, "sccache")
    (workdir / "cache").mkdir(parents=True)  # holds the sccache server's socket
    cache_vars = cp.cache_env(
        plan,
        tool_bin=tool_bin,
        cache_dir=workdir / "cache",
        size_limit=2**30,
        base_dir=workdir,
        dist_config=client_conf,
    )
    env = {**os.environ, **cache_vars, "PATH": os.pathsep.join([str(CUDA_HOME / "bin"), os.environ["PATH"]])}
    before, after = cp.server_commands(plan, tool_bin)
    for argv in before:
        subprocess.run(argv, env=env, capture_output=True, check=False)
    try:
        for source in sources:
            if source.suffix == ".cpp":
                compiler: list[str | Path] = ["g++", "-O2"]
            else:
                compiler = [CUDA_HOME / "bin" / "nvcc", "--generate-code=arch=compute_121a,code=[sm_121a]"]
            _run([tool_bin, *compiler, "-c", source, "-o", source.with_suffix(".o")], env=env)
        stats = cs.query_stats("sccache", tool_bin, env)
        assert stats is not None
        return stats
    finally:
        for argv in after:
            subprocess.run(argv, env=env, capture_output=True, check=False)


@needs_nvcc
def test_sccache_dist_compiles_cpp_and_cuda_on_a_build_server_and_falls_back_when_the_scheduler_is_gone(
    tool_venv: Path, tmp_path: Path
) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail(
            "bwrap not found: sccache-dist's build server needs Debian's package (apt-get install -y bubblewrap)"
        )
    scheduler_port, server_port = _free_port(), _free_port()
    files = distcache.cluster_files(
        scheduler_host="127.0.0.1",
        server_hosts=["127.0.0.1"],
        dist_secrets=distcache.new_secrets(),
        root=tmp_path / "state",
        scheduler_port=scheduler_port,
        server_port=server_port,
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "state").mkdir()  # the server creates its sandbox and toolchain dirs, not their parent
    unreachable = tmp_path / "client-unreachable.conf"
    unreachable.write_text(files["client.conf"].replace(f":{scheduler_port}", f":{_free_port()}"))
    (tmp_path / "k.cu").write_text("__global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }\n")
    (tmp_path / "f.cpp").write_text("int triple(int x) { return 3 * x; }\n")
    (tmp_path / "g.cpp").write_text("int quadruple(int x) { return 4 * x; }\n")
    dist = tool_venv / "bin" / "sccache-dist"

    with _daemon([dist, "scheduler", "--config", tmp_path / "scheduler.conf"], tmp_path / "scheduler.log") as sched:
        _wait_for_port(scheduler_port, sched, tmp_path / "scheduler.log")
        with _daemon([dist, "server", "--config", tmp_path / "server-127.0.0.1.conf"], tmp_path / "server.log") as srv:
            _wait_for_port(server_port, srv, tmp_path / "server.log")
            sources = [tmp_path / "f.cpp", tmp_path / "k.cu"]
            remote = _client_compile(tool_venv, tmp_path / "client", tmp_path / "client.conf", sources)

    # The .cpp and nvcc's device and host steps ran on the build server, inside bubblewrap.
    assert remote.dist_compiles >= 2, (tmp_path / "server.log").read_text()[-3000:]
    assert (tmp_path / "f.o").stat().st_size > 0 and (tmp_path / "k.o").stat().st_size > 0

    local = _client_compile(tool_venv, tmp_path / "client-2", unreachable, [tmp_path / "g.cpp"])
    assert (local.misses, local.dist_compiles) == (1, 0)
    assert (tmp_path / "g.o").stat().st_size > 0
