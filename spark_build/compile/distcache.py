"""sccache-dist for two or more Sparks: the scheduler, build-server and client configuration
as text from a few inputs, and what the extra machines should buy (docs/sccache-dist.md).

Pure apart from `new_secrets` (randomness). The server token is the HS256 JWT that
`sccache-dist auth generate-jwt-hs256-server-token` prints, computed here so the whole
cluster's files come from one call on one machine; tests check it against the binary.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from spark_build.errors import UsageError

SCHEDULER_PORT = 10600
SERVER_PORT = 10501
_URL_HINT = "give the scheduler as --dist http://HOST:10600 (the machine running `sccache-dist scheduler`)"


def parse_scheduler_url(text: str) -> str:
    """`http://HOST:PORT` from `--dist`; a bare `HOST` or `HOST:PORT` gets http:// and 10600."""
    value = str(text).strip().rstrip("/")
    if not value:
        raise UsageError("--dist needs the scheduler's address", hint=_URL_HINT)
    if "://" not in value:
        value = f"http://{value}"
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--dist '{text}' is not a scheduler URL", hint=_URL_HINT)
    if parts.path or parts.query or parts.fragment or parts.username:
        raise UsageError(f"--dist '{text}': the scheduler URL is only scheme, host and port", hint=_URL_HINT)
    try:
        port = parts.port or SCHEDULER_PORT
    except ValueError:
        raise UsageError(f"--dist '{text}': the port is not a number from 1 to 65535", hint=_URL_HINT) from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class DistSecrets:
    """`client_token` goes to every client and the scheduler; `secret_key` stays on the
    scheduler's machine and signs each build server's token."""

    client_token: str
    secret_key: str


def new_secrets() -> DistSecrets:
    return DistSecrets(client_token=_b64(secrets.token_bytes(32)), secret_key=_b64(secrets.token_bytes(32)))


def server_token(secret_key: str, server_addr: str) -> str:
    """The JWT a build server shows the scheduler, bound to its `public_addr` (HOST:PORT)."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "HS256"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps({"exp": 0, "server_id": server_addr}, separators=(",", ":")).encode())
    key = base64.urlsafe_b64decode(secret_key + "=" * (-len(secret_key) % 4))
    signature = hmac.new(key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(signature)}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _toml_value(value: object) -> str:
    # JSON strings and numbers are valid TOML basic strings and integers.
    return json.dumps(value)


def _toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    lines: list[str] = []
    for name, values in sections.items():
        if name:
            lines.append(f"\n[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def scheduler_config(listen_addr: str, dist_secrets: DistSecrets) -> str:
    """scheduler.conf. It listens on the LAN address the clients and servers reach (plain
    HTTP: keep it on the Sparks' private link, as the tokens travel in the clear)."""
    return _toml(
        {
            "": {"public_addr": listen_addr},
            "client_auth": {"type": "token", "token": dist_secrets.client_token},
            "server_auth": {"type": "jwt_hs256", "secret_key": dist_secrets.secret_key},
        }
    )


def server_config(
    *,
    public_addr: str,
    scheduler_url: str,
    token: str,
    cache_dir: Path,
    build_dir: Path,
    bwrap_path: Path = Path("/usr/bin/bwrap"),
    toolchain_cache_size: int = 10 * 2**30,
) -> str:
    """server.conf for one build server: it unpacks each client's toolchain (gcc, nvcc…) into
    `cache_dir` and compiles inside a bubblewrap sandbox under `build_dir` (root needed)."""
    return _toml(
        {
            "": {
                "cache_dir": str(cache_dir),
                "public_addr": public_addr,
                "scheduler_url": scheduler_url,
                "toolchain_cache_size": toolchain_cache_size,
            },
            "builder": {"type": "overlay", "build_dir": str(build_dir), "bwrap_path": str(bwrap_path)},
            "scheduler_auth": {"type": "jwt_token", "token": token},
        }
    )


def client_config(
    *, scheduler_url: str, client_token: str, toolchain_dir: Path, toolchain_cache_size: int = 5 * 2**30
) -> str:
    """The client's [dist] section, handed to sccache as SCCACHE_CONF. With the scheduler down
    the client compiles locally: a dead scheduler slows the build, it never fails it."""
    return _toml(
        {
            "dist": {
                "scheduler_url": scheduler_url,
                "toolchains": [],
                "toolchain_cache_size": toolchain_cache_size,
                "cache_dir": str(toolchain_dir),
            },
            "dist.auth": {"type": "token", "token": client_token},
        }
    )


def cluster_files(
    *,
    scheduler_host: str,
    server_hosts: Sequence[str],
    dist_secrets: DistSecrets,
    root: Path,
    scheduler_port: int = SCHEDULER_PORT,
    server_port: int = SERVER_PORT,
) -> dict[str, str]:
    """Every file a cluster needs, by name: `scheduler.conf`, one `server-<host>.conf` per
    build server, `client.conf` (any Spark that builds) and `client-token`. `root` is where
    each machine keeps its sccache-dist state (toolchains, sandboxes)."""
    url = f"http://{scheduler_host}:{scheduler_port}"
    files = {
        "scheduler.conf": scheduler_config(f"{scheduler_host}:{scheduler_port}", dist_secrets),
        "client.conf": client_config(
            scheduler_url=url, client_token=dist_secrets.client_token, toolchain_dir=root / "client-toolchains"
        ),
        "client-token": dist_secrets.client_token + "\n",
    }
    for host in server_hosts:
        addr = f"{host}:{server_port}"
        files[f"server-{host}.conf"] = server_config(
            public_addr=addr,
            scheduler_url=url,
            token=server_token(dist_secrets.secret_key, addr),
            cache_dir=root / "server-toolchains",
            build_dir=root / "server-builds",
        )
    return files


# --- what a second Spark buys -----------------------------------------------------------


def makespan(durations: Iterable[float], slots: int) -> float:
    """Seconds to compile objects of these durations on `slots` parallel jobs, longest first
    (LPT): an optimistic bound, since Ninja follows the build graph, not object size."""
    if slots < 1:
        raise ValueError("slots must be at least 1")
    finish = [0.0] * slots
    for seconds in sorted(durations, reverse=True):
        heapq.heapreplace(finish, finish[0] + seconds)
    return max(finish)


@dataclass(frozen=True)
class DistEstimate:
    objects: int
    cpu_seconds: float
    longest_seconds: float
    one_machine_seconds: float
    cluster_seconds: float

    @property
    def speedup(self) -> float:
        return self.one_machine_seconds / self.cluster_seconds


def estimate(profile: Mapping[str, object], *, jobs_per_machine: int, machines: int) -> DistEstimate:
    """From a compile profile (`objects`: `wall_s` each): one machine's compile against
    `machines` machines running the same number of jobs each."""
    objects = profile.get("objects")
    if not isinstance(objects, list) or not objects:
        raise ValueError("the profile has no objects")
    walls = [float(o["wall_s"]) for o in objects]
    return DistEstimate(
        objects=len(walls),
        cpu_seconds=sum(float(o.get("cpu_s", o["wall_s"])) for o in objects),
        longest_seconds=max(walls),
        one_machine_seconds=makespan(walls, jobs_per_machine),
        cluster_seconds=makespan(walls, jobs_per_machine * machines),
    )
