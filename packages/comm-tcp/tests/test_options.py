"""Socket options (Nagle, keepalive, dead-peer timeout) and the facts in ``extra_info``."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import comm_core
from comm_core import Comm
from tcp_support import (
    IPV4,
    IPV6,
    Served,
    connected,
    hold,
    listener_turns_options_off,
    needs_ipv6,
    needs_linux,
    serving,
    sockopt,
    tcp_address,
)

pytestmark = pytest.mark.usefixtures("loop_name")


async def test_runs_on_the_loop_the_fixture_names(loop_name: str) -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.partition(".")[0] == loop_name


def check_keepalive_timers(comm: Comm, idle: int, interval: int, user_timeout_ms: int) -> None:
    assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == idle
    assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == interval
    assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
    assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == user_timeout_ms


async def test_defaults_on_both_ends() -> None:
    async with serving(hold) as served, connected(served.address()) as client:
        server = await served.accepted()
        for comm in (client, server):
            assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert sockopt(comm, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            info = comm.extra_info
            assert (info["nodelay"], info["keepalive"], info["dead_peer_timeout"]) == (
                True,
                True,
                30.0,
            )
            assert info["max_message_size"] == comm_core.get_setting("max_message_size")


@needs_linux
async def test_default_dead_peer_timeout_sets_keepalive_and_user_timeout() -> None:
    async with serving(hold) as served, connected(served.address()) as client:
        server = await served.accepted()
        for comm in (client, server):
            check_keepalive_timers(comm, idle=10, interval=5, user_timeout_ms=30_000)


async def test_options_from_connection_args() -> None:
    """Each side applies its own connection arguments, also to turn defaults off."""
    listen_args: dict[str, Any] = {"dead_peer_timeout": 3}
    connect_args: dict[str, Any] = {"nodelay": False, "keepalive": False, "dead_peer_timeout": 6.5}
    async with (
        serving(hold, **listen_args) as served,
        connected(served.address(), **connect_args) as client,
    ):
        server = await served.accepted()
        assert sockopt(client, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sockopt(client, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert sockopt(server, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sockopt(server, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert client.extra_info["nodelay"] is False
        assert client.extra_info["keepalive"] is False
        assert client.extra_info["dead_peer_timeout"] == 6.5
        assert server.extra_info["dead_peer_timeout"] == 3.0
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sockopt(client, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6500
            check_keepalive_timers(server, idle=1, interval=1, user_timeout_ms=3000)


async def test_a_listener_turns_options_off_for_the_connections_it_accepts() -> None:
    """Accepted connections get the listener's options (on Linux, under comm-tcp's own
    transport, by inheriting them from the listening socket)."""
    await listener_turns_options_off()


@needs_linux
async def test_no_dead_peer_timeout_leaves_os_defaults() -> None:
    async with (
        serving(hold, dead_peer_timeout=None) as served,
        connected(served.address(), dead_peer_timeout=None) as client,
    ):
        server = await served.accepted()
        with socket.socket() as fresh:
            defaults = fresh.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        for comm in (client, server):
            assert comm.extra_info["dead_peer_timeout"] is None
            assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
            assert sockopt(comm, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == defaults
            assert sockopt(comm, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
async def test_invalid_dead_peer_timeout_is_refused_up_front(value: Any) -> None:
    async with serving() as served:
        with pytest.raises(ValueError, match="dead_peer_timeout"):
            await comm_core.connect(served.address(), timeout=5, dead_peer_timeout=value)
    # A listener checks it when created, not on each connection it accepts.
    with pytest.raises(ValueError, match="dead_peer_timeout"):
        comm_core.listen("tcp://127.0.0.1:0", hold, dead_peer_timeout=value)


@pytest.mark.parametrize("host", [IPV4, pytest.param(IPV6, marks=needs_ipv6)])
async def test_extra_info_names_both_ends(host: str) -> None:
    async with (
        serving(hold, address=tcp_address(host, 0)) as served,
        connected(served.address(host)) as client,
    ):
        server = await served.accepted()
        c, s = client.extra_info, server.extra_info
        assert c["sockname"] == s["peername"]
        assert c["peername"] == s["sockname"]
        assert c["peername"][:2] == (host, served.port)
        assert client.local_address == tcp_address(*c["sockname"][:2])
        assert client.peer_address == tcp_address(*c["peername"][:2])
        assert server.local_address == client.peer_address


async def test_listener_reads_max_message_size_when_created() -> None:
    """A listener's comms get the max_message_size setting in force when it was created."""
    served = Served(hold)
    with comm_core.configure(max_message_size=1 << 20):
        listener = served.listener = comm_core.listen(tcp_address(IPV4, 0), served)
    await listener.start()
    try:
        async with connected(served.address()) as client:
            server = await served.accepted()
            assert server.extra_info["max_message_size"] == 1 << 20
            default = comm_core.get_setting("max_message_size")
            assert client.extra_info["max_message_size"] == default
    finally:
        listener.stop()
        await served.finish(clean=True)
