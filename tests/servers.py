"""Real loopback servers standing in for the internet the tests cannot reach.

- `WheelIndex`: a PEP 503 index over HTTP on 127.0.0.1 (stands in for PyTorch's cu130 index).
- `official_server`: PyPI's simple API (PEP 691 JSON / PEP 503 HTML) and GitHub's release API with
  asset digests and downloads, the two places vLLM publishes its official wheels.
- `GitServer`: real `git daemon` behind a throttling TCP proxy (stands in for GitHub over a
  slow link, so a test can kill the build while the clone is still fetching).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def wheel_index(root: Path, wheels: list[Path]) -> Iterator[str]:
    """Serve `wheels` as a PEP 503 simple index; yields the index URL."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    simple = root / "simple"
    projects: dict[str, list[Path]] = {}
    for wheel in wheels:
        projects.setdefault(canonicalize_name(parse_wheel_filename(wheel.name)[0]), []).append(wheel)
    for project, files in projects.items():
        folder = simple / project
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for wheel in files:
            (folder / wheel.name).symlink_to(wheel)
            links.append(f'<a href="{html.escape(wheel.name)}">{html.escape(wheel.name)}</a>')
        (folder / "index.html").write_text("<html><body>" + "\n".join(links) + "</body></html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class _Throttle(threading.Thread):
    """Forwards one connection, sending the server's bytes at `rate` bytes per second."""

    def __init__(self, client: socket.socket, upstream_port: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.client, self.upstream_port, self.rate = client, upstream_port, rate

    def run(self) -> None:
        with (
            contextlib.suppress(OSError),
            self.client,
            socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream,
        ):
            threading.Thread(target=self._pump, args=(self.client, upstream, 0), daemon=True).start()
            self._pump(upstream, self.client, self.rate)

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, rate: int) -> None:
        chunk = 8192
        with contextlib.suppress(OSError):
            while data := source.recv(chunk):
                target.sendall(data)
                if rate:
                    time.sleep(len(data) / rate)
            target.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def git_server(base: Path, *, rate: int = 0) -> Iterator[str]:
    """`git daemon` exporting the repositories under `base`; yields `git://127.0.0.1:PORT/`."""
    daemon_port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={daemon_port}",
            "--informative-errors",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            _Throttle(client, daemon_port, rate).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    try:
        _wait_for_port(daemon_port)
        acceptor.start()
        yield f"git://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        acceptor.join(timeout=2)
        listener.close()
        daemon.terminate()
        daemon.wait(timeout=10)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class OfficialHost:
    """What the stand-in for PyPI and GitHub serves; tests add wheels and releases to it."""

    url: str = ""
    files: dict[str, Path] = field(default_factory=dict)  # /files/<name> → wheel
    index: list[tuple[str, str]] = field(default_factory=list)  # (filename, sha256 the page publishes)
    releases: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)  # tag → (asset, digest)
    json_api: bool = True  # PEP 691 JSON when asked for it; False: PEP 503 HTML only, as a plain mirror serves

    def add(self, wheel: Path, *, published_sha256: str | None = None) -> str:
        self.files[wheel.name] = wheel
        return published_sha256 or sha256(wheel)

    def publish_on_index(self, wheel: Path, *, published_sha256: str | None = None) -> None:
        """Serve `wheel` and list it on the simple index (the page's sha256: its own, or the one given)."""
        self.index.append((wheel.name, self.add(wheel, published_sha256=published_sha256)))

    @property
    def simple(self) -> str:
        return f"{self.url}/simple"

    @property
    def release_api(self) -> str:
        return f"{self.url}/repos/vllm-project/vllm/releases"


def _handler(host: OfficialHost) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def reply(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path == "/simple/vllm/":
                if host.json_api and "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
                    files = [
                        {"filename": name, "url": f"/files/{name}", "hashes": {"sha256": sha}}
                        for name, sha in host.index
                    ]
                    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "vllm", "files": files})
                    return self.reply(body.encode(), "application/vnd.pypi.simple.v1+json")
                links = "".join(f'<a href="/files/{n.replace("+", "%2B")}#sha256={s}">{n}</a>\n' for n, s in host.index)
                return self.reply(f"<html><body>{links}</body></html>".encode(), "text/html")
            prefix = "/repos/vllm-project/vllm/releases/tags/"
            if path.startswith(prefix) and path[len(prefix) :] in host.releases:
                assets = [
                    {
                        "name": name,
                        "digest": f"sha256:{digest}" if digest else None,
                        "browser_download_url": f"{host.url}/files/{name.replace('+', '%2B')}",
                    }
                    for name, digest in host.releases[path[len(prefix) :]]
                ]
                return self.reply(
                    json.dumps({"tag_name": path[len(prefix) :], "assets": assets}).encode(), "application/json"
                )
            name = path.removeprefix("/files/").replace("%2B", "+")
            if path.startswith("/files/") and name in host.files:
                return self.reply(host.files[name].read_bytes(), "application/octet-stream")
            self.send_error(404)

    return Handler


@contextlib.contextmanager
def official_server() -> Iterator[OfficialHost]:
    """An `OfficialHost` served on 127.0.0.1; tests add wheels and releases while it runs."""
    host = OfficialHost()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(host))
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield host
    finally:
        server.shutdown()
        server.server_close()
