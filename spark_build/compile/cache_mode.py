"""What `--cache` asks for: `auto`, `none`, `local` or a Redis URL, parsed once into a value.

Apart from the plan and the process side so that config (which validates every option once,
before anything runs) needs only this: a malformed Redis URL is exit 2 at the command line,
not a failure 20 minutes into a compile.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from spark_build.errors import UsageError
from spark_build.sizes import parse_mem_size

DEFAULT_SIZE_LIMIT = "20G"  # a vLLM build for one arch fills ~1–3 GB; room for several refs
REDIS_DEFAULT_PORT = 6379
MODES = ("auto", "none", "local", "redis://HOST:PORT/DB")
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
