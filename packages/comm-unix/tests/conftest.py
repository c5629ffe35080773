"""comm-unix's tests need Unix domain sockets: on an OS without them, none is collected."""

from __future__ import annotations

import socket

import pytest

if not hasattr(socket, "AF_UNIX"):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(
    params=[
        pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio")),
        pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop")),
    ]
)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Runs a test on asyncio's selector loop (comm-unix's own transports) and on
    uvloop (the loop's transports), where uvloop is installed."""
    name: str = request.param
    return name
