"""Stopping an inproc listener: it refuses new comms at once, and the comms that
``connect()`` returned, or that its handler holds, stay usable (issue 18)."""

from __future__ import annotations

import asyncio

import pytest

import comm_core
from comm_core import Comm, CommClosedError, ConnectTimeoutError
from comm_core.testing import within


async def _echo_once(queue: asyncio.Queue[Comm], comm: Comm) -> None:
    """A round trip over *comm*, whose server end the listener puts in *queue*."""
    await comm.write({"op": "hello"})
    server = await within(queue.get(), "the listener to hand the comm to its handler")
    async with server:
        assert await within(server.read(), "the client's first message") == {"op": "hello"}
        await server.write("back")
        assert await within(comm.read(), "the server's reply") == "back"


async def test_a_comm_that_connect_returned_survives_an_immediate_stop() -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen("inproc://", queue.put_nowait) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
    async with comm:
        await _echo_once(queue, comm)
    with pytest.raises(ConnectTimeoutError):  # stopped: it accepts no more
        await comm_core.connect(listener.contact_address, timeout=0.05)


async def test_a_comm_the_handler_holds_is_not_touched_by_stop() -> None:
    queue: asyncio.Queue[Comm] = asyncio.Queue()
    async with comm_core.listen("inproc://", queue.put_nowait) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
        await comm.write("first")
        server = await within(queue.get(), "the handler")
        assert await within(server.read(), "the first message") == "first"
    async with comm, server:
        await comm.write("after stop")
        assert await within(server.read(), "a message after stop()") == "after stop"
        await server.close()
        with pytest.raises(CommClosedError):
            await within(comm.read(), "the server's close")
