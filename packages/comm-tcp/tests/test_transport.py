"""comm-tcp's own socket transport (``comm_tcp._transport``) over real loopback TCP sockets.

The comm-level suites (conformance, flow control, large messages, failures) run
over it on asyncio already; these tests drive the transport directly, with a
plain protocol, for what comms rarely provoke: the kernel refusing part of a
write, a protocol callback that fails, half-closed connections, a reset.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from comm_core import PROTOCOL_VERSION
from comm_core.protocol import PREAMBLE, encode_message
from comm_core.session import handshake
from comm_tcp import TCPConnector, _direct
from comm_tcp._transport import ENV, SocketTransport
from tcp_support import (
    IPV4,
    MiB,
    connected,
    listener_turns_options_off,
    ping,
    serving,
    stream_messages,
    within,
)

pytestmark = pytest.mark.comm_loop("asyncio")


Pair = tuple[socket.socket, socket.socket]


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A connected loopback TCP pair: (ours, non-blocking; the peer's, blocking)."""
    with socket.create_server((IPV4, 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    ours.setblocking(False)
    peer.settimeout(10)
    try:
        yield ours, peer
    finally:
        ours.close()
        peer.close()


def _small_buffers(ours: socket.socket, peer: socket.socket) -> None:
    """Make the kernel refuse most of a large write until the peer reads."""
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)


class Recorder(asyncio.BufferedProtocol):
    """Keeps what it receives and what the transport tells it; wakes waiters by event."""

    def __init__(self, buffer_size: int = 64 * 1024, keep_open: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray(buffer_size)
        self.received = bytearray()
        self.updates = 0
        self.keep_open = keep_open
        self.transport: asyncio.BaseTransport | None = None
        self.eof = asyncio.Event()
        self.lost: asyncio.Future[Exception | None] = self.loop.create_future()
        self.pauses = 0
        self.resumed = asyncio.Event()
        self.fail_in: str | None = None  # the callback that raises
        self._want: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        if self.fail_in == "get_buffer":
            raise ValueError("get_buffer fails on purpose")
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.fail_in == "buffer_updated":
            raise ValueError("buffer_updated fails on purpose")
        self.updates += 1
        self.received += self.buffer[:nbytes]
        if self._want is not None and len(self.received) >= self._want[0]:
            self._want[1].set_result(None)
            self._want = None

    def eof_received(self) -> bool:
        self.eof.set()
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)
        if self._want is not None:
            self._want[1].set_exception(ConnectionError("lost before the bytes came"))

    def pause_writing(self) -> None:
        self.pauses += 1
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.resumed.set()

    async def receive(self, size: int) -> bytes:
        """Wait until *size* bytes in all have been received; return them."""
        if len(self.received) < size:
            future = self.loop.create_future()
            self._want = (size, future)
            await within(future, f"{size} bytes")
        return bytes(self.received)


def _started(sock: socket.socket, protocol: asyncio.BaseProtocol) -> SocketTransport:
    transport = SocketTransport(asyncio.get_running_loop(), sock, protocol)
    transport.start()
    return transport


def _drain_peer(peer: socket.socket, size: int) -> bytes:
    """Read *size* bytes from the blocking *peer* (in a thread: the loop must run)."""
    chunks = []
    while size:
        chunk = peer.recv(min(size, 1 << 20))
        assert chunk, "the connection ended early"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


async def _read_peer(peer: socket.socket, size: int) -> bytes:
    return await within(asyncio.to_thread(_drain_peer, peer, size), f"{size} bytes at the peer")


async def _peer_eof(peer: socket.socket) -> bytes:
    """Everything the peer receives until the connection's end."""

    def read_all() -> bytes:
        chunks = []
        while chunk := peer.recv(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    return await within(asyncio.to_thread(read_all), "the end of the connection")


# -- connecting and reading ---------------------------------------------------------------


async def test_start_connects_the_protocol_at_once(pair: Pair) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = SocketTransport(asyncio.get_running_loop(), ours, protocol)
    assert protocol.transport is None
    transport.start()
    assert protocol.transport is transport  # no loop iteration needed
    peer.sendall(b"hello")
    assert await protocol.receive(5) == b"hello"
    transport.close()
    assert await within(protocol.lost, "connection_lost") is None


async def test_a_burst_is_read_in_one_callback(pair: Pair) -> None:
    ours, peer = pair
    payload = bytes(range(256)) * 400  # 100 KiB: the kernel holds it all
    peer.sendall(payload)
    protocol = Recorder(buffer_size=4096)
    transport = SocketTransport(asyncio.get_running_loop(), ours, protocol)
    callbacks = 0
    read_ready = transport._read_ready

    def counted() -> None:
        nonlocal callbacks
        callbacks += 1
        read_ready()

    transport._read_ready = counted  # type: ignore[method-assign]
    transport.start()
    assert await protocol.receive(len(payload)) == payload
    assert protocol.updates >= len(payload) // 4096
    assert callbacks == 1
    transport.close()
    await within(protocol.lost, "connection_lost")


async def test_paused_reading_reads_nothing_until_resumed(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    transport.pause_reading()
    assert not transport.is_reading()
    peer.sendall(b"waiting")
    for _ in range(20):  # loop iterations, in which a registered reader would run
        await asyncio.sleep(0)
    assert protocol.received == b""
    transport.resume_reading()
    assert transport.is_reading()
    assert await protocol.receive(7) == b"waiting"
    transport.abort()
    await within(protocol.lost, "connection_lost")


async def test_facts(pair: Pair) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    assert transport.get_extra_info("socket") is ours
    assert transport.get_extra_info("sockname") == peer.getpeername()
    assert transport.get_extra_info("peername") == peer.getsockname()
    assert transport.get_extra_info("cipher", "none") == "none"
    assert transport.get_protocol() is protocol
    transport.close()
    await within(protocol.lost, "connection_lost")
    assert transport.get_extra_info("sockname") == peer.getpeername()  # kept after the close


# -- writing ------------------------------------------------------------------------------


async def test_what_the_kernel_refuses_is_queued_by_reference_and_pauses_the_writer(
    pair: Pair,
) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    transport.write(payload)
    queued = transport.get_write_buffer_size()
    assert 0 < queued < len(payload)
    assert protocol.pauses == 1
    # Not copied: the queue holds a view of the caller's buffer.
    assert [type(item) for item in transport._queue] == [memoryview]
    assert transport._queue[0].obj is payload
    assert await _read_peer(peer, len(payload)) == payload
    await within(protocol.resumed.wait(), "resume_writing")
    assert transport.get_write_buffer_size() == 0
    transport.close()
    await within(protocol.lost, "connection_lost")


async def test_a_small_mutable_buffer_is_copied_when_queued(
    pair: Pair,
) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    large = b"L" * (4 * MiB)
    transport.write(large)  # the kernel takes part; the rest is queued
    small = bytearray(b"small and reused")
    transport.write(small)
    small[:] = b"X" * len(small)  # its owner reuses it at once
    received = await _read_peer(peer, len(large) + len(small))
    assert received[: len(large)] == large
    assert received[len(large) :] == b"small and reused"
    transport.close()
    await within(protocol.lost, "connection_lost")


@pytest.mark.parametrize("queued_first", [False, True], ids=["idle", "queued"])
async def test_writelines_keeps_the_order(pair: Pair, queued_first: bool) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    head = b""
    if queued_first:
        head = b"H" * (2 * MiB)
        transport.write(head)
        assert transport.get_write_buffer_size() > 0
    parts: list[Any] = [
        b"a" * 10,
        bytearray(b"b" * 5),
        memoryview(b"c" * 70_000),
        b"",
        memoryview(bytearray(b"d" * (1 * MiB))),
        struct.pack("<Q", 42),
        memoryview(struct.pack("<4I", 1, 2, 3, 4)).cast("I"),  # not a byte view
        pickle.PickleBuffer(b"no len()"),
    ]
    transport.writelines(parts)
    expected = head + b"".join(bytes(memoryview(part).cast("B")) for part in parts)
    assert await _read_peer(peer, len(expected)) == expected
    transport.close()
    await within(protocol.lost, "connection_lost")


async def test_small_writes_queued_behind_a_large_one_are_gathered(pair: Pair) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    large = b"L" * (4 * MiB)
    transport.write(large)
    messages = [i.to_bytes(4, "little") * 10 for i in range(2000)]
    for message in messages:
        transport.write(message)
    transport.writelines(messages[:500])
    # 2,500 small writes are queued in a few buffers, not one each.
    assert len(transport._queue) <= 3
    expected = large + b"".join(messages) + b"".join(messages[:500])
    assert await _read_peer(peer, len(expected)) == expected
    transport.close()
    await within(protocol.lost, "connection_lost")


async def test_writelines_of_more_buffers_than_one_call_takes(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    parts = [i.to_bytes(4, "little") for i in range(3000)]
    transport.writelines(parts)
    assert await _read_peer(peer, 4 * len(parts)) == b"".join(parts)
    transport.close()
    await within(protocol.lost, "connection_lost")


# -- closing ------------------------------------------------------------------------------


async def test_close_sends_what_is_queued_first(pair: Pair) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
    transport.write(payload)
    assert transport.get_write_buffer_size() > 0
    transport.close()
    assert transport.is_closing()
    transport.write(b"dropped")  # after close(): ignored, as asyncio's transports do
    assert await _peer_eof(peer) == payload
    assert await within(protocol.lost, "connection_lost") is None
    assert ours.fileno() == -1


async def test_abort_drops_what_is_queued(pair: Pair) -> None:
    ours, peer = pair
    _small_buffers(ours, peer)
    protocol = Recorder()
    transport = _started(ours, protocol)
    transport.write(b"x" * (4 * MiB))
    transport.abort()
    assert ours.fileno() == -1
    assert transport.get_write_buffer_size() == 0
    assert await within(protocol.lost, "connection_lost") is None
    assert len(await _peer_eof(peer)) < 4 * MiB


async def test_eof_closes_unless_the_protocol_keeps_the_connection_open(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    peer.shutdown(socket.SHUT_WR)
    assert await within(protocol.lost, "connection_lost") is None
    assert protocol.eof.is_set()
    assert transport.is_closing()


async def test_half_closed_connection_still_writes_then_write_eof(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder(keep_open=True)
    transport = _started(ours, protocol)
    peer.sendall(b"last words")
    peer.shutdown(socket.SHUT_WR)
    await within(protocol.eof.wait(), "eof_received")
    assert protocol.received == b"last words"
    assert not transport.is_closing()
    transport.resume_reading()  # nothing left to read: no effect
    assert transport.can_write_eof()
    transport.write(b"the answer")
    transport.write_eof()
    with pytest.raises(RuntimeError, match="write_eof"):
        transport.write(b"too late")
    assert await _peer_eof(peer) == b"the answer"
    transport.close()
    assert await within(protocol.lost, "connection_lost") is None


async def test_the_hooks_asyncios_tls_layer_calls(pair: Pair) -> None:
    """``loop.start_tls()`` works over any transport that says it may; its TLS
    protocol then reads ``_paused`` (Python 3.10) and calls ``_force_close()``."""
    ours, _ = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    assert transport._start_tls_compatible
    assert not transport._paused
    transport.pause_reading()
    assert transport._paused
    transport.write(b"x")
    reason = ConnectionAbortedError("the TLS layer gave up")
    transport._force_close(reason)
    assert transport.is_closing()
    assert ours.fileno() == -1
    assert await within(protocol.lost, "connection_lost") is reason


# -- failures -----------------------------------------------------------------------------


async def test_a_reset_connection_is_reported_to_the_protocol(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # a reset, not an orderly end
    exc = await within(protocol.lost, "connection_lost")
    assert isinstance(exc, ConnectionResetError)
    assert transport.is_closing()
    assert ours.fileno() == -1


async def test_writing_to_a_reset_connection_reports_it(
    pair: Pair,
) -> None:
    ours, peer = pair
    protocol = Recorder()
    transport = _started(ours, protocol)
    transport.pause_reading()  # only the write can find out
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    while not transport.is_closing():  # the first write after a reset may still succeed
        transport.write(b"anyone there?")
        await asyncio.sleep(0)
    exc = await within(protocol.lost, "connection_lost")
    assert isinstance(exc, (ConnectionResetError, BrokenPipeError))


@pytest.mark.parametrize("callback", ["get_buffer", "buffer_updated"])
async def test_a_failing_protocol_callback_closes_the_transport_and_is_logged(
    pair: Pair, callback: str, caplog: pytest.LogCaptureFixture
) -> None:
    ours, peer = pair
    protocol = Recorder()
    protocol.fail_in = callback
    transport = _started(ours, protocol)
    with caplog.at_level(logging.ERROR, logger="comm_tcp"):
        peer.sendall(b"boom")
        exc = await within(protocol.lost, "connection_lost")
    assert isinstance(exc, ValueError)
    assert transport.is_closing()
    assert f"{callback}() failed" in caplog.text
    try:
        rest = await _peer_eof(peer)
    except ConnectionResetError:  # the kernel resets a connection closed with unread data
        rest = b""
    assert rest == b""


async def test_a_transport_dropped_unclosed_warns(pair: Pair) -> None:
    ours, _ = pair
    transport = SocketTransport(asyncio.get_running_loop(), ours, asyncio.BaseProtocol())
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        del transport  # nothing else refers to it: freed at once
    assert ours.fileno() == -1


# -- a comm's handshake -----------------------------------------------------------------------


async def test_a_dialer_takes_a_greeting_already_there_without_waiting_for_the_loop(
    pair: Pair,
) -> None:
    ours, peer = pair
    [greeting], _ = encode_message({"protocol": PROTOCOL_VERSION, "library": "test"})
    peer.sendall(PREAMBLE + greeting)  # as a listener does on accepting
    comm = TCPConnector().make_comm(True, {})
    _started(ours, comm.protocol)
    iterations = 0

    def count() -> None:
        nonlocal iterations
        iterations += 1

    asyncio.get_running_loop().call_soon(count)
    await handshake(comm, None, 10.0, "test")
    assert iterations == 0  # done without the loop's help
    assert comm.handshake_info["library"] == "test"
    await comm.write("first")
    sent = await _read_peer_messages(peer, 2)
    assert sent[0]["library"] == "comm-core"  # the held handshake, with the first message
    assert sent[1:] == ["first"]
    await comm.close()


async def _read_peer_messages(peer: socket.socket, count: int) -> list[Any]:
    """The first *count* messages the peer receives (after the preamble)."""
    data = b""
    while True:
        data += await within(asyncio.to_thread(peer.recv, 1 << 16), "the comm's messages")
        try:
            messages = stream_messages(data)
        except AssertionError:
            continue
        if len(messages) >= count:
            return messages


async def test_a_listener_turns_options_off_under_asyncios_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio's transport turns Nagle on by itself: the listener's options still win
    (they are not left to inheritance from the listening socket there)."""
    monkeypatch.setenv(ENV, "asyncio")
    await listener_turns_options_off()


# -- which transport comms get --------------------------------------------------------------


async def test_comms_use_it_on_asyncio_and_the_variable_selects_asyncios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(_direct.socket_transport_factory(loop), _direct._OwnTransports)
    async with serving() as served, connected(served.address()) as comm:
        assert isinstance(comm.transport, SocketTransport)  # type: ignore[attr-defined]
        server = await served.accepted()
        assert isinstance(server.transport, SocketTransport)  # type: ignore[attr-defined]
        await ping(comm)
    monkeypatch.setenv(ENV, "asyncio")
    assert not isinstance(_direct.socket_transport_factory(loop), _direct._OwnTransports)
    async with serving() as served, connected(served.address()) as comm:
        assert not isinstance(comm.transport, SocketTransport)  # type: ignore[attr-defined]
        server = await served.accepted()
        assert not isinstance(server.transport, SocketTransport)  # type: ignore[attr-defined]
        await ping(comm)
