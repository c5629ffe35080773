"""Stopping a listener: it stops accepting at once, and still serves what it accepted.

A dialer's ``connect()`` returns once it has read the listener's greeting; its own
preamble and handshake leave with its first write (or at the end of that loop
iteration). A listener stopped in between must not lose that comm: connections
accepted before ``stop()`` keep their handshake deadline and, once their
handshake is done, are handed to the handler as usual (issue 18).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

import comm_core
from comm_core import Comm, CommClosedError
from comm_core.testing import until
from comm_tcp import _transport
from tcp_support import EVENT_TIMEOUT, HAS_IPV6, IPV4, IPV6, tcp_address, within

RawSocket = Callable[..., socket.socket]

#: The ways a tcp listener accepts: comm-tcp's accept loop with its own transport or
#: with asyncio's, and uvloop's server.
_PATHS = [
    pytest.param("own", marks=pytest.mark.comm_loop("asyncio"), id="own-transport"),
    pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio"), id="asyncio-transport"),
    pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop"), id="uvloop"),
]
_HOSTS = [IPV4, pytest.param(IPV6, marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6"))]


@pytest.fixture(params=_PATHS)
def accept_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path: str = request.param
    if path == "asyncio":
        monkeypatch.setenv(_transport.ENV, "asyncio")
    return path


async def _echo_once(queue: asyncio.Queue[Comm], comm: Comm) -> None:
    """A round trip over *comm*, whose server end the listener puts in *queue*."""
    await comm.write({"op": "hello"})
    server = await within(queue.get(), "the listener to hand the comm to its handler")
    async with server:
        assert await within(server.read(), "the client's first message") == {"op": "hello"}
        await server.write("back")
        assert await within(comm.read(), "the server's reply") == "back"


@pytest.mark.usefixtures("accept_path")
@pytest.mark.parametrize("host", _HOSTS)
async def test_a_comm_that_connect_returned_survives_an_immediate_stop(host: str) -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen(tcp_address(host, 0), queue.put_nowait) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT)
    async with comm:
        await _echo_once(queue, comm)


@pytest.mark.usefixtures("accept_path")
async def test_many_comms_connected_just_before_stop_are_all_served() -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen(f"tcp://{IPV4}:0", queue.put_nowait) as listener:
        comms = await asyncio.gather(
            *(comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT) for _ in range(20))
        )
    try:
        for comm in comms:
            await _echo_once(queue, comm)
    finally:
        for comm in comms:
            await comm.close()


@pytest.mark.usefixtures("accept_path")
async def test_a_stopped_listener_accepts_no_more_and_drops_silent_peers_at_their_deadline(
    raw_socket: RawSocket,
) -> None:
    """stop() closes the listening socket at once; a peer accepted before it that never
    handshakes is dropped when its deadline (from the accept) passes, not kept for ever."""
    loop = asyncio.get_running_loop()
    called: list[Comm] = []
    timeout = 0.3
    listener = await comm_core.listen(f"tcp://{IPV4}:0", called.append, handshake_timeout=timeout)
    port = listener.port  # type: ignore[attr-defined]
    silent = raw_socket()
    await within(loop.sock_connect(silent, (IPV4, port)), "a raw connect")
    greeting = await within(loop.sock_recv(silent, 8), "the listener's greeting")
    assert greeting, "the listener closed the connection before greeting it"
    accepted_by = loop.time()
    listener.stop()
    late = raw_socket()
    with pytest.raises(ConnectionRefusedError):  # nobody listens any more
        await within(loop.sock_connect(late, (IPV4, port)), "a connect after stop()")
    while True:  # read the rest of the greeting, then the end of the connection
        try:
            data = await within(loop.sock_recv(silent, 65536), "the silent peer to be dropped")
        except ConnectionResetError:
            break
        if not data:
            break
    waited = loop.time() - accepted_by
    assert waited < timeout + EVENT_TIMEOUT / 2
    assert called == []


@pytest.mark.comm_loop("asyncio")
async def test_a_comm_the_handler_holds_is_not_touched_by_stop() -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen(f"tcp://{IPV4}:0", queue.put_nowait) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT)
        await comm.write("first")
        server = await within(queue.get(), "the handler")
        assert await within(server.read(), "the first message") == "first"
    async with comm, server:
        await comm.write("after stop")
        assert await within(server.read(), "a message after stop()") == "after stop"
        await server.close()
        with pytest.raises(CommClosedError):
            await within(comm.read(), "the server's close")


@pytest.mark.usefixtures("accept_path")
async def test_a_connect_in_flight_when_stop_is_called_completes() -> None:
    """A connection accepted before stop(), whose connect() had not returned yet, is served."""
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    listener = await comm_core.listen(f"tcp://{IPV4}:0", queue.put_nowait)
    try:
        dialing = asyncio.ensure_future(
            comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT)
        )
        await until(lambda: listener.acceptor.pending > 0 or dialing.done(), "the accept")  # type: ignore[attr-defined]
    finally:
        listener.stop()
    async with await within(dialing, "connect() to return") as comm:
        await _echo_once(queue, comm)
