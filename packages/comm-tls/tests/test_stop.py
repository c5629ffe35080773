"""Stopping a tls listener: it stops accepting at once, and still serves what it accepted.

A dialer's ``connect()`` returns once it has read the listener's greeting (inside
TLS); its own preamble and handshake leave with its first write. A listener
stopped in between must not lose that comm, nor one still in its TLS handshake:
connections accepted before ``stop()`` keep their handshake deadline and, once
their handshakes are done, are handed to the handler as usual (issue 18).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm, CommClosedError
from comm_core.stream import StreamComm
from comm_core.testing import until
from comm_tls import Security
from tls_support import EVENT_TIMEOUT, HAS_IPV6, IPV4, IPV6, address, within

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")

_HOSTS = [IPV4, pytest.param(IPV6, marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6"))]


async def _echo_once(queue: asyncio.Queue[Comm], comm: Comm) -> None:
    """A round trip over *comm*, whose server end the listener puts in *queue*."""
    await comm.write({"op": "hello"})
    server = await within(queue.get(), "the listener to hand the comm to its handler")
    async with server:
        assert await within(server.read(), "the client's first message") == {"op": "hello"}
        await server.write("back")
        assert await within(comm.read(), "the server's reply") == "back"


@pytest.mark.parametrize("host", _HOSTS)
async def test_a_comm_that_connect_returned_survives_an_immediate_stop(
    host: str, temporary: Security
) -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    listening = address("tls", host, 0)
    async with comm_core.listen(listening, queue.put_nowait, security=temporary) as listener:
        comm = await comm_core.connect(
            listener.contact_address, timeout=EVENT_TIMEOUT, security=temporary
        )
    async with comm:
        await _echo_once(queue, comm)


async def test_many_comms_connected_just_before_stop_are_all_served(temporary: Security) -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen(
        f"tls://{IPV4}:0", queue.put_nowait, security=temporary
    ) as listener:
        comms = await asyncio.gather(
            *(
                comm_core.connect(
                    listener.contact_address, timeout=EVENT_TIMEOUT, security=temporary
                )
                for _ in range(10)
            )
        )
    try:
        for comm in comms:
            await _echo_once(queue, comm)
    finally:
        for comm in comms:
            await comm.close()


async def test_a_peer_in_its_tls_handshake_when_stop_is_called_is_served(
    temporary: Security,
) -> None:
    """A connection accepted before stop() whose TLS handshake starts after it completes
    both handshakes and is handed to the handler."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    listener = await comm_core.listen(f"tls://{IPV4}:0", queue.put_nowait, security=temporary)
    acceptor = listener.acceptor  # type: ignore[attr-defined]
    sock = socket.socket()
    try:
        sock.setblocking(False)
        await within(loop.sock_connect(sock, (IPV4, listener.port)), "a raw connect")  # type: ignore[attr-defined]
        await until(lambda: acceptor.pending > 0, "the listener to accept")
    except BaseException:
        sock.close()
        raise
    finally:
        listener.stop()
    # Only now does the client say its ClientHello, then the comm preamble and handshake.
    comm = StreamComm(scheme="tls")
    try:
        await within(
            loop.create_connection(
                lambda: comm.protocol, sock=sock, ssl=temporary.client_context, server_hostname=IPV4
            ),
            "the TLS handshake",
        )
        greeting = await within(comm.read(), "the listener's comm handshake")
        assert isinstance(greeting, dict)
        assert greeting["protocol"] == PROTOCOL_VERSION
        await comm.write({"protocol": PROTOCOL_VERSION, "library": "a test"})
        await _echo_once(queue, comm)
    finally:
        await comm.close()


async def test_a_stopped_listener_drops_a_peer_silent_in_tls_at_its_deadline(
    temporary: Security,
) -> None:
    """A peer accepted before stop() that never starts TLS is dropped at its deadline
    (counted from the accept); the listening socket is closed at once."""
    loop = asyncio.get_running_loop()
    called: list[Comm] = []
    timeout = 0.3
    listener = await comm_core.listen(
        f"tls://{IPV4}:0", called.append, security=temporary, handshake_timeout=timeout
    )
    port = listener.port  # type: ignore[attr-defined]
    acceptor = listener.acceptor  # type: ignore[attr-defined]
    with socket.socket() as silent, socket.socket() as late:
        silent.setblocking(False)
        late.setblocking(False)
        await within(loop.sock_connect(silent, (IPV4, port)), "a raw connect")
        await until(lambda: acceptor.pending > 0, "the listener to accept")
        start = loop.time()
        listener.stop()
        with pytest.raises(ConnectionRefusedError):  # nobody listens any more
            await within(loop.sock_connect(late, (IPV4, port)), "a connect after stop()")
        try:
            data = await within(loop.sock_recv(silent, 65536), "the silent peer to be dropped")
        except ConnectionResetError:
            data = b""
        assert data == b""
        assert loop.time() - start < timeout + EVENT_TIMEOUT / 2
    assert called == []


async def test_a_comm_the_handler_holds_is_not_touched_by_stop(temporary: Security) -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen(
        f"tls://{IPV4}:0", queue.put_nowait, security=temporary
    ) as listener:
        comm = await comm_core.connect(
            listener.contact_address, timeout=EVENT_TIMEOUT, security=temporary
        )
        await comm.write("first")
        server = await within(queue.get(), "the handler")
        assert await within(server.read(), "the first message") == "first"
    async with comm, server:
        await comm.write("after stop")
        assert await within(server.read(), "a message after stop()") == "after stop"
        await server.close()
        with pytest.raises(CommClosedError):
            await within(comm.read(), "the server's close")
