"""What each end puts on the wire when a connection opens, seen from a raw socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

import comm_core
from comm_core.protocol import PREAMBLE
from tcp_support import IPV4, read_until_closed, server_greeting, serving, tcp_address, within

pytestmark = pytest.mark.usefixtures("loop_name")

RawSocket = Callable[..., socket.socket]


async def _raw_server(raw_socket: RawSocket) -> tuple[socket.socket, str]:
    server = raw_socket(socket.AF_INET)
    server.bind((IPV4, 0))
    server.listen(1)
    return server, tcp_address(*server.getsockname()[:2])


async def _read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def test_listener_greets_before_hearing_from_the_client(raw_socket: RawSocket) -> None:
    """The listener's preamble and handshake message come without the client sending a byte."""
    loop = asyncio.get_running_loop()
    async with serving(handshake_timeout=0.3) as served:
        sock = raw_socket(socket.AF_INET)
        await within(loop.sock_connect(sock, (IPV4, served.port)), "a raw connect")
        data, _ = await read_until_closed(sock, limit=4096)
    info = server_greeting(data)
    assert info["library"] == "comm-core"


async def test_client_sends_preamble_and_handshake_together(raw_socket: RawSocket) -> None:
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)
    connecting = asyncio.ensure_future(comm_core.connect(address, timeout=5))
    try:
        conn, _ = await within(loop.sock_accept(server), "the client's connection")
        conn.setblocking(False)
        # One write: the first receive holds both (they are a few dozen bytes).
        first = await within(loop.sock_recv(conn, 65536), "the client's first bytes")
        info = server_greeting(first)
        assert info["library"] == "comm-core"
        await loop.sock_sendall(conn, first)  # answer with the same greeting
        comm = await within(connecting, "connect() to finish the handshake")
        assert comm.handshake_info["library"] == "comm-core"
        conn.close()
        await comm.close()
    finally:
        connecting.cancel()
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            connecting.result().abort()


@pytest.mark.parametrize("first_call", ["read", "close"])
async def test_a_comm_that_never_writes_still_sends_its_preamble(
    first_call: str, raw_socket: RawSocket
) -> None:
    """Without the handshake (a backend's own comm), a read or close sends the preamble."""
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)
    connector = comm_core.get_backend("tcp").get_connector()
    comm = await connector.connect(address.split("://", 1)[1])
    try:
        conn, _ = await within(loop.sock_accept(server), "the comm's connection")
        conn.setblocking(False)
        if first_call == "read":
            reading = asyncio.ensure_future(comm.read())
            assert await within(_read_exactly(conn, len(PREAMBLE)), "the preamble") == PREAMBLE
            conn.close()
            with pytest.raises(comm_core.CommClosedError):
                await within(reading, "the read to fail")
        else:
            await comm.close()
            data, _ = await read_until_closed(conn, limit=4096)
            assert data == PREAMBLE
            conn.close()
    finally:
        comm.abort()
