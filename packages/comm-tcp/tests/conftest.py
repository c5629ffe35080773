"""Fixtures of comm-tcp's tests; helpers that tests import are in ``tcp_support``."""

from __future__ import annotations

import contextlib
import os
import socket
import warnings
import weakref
from collections.abc import Callable, Iterator

import pytest

import comm_core
from comm_core import Comm
from comm_core.testing import open_comms

_LOOPS = [pytest.param(name, marks=pytest.mark.comm_loop(name)) for name in ("asyncio", "uvloop")]


#: Tests marked ``large`` need gigabytes of memory (messages above 2 GiB): they run only
#: when this variable is set to 1, as CI does (see docs/development.rst).
LARGE_TESTS_VARIABLE = "COMM_LARGE_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``large`` unless ``COMM_LARGE_TESTS=1``."""
    if os.environ.get(LARGE_TESTS_VARIABLE, "0") not in ("", "0"):
        return
    skip = pytest.mark.skip(
        reason=f"needs about 4.5 GB of memory: set {LARGE_TESTS_VARIABLE}=1 to run it"
    )
    for item in items:
        if item.get_closest_marker("large"):
            item.add_marker(skip)


@pytest.fixture(params=_LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Runs a test once on asyncio and once on uvloop (skipped where uvloop is missing).

    Modules that should run on both loops say ``pytestmark = pytest.mark.usefixtures("loop_name")``.
    """
    name: str = request.param
    return name


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Default settings (no COMM_* variables), with fast connect retries."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    with comm_core.configure(retry_delay_min=0.001, retry_delay_max=0.02):
        yield


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves a comm open or lets a comm, socket or transport be collected
    unclosed; the comms it left are aborted so that later tests do not see them."""
    before: weakref.WeakSet[Comm] = weakref.WeakSet(open_comms(collect=False))
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        leaked = [comm for comm in open_comms() if comm not in before]
    problems = [f"left open: {comm!r}" for comm in leaked]
    problems += [f"{w.message}" for w in caught if issubclass(w.category, ResourceWarning)]
    for comm in leaked:
        with contextlib.suppress(Exception):
            comm.abort()
    if problems:
        pytest.fail("the test leaked:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def raw_socket() -> Iterator[Callable[..., socket.socket]]:
    """A factory of non-blocking TCP sockets (for ``loop.sock_*``), all closed at teardown."""
    sockets: list[socket.socket] = []

    def make(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sockets.append(sock)
        sock.setblocking(False)
        return sock

    yield make
    for sock in sockets:
        sock.close()
