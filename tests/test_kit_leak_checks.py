"""The conformance kit's teardown checks: a test that leaves a comm, a listener or a
descriptor behind fails, naming it (what the kit's users get for their own tests too)."""

from __future__ import annotations

import sys

import pytest

pytest_plugins = ["pytester"]

LEAKY_SUITE = """
import socket

import comm_core
from comm_core.testing import BackendConformance, echo_handler


class TestSuite(BackendConformance):
    scheme = "tcp"
    listen_address = "tcp://127.0.0.1:0"

    async def test_leaves_a_listener_running(self):
        listener = comm_core.listen("tcp://127.0.0.1:0", echo_handler)
        await listener.start()

    async def test_leaves_a_socket_open(self):
        self.sock = socket.socket()  # kept alive by the test instance, never closed

    async def test_a_listener_that_never_started_is_not_a_leak(self):
        comm_core.listen("tcp://127.0.0.1:0", echo_handler)

    async def test_stopped_listener_is_not_a_leak(self):
        async with comm_core.listen("tcp://127.0.0.1:0", echo_handler):
            pass
"""


OURS = [
    "test_leaves_a_listener_running",
    "test_leaves_a_socket_open",
    "test_a_listener_that_never_started_is_not_a_leak",
    "test_stopped_listener_is_not_a_leak",
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the descriptor check is Linux's")
def test_kit_reports_listeners_and_descriptors_left_behind(pytester: pytest.Pytester) -> None:
    pytest.importorskip("comm_tcp")
    pytester.makepyfile(test_leaky=LEAKY_SUITE)
    result = pytester.runpytest_subprocess(
        "-p",
        "comm_core.testing.plugin",
        "-W",
        "ignore::ResourceWarning",
        "-W",
        "ignore::pytest.PytestUnraisableExceptionWarning",
        *(f"test_leaky.py::TestSuite::{name}" for name in OURS),
    )
    # A test that fails at teardown counts as passed and as an error.
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*garbage-collected: <TCPListener tcp://127.0.0.1:*> was garbage-*",
            "*left open: file descriptor * (socket:*)*",
        ]
    )
