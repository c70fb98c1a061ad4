"""Real loopback servers standing in for the internet the tests cannot reach.

- `WheelIndex`: a PEP 503 index over HTTP on 127.0.0.1 (stands in for PyTorch's cu130 index).
- `GitServer`: real `git daemon` behind a throttling TCP proxy (stands in for GitHub over a
  slow link, so a test can kill the build while the clone is still fetching).
"""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
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
