"""The unit tier is pure: a test here that starts a process or opens a socket fails at once,
naming what it tried, instead of quietly turning the fast tier slow (git, nvcc and loopback
servers belong in tests/integration)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Generator, Iterator

import git  # noqa: F401
import pytest

from tests import artifacts

# gitpython runs `git version` when it is first imported. Importing it here, before any test is
# guarded, keeps a module that imports it lazily (a step imported inside a test) from counting as
# the test starting a process — which made test_config.py fail when run alone.
_BLOCKED = {"subprocess.Popen", "os.posix_spawn", "os.fork", "os.system", "os.exec", "socket.bind", "socket.connect"}
_guarding = False


def _refuse_the_outside_world(event: str, args: tuple[object, ...]) -> None:
    if _guarding and event in _BLOCKED:
        raise RuntimeError(f"a unit test ran {event} {args[:2]!r}: processes and sockets belong in tests/integration")


sys.addaudithook(_refuse_the_outside_world)  # audit hooks cannot be removed: the flag switches it


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    global _guarding
    _guarding = True
    try:
        yield
    finally:
        _guarding = False


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fetch the real vLLM sdists the collected unit tests read (`@pytest.mark.vllm_sdists`)
    before any test runs under the guard: the first run on a machine downloads them into the
    per-user cache (tests/artifacts.py); the tests themselves only read a file, or skip."""
    wanted = {version for item in session.items for mark in item.iter_markers("vllm_sdists") for version in mark.args}
    for version in sorted(wanted):
        artifacts.fetch_ahead(version)


# Setup as well as the call: a session fixture (the git-made upstream, the loopback index) is
# set up inside the first test that asks for it. Teardown is left open: a session fixture an
# integration test started may be torn down after the last unit test.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    with _guarded():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _guarded():
        return (yield)
