"""What each end puts on the wire when a connection opens, seen from a raw socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION
from comm_core.protocol import PREAMBLE, encode_message
from tcp_support import (
    IPV4,
    read_until_closed,
    server_greeting,
    serving,
    stream_messages,
    tcp_address,
    within,
)

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


def _abandon(connecting: asyncio.Future[comm_core.Comm]) -> None:
    """Cancel a connect() still running; abort the comm of one that finished."""
    connecting.cancel()
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        connecting.result().abort()


def _greeting() -> bytes:
    """What a comm listener sends on accepting: the preamble and its handshake message."""
    [handshake], _ = encode_message({"protocol": PROTOCOL_VERSION, "library": "raw"})
    return PREAMBLE + handshake


def _nothing_received(sock: socket.socket) -> bool:
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


async def test_client_handshake_leaves_with_its_first_message(raw_socket: RawSocket) -> None:
    """A listener that greets first hears the client's preamble, handshake and first
    message in one write, so that it wakes once for them, not twice."""
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)

    async def accept_and_greet() -> socket.socket:
        conn, _ = await loop.sock_accept(server)
        conn.setblocking(False)
        await loop.sock_sendall(conn, _greeting())
        return conn

    greeting = asyncio.ensure_future(accept_and_greet())
    try:
        # Awaited here, not in a task of its own, so that nothing runs between
        # connect() and write(); connect()'s timeout bounds it.
        comm = await comm_core.connect(address, timeout=5)
    except BaseException:
        greeting.cancel()
        raise
    # It greeted, so it is done; awaiting it would let the loop run.
    conn = greeting.result()
    try:
        assert comm.handshake_info["library"] == "raw"
        # Loopback delivers a send before the call returns: had the client sent its
        # handshake during connect(), it would be here.
        assert _nothing_received(conn)
        await comm.write({"op": "ping"})
        data = b""
        while not data.endswith(b"ping"):
            data += await within(loop.sock_recv(conn, 65536), "the client's bytes")
        info, message = stream_messages(data)
        assert info["library"] == "comm-core"
        assert message == {"op": "ping"}
    finally:
        conn.close()
        await comm.close()


async def test_a_client_that_stays_silent_still_sends_its_handshake(
    raw_socket: RawSocket,
) -> None:
    """The handshake is held only until the end of the loop iteration that completed it:
    a listener would drop a client that never completes it."""
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)
    connecting = asyncio.ensure_future(comm_core.connect(address, timeout=5))
    try:
        conn, _ = await within(loop.sock_accept(server), "the client's connection")
        conn.setblocking(False)
        await loop.sock_sendall(conn, _greeting())
        comm = await within(connecting, "connect() to finish the handshake")
        data = b""
        while len(stream_messages(data) if data else ()) < 1:
            data += await within(loop.sock_recv(conn, 65536), "the client's handshake")
        [info] = stream_messages(data)
        assert info["library"] == "comm-core"
        conn.close()
        await comm.close()
    finally:
        _abandon(connecting)


async def test_client_speaks_first_to_a_peer_that_waits(raw_socket: RawSocket) -> None:
    """A peer that waits to be spoken to gets the preamble and handshake in one write
    after a short wait, not after the handshake timeout."""
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)
    started = loop.time()
    connecting = asyncio.ensure_future(comm_core.connect(address, timeout=60, handshake_timeout=30))
    try:
        conn, _ = await within(loop.sock_accept(server), "the client's connection")
        conn.setblocking(False)
        # One write: the first receive holds both (they are a few dozen bytes).
        first = await within(loop.sock_recv(conn, 65536), "the client's first bytes")
        assert loop.time() - started < 10  # well before the handshake timeout
        info = server_greeting(first)
        assert info["library"] == "comm-core"
        await loop.sock_sendall(conn, first)  # answer with the same greeting
        comm = await within(connecting, "connect() to finish the handshake")
        assert comm.handshake_info["library"] == "comm-core"
        conn.close()
        await comm.close()
    finally:
        _abandon(connecting)


async def test_a_peer_that_is_not_a_comm_endpoint_is_found_out_quickly(
    raw_socket: RawSocket,
) -> None:
    """An HTTP server answers the client's held handshake with an error page: connect()
    fails with ProtocolError naming what the peer is, long before its timeouts."""
    loop = asyncio.get_running_loop()
    server, address = await _raw_server(raw_socket)
    started = loop.time()
    connecting = asyncio.ensure_future(comm_core.connect(address, timeout=60, handshake_timeout=30))
    try:
        conn, _ = await within(loop.sock_accept(server), "the client's connection")
        conn.setblocking(False)
        await within(loop.sock_recv(conn, 65536), "the client's first bytes")
        await loop.sock_sendall(conn, b"HTTP/1.1 400 Bad Request\r\n\r\n")
        with pytest.raises(comm_core.ProtocolError, match="looks like HTTP"):
            await within(connecting, "connect() to fail")
        assert loop.time() - started < 10
        conn.close()
    finally:
        connecting.cancel()


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
