"""comm_core.transport.SocketTransport.send_ancillary: data with ancillary data (here
descriptors, SCM_RIGHTS), in order with what was written before, over a real socket pair."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from array import array
from typing import Any

import pytest

from comm_core import CommClosedError
from comm_core.transport import SocketTransport

pytestmark = [
    pytest.mark.skipif(
        not hasattr(socket, "AF_UNIX") or not hasattr(socket.socket, "sendmsg"),
        reason="needs Unix sockets with sendmsg()",
    ),
    pytest.mark.skipif(sys.platform == "win32", reason="no SCM_RIGHTS"),
    pytest.mark.comm_loop("asyncio"),
]


class _Quiet(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def _rights(fd: int) -> list[tuple[int, int, Any]]:
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [fd]))]


def _receive(sock: socket.socket, size: int) -> tuple[bytes, list[int]]:
    """Read *size* bytes from the blocking *sock*; the descriptors that came with them."""
    data = b""
    fds: list[int] = []
    while len(data) < size:
        chunk, ancdata, _, _ = sock.recvmsg(size - len(data), socket.CMSG_SPACE(16))
        assert chunk, "the peer closed early"
        data += chunk
        for level, kind, payload in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.extend(array("i", payload[: len(payload) - len(payload) % 4]))
    return data, fds


async def test_ancillary_data_goes_after_what_was_written_before() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.get_running_loop()
    protocol = _Quiet()
    transport = SocketTransport(loop, ours, protocol)
    transport.start()
    read, write = os.pipe()
    try:
        before = bytes(range(256)) * 4096  # 1 MiB: far more than the socket buffer holds
        transport.write(before)
        assert transport.get_write_buffer_size() > 0  # queued: the kernel took a part
        sending = asyncio.ensure_future(transport.send_ancillary(b"with-fd", _rights(write)))
        # Read it all in a thread (the transport waits for the queue to drain first).
        data, fds = await asyncio.to_thread(_receive, theirs, len(before) + 7)
        await sending
        assert data == before + b"with-fd"
        assert len(fds) == 1
        # The descriptor came across: writing to it reaches our pipe.
        os.write(fds[0], b"ping")
        os.close(fds[0])
        assert os.read(read, 4) == b"ping"
    finally:
        transport.abort()
        theirs.close()
        os.close(read)
        os.close(write)
    assert await protocol.lost is None


async def test_send_ancillary_on_a_closed_transport_raises() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    transport = SocketTransport(asyncio.get_running_loop(), ours, _Quiet())
    transport.start()
    transport.abort()
    try:
        with pytest.raises(CommClosedError, match="is closed"):
            await transport.send_ancillary(b"x", _rights(0))
    finally:
        theirs.close()


async def test_a_transport_aborted_while_a_sender_waits_wakes_it() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = SocketTransport(asyncio.get_running_loop(), ours, _Quiet())
    transport.start()
    try:
        transport.write(b"x" * (1 << 20))  # nobody reads: it stays queued
        sending = asyncio.ensure_future(transport.send_ancillary(b"y", _rights(0)))
        await asyncio.sleep(0)  # let it start waiting
        assert not sending.done()
        transport.abort()
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(sending, 10)
    finally:
        theirs.close()
