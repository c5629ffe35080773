"""comm-ws speaks RFC 6455 as the websockets library does: its client dials a comm-ws
listener, a comm-ws client dials its server, and what a WebSocket server may do wrong
(a text message, a close with a reason) becomes comm's errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import comm_core
from comm_core import CommClosedError, FatalCommClosedError, ProtocolError
from comm_core.message import MessageComm
from comm_core.protocol import Decoder, encode_message, split_message
from comm_core.testing import echo_handler
from comm_ws import SUBPROTOCOL
from ws_support import EVENT_TIMEOUT

pytestmark = pytest.mark.usefixtures("loop_name")


def _encode(msg: Any) -> bytes:
    buffers, _ = encode_message(msg)
    return b"".join(bytes(b) for b in buffers)


def _decode(data: bytes) -> Any:
    return Decoder({}).decode(split_message(data, max_message_size=2**26))


def _handshake() -> dict[str, Any]:
    return {
        "protocol": comm_core.PROTOCOL_VERSION,
        "library": "websockets-test",
        "version": "0",
    }


async def test_websockets_client_talks_to_a_comm_listener() -> None:
    async with comm_core.listen("ws://127.0.0.1:0/comm", echo_handler) as listener:
        uri = listener.contact_address
        async with ws_connect(uri, subprotocols=[SUBPROTOCOL], max_size=None) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == SUBPROTOCOL
            greeting = _decode(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT))  # type: ignore[arg-type]
            assert greeting["protocol"] == comm_core.PROTOCOL_VERSION
            await ws.send(_encode(_handshake()))
            for payload in (b"x", b"y" * 100_000, b"z" * 3_000_000):
                await ws.send(_encode({"op": "ping", "data": payload}))
                echo = _decode(await asyncio.wait_for(ws.recv(), EVENT_TIMEOUT))  # type: ignore[arg-type]
                assert echo == {"op": "ping", "data": payload}


async def test_websockets_client_without_the_subprotocol_is_refused() -> None:
    async with comm_core.listen("ws://127.0.0.1:0", echo_handler) as listener:
        with pytest.raises(Exception, match="400"):
            async with ws_connect(listener.contact_address):
                pass


@contextlib.asynccontextmanager
async def _websockets_server(
    behaviour: Callable[[ServerConnection], Awaitable[None]],
) -> AsyncIterator[str]:
    """A websockets server speaking comm's subprotocol: it sends a comm greeting, reads the
    client's handshake, then does *behaviour*."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send(_encode(_handshake()))
        _decode(await ws.recv())  # type: ignore[arg-type]
        with contextlib.suppress(ConnectionClosed):
            await behaviour(ws)

    async with serve(handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL], max_size=None) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_comm_client_talks_to_a_websockets_server() -> None:
    async with (
        _websockets_server(_echo) as address,
        await comm_core.connect(address, timeout=EVENT_TIMEOUT) as comm,
    ):
        assert isinstance(comm, MessageComm)
        for payload in (b"", b"a" * 70_000, b"b" * 5_000_000):
            await comm.write({"data": payload})
            assert await asyncio.wait_for(comm.read(), EVENT_TIMEOUT) == {"data": payload}


async def test_a_text_message_is_a_protocol_error() -> None:
    async def text(ws: ServerConnection) -> None:
        await ws.send("hello")
        await ws.wait_closed()

    async with _websockets_server(text) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        with pytest.raises(ProtocolError, match="text message"):
            await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
        assert comm.closed()


async def test_a_close_with_a_reason_says_it() -> None:
    async def close(ws: ServerConnection) -> None:
        await ws.close(1011, "the scheduler is restarting")

    async with _websockets_server(close) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        with pytest.raises(CommClosedError, match=r"1011.*the scheduler is restarting"):
            await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
        with pytest.raises(CommClosedError):
            await comm.write({"after": "close"})
        comm.abort()


async def test_a_normal_close_ends_reads_after_every_message() -> None:
    async def two_then_close(ws: ServerConnection) -> None:
        await ws.send(_encode(1))
        await ws.send(_encode(2))
        await ws.close()

    async with _websockets_server(two_then_close) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        assert await asyncio.wait_for(comm.read(), EVENT_TIMEOUT) == 1
        assert await asyncio.wait_for(comm.read(), EVENT_TIMEOUT) == 2
        with pytest.raises(CommClosedError, match="closed by the peer"):
            await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
        comm.abort()


async def test_a_websockets_server_without_comm_subprotocol_is_fatal() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(FatalCommClosedError, match="not a comm endpoint"):
            await comm_core.connect(f"ws://127.0.0.1:{port}", timeout=EVENT_TIMEOUT)
        assert loop.time() - start < EVENT_TIMEOUT / 2  # at once, not retried
