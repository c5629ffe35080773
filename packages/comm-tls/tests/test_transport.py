"""comm-tls's own TLS transport, on its own: OpenSSL's non-blocking rules, flow control, closing.

Each test runs real TLS over a real loopback TCP connection, on asyncio and on
uvloop. Where a test needs OpenSSL to answer "want read" or "want write" at a
precise moment (which real traffic does only rarely, during TLS 1.3
post-handshake messages), :class:`Scripted` wraps the real socket and raises
the error once before passing the call on, as OpenSSL would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import comm_core
from comm_core import CommClosedError
from comm_core.testing import until
from comm_tls import Security, TLSComm
from comm_tls import _transport as transport_module
from comm_tls._transport import TLSTransport, handshake
from tls_support import IPV4, MiB, connected, serving, within

pytestmark = pytest.mark.usefixtures("loop_name")


class Recorder(asyncio.BufferedProtocol):
    """Keeps what arrives and every callback, with futures to await them."""

    def __init__(self, buffer_size: int = 256 * 1024) -> None:
        self.buffer = bytearray(buffer_size)
        self.data = bytearray()
        self.transport: TLSTransport | None = None
        self.events: list[str] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.paused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.resumed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._want = 0
        self._got: asyncio.Future[None] | None = None
        #: Called after each buffer_updated(), with the recorder.
        self.after_update: Callable[[Recorder], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TLSTransport)
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]
        if self._got is not None and len(self.data) >= self._want and not self._got.done():
            self._got.set_result(None)
        if self.after_update is not None:
            self.after_update(self)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        self.events.append("resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    async def received(self, size: int, what: str = "the data") -> bytes:
        """Wait until *size* bytes arrived; return them."""
        if len(self.data) < size:
            self._want = size
            self._got = asyncio.get_running_loop().create_future()
            await within(self._got, what)
        return bytes(self.data)


class Scripted:
    """A real SSL socket whose ``send`` / ``recv_into`` first raise scripted errors.

    ``send_errors`` and ``recv_errors`` are raised, one per call, before calls
    pass through; ``sends`` notes the size of every send and whether it raised.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.send_errors: list[BaseException] = []
        self.recv_errors: list[BaseException] = []
        self.sends: list[tuple[int, str]] = []

    def send(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if self.send_errors:
            error = self.send_errors.pop(0)
            self.sends.append((size, type(error).__name__))
            raise error
        try:
            sent = self.sock.send(data)
        except ssl.SSLError as exc:
            self.sends.append((size, type(exc).__name__))
            raise
        self.sends.append((size, "sent"))
        return sent

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        if self.recv_errors:
            raise self.recv_errors.pop(0)
        return self.sock.recv_into(buffer, nbytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def _socket_pair(security: Security) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A client and a server SSL socket over loopback TCP, non-blocking, handshaken."""
    loop = asyncio.get_running_loop()
    with socket.create_server((IPV4, 0)) as listening:
        raw_client = socket.create_connection(listening.getsockname())
        raw_server, _ = listening.accept()
    for raw in (raw_client, raw_server):
        raw.setblocking(False)
    client = security.client_context.wrap_socket(
        raw_client, server_hostname=IPV4, do_handshake_on_connect=False
    )
    server = security.server_context.wrap_socket(
        raw_server, server_side=True, do_handshake_on_connect=False
    )
    deadline = loop.time() + 10
    try:
        await within(
            asyncio.gather(handshake(client, deadline), handshake(server, deadline)),
            "the handshakes",
        )
    except BaseException:
        client.close()
        server.close()
        raise
    return client, server


@contextlib.asynccontextmanager
async def transports(
    security: Security,
    client_protocol: Recorder | None = None,
    server_protocol: Recorder | None = None,
    wrap: Callable[[ssl.SSLSocket], Any] | None = None,
) -> AsyncIterator[tuple[TLSTransport, Recorder, TLSTransport, Recorder]]:
    """Two transports connected to each other; aborted at the end if still open.

    *wrap* wraps the client's socket (in a :class:`Scripted`, say).
    """
    loop = asyncio.get_running_loop()
    client_sock, server_sock = await _socket_pair(security)
    client_protocol = client_protocol or Recorder()
    server_protocol = server_protocol or Recorder()
    sock: Any = wrap(client_sock) if wrap is not None else client_sock
    client = TLSTransport(loop, sock, client_protocol)
    server = TLSTransport(loop, server_sock, server_protocol)
    client.start()
    server.start()
    try:
        yield client, client_protocol, server, server_protocol
    finally:
        client.abort()
        server.abort()
        await within(
            asyncio.gather(client_protocol.lost, server_protocol.lost), "connection_lost()"
        )


# -- the data path ------------------------------------------------------------------------


async def test_data_arrives_intact_both_ways(temporary: Security) -> None:
    one, two = os.urandom(5 * MiB + 7), os.urandom(3 * MiB + 1)
    async with transports(temporary) as (client, at_client, server, at_server):
        client.write(one[:100])
        client.writelines([one[100:200], memoryview(one)[200:]])  # small, then large
        server.write(bytearray(two))
        assert await at_server.received(len(one)) == one
        assert await at_client.received(len(two)) == two
        assert client.get_write_buffer_size() == 0


async def test_extra_info(temporary: Security) -> None:
    async with transports(temporary) as (client, _, server, _):
        assert client.get_extra_info("sslcontext") is temporary.client_context
        assert server.get_extra_info("sslcontext") is temporary.server_context
        for transport in (client, server):
            ssl_object = transport.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
            assert transport.get_extra_info("cipher")[1] == "TLSv1.3"
            assert transport.get_extra_info("peercert")["subject"]
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) in (0, 1)
            assert transport.get_extra_info("sockname")[0] == IPV4
            assert transport.get_extra_info("peername")[0] == IPV4
            assert transport.get_extra_info("nothing", "default") == "default"
            assert transport.get_extra_info("tls_version") == "TLSv1.3"
            assert transport.get_extra_info("session_reused") is False
        assert client.get_extra_info("sockname") == server.get_extra_info("peername")
        assert client.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            client.write_eof()


async def test_small_mutable_buffers_are_copied(temporary: Security) -> None:
    """A buffer below 64 KiB may be reused by the caller once write() returns."""
    async with transports(temporary) as (client, _, server, at_server):
        server.pause_reading()
        big = os.urandom(16 * MiB)
        client.write(big)  # fills the socket: what follows is queued
        assert client.get_write_buffer_size() > 0
        small = bytearray(b"before")
        client.write(small)
        small[:] = b"after!"
        server.resume_reading()
        assert await at_server.received(len(big) + 6) == big + b"before"


async def test_pending_decrypted_bytes_are_delivered_after_resume_reading(
    temporary: Security,
) -> None:
    """OpenSSL keeps the rest of a record it decrypted for a small buffer: the socket is not
    readable for it, yet it must be delivered (when reading resumes)."""

    def pause_once(recorder: Recorder) -> None:
        assert recorder.transport is not None
        if len(recorder.data) == 100:
            recorder.transport.pause_reading()

    at_server = Recorder(buffer_size=100)
    at_server.after_update = pause_once
    payload = os.urandom(3000)  # one record
    async with transports(temporary, server_protocol=at_server) as (client, _, server, _):
        client.write(payload)
        await at_server.received(100, "the first 100 bytes")
        assert not server.is_reading()
        ssl_object = server.get_extra_info("ssl_object")
        assert ssl_object.pending() == 2900
        server.resume_reading()
        assert await at_server.received(3000, "the rest of the record") == payload


# -- OpenSSL's non-blocking rules ------------------------------------------------------------


async def test_a_write_that_blocks_is_retried_with_the_same_bytes(temporary: Security) -> None:
    """Backpressure with a peer that does not read: the transport pauses its protocol, and
    every write OpenSSL could not finish is retried with the same bytes."""
    payload = os.urandom(40 * MiB)
    scripted: list[Scripted] = []

    def wrap(sock: ssl.SSLSocket) -> Scripted:
        scripted.append(Scripted(sock))
        return scripted[0]

    async with transports(temporary, wrap=wrap) as (client, at_client, server, at_server):
        server.pause_reading()  # the peer does not read
        client.set_write_buffer_limits(high=4 * MiB)
        client.write(payload)
        sock = client.get_extra_info("socket")
        if hasattr(socket, "TCP_CORK"):
            # Corked only while a large write is handed to the kernel, never in between.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        await within(at_client.paused, "pause_writing()")
        assert client.get_write_buffer_size() > 4 * MiB
        await until(
            lambda: any(outcome == "SSLWantWriteError" for _, outcome in scripted[0].sends),
            "the socket to fill up",
        )
        assert not at_client.resumed.done()
        server.resume_reading()
        assert await at_server.received(len(payload)) == payload
        await within(at_client.resumed, "resume_writing()")
        assert client.get_write_buffer_size() == 0
    sends = scripted[0].sends
    for (size, outcome), (next_size, _) in itertools.pairwise(sends):
        if outcome == "SSLWantWriteError":
            assert next_size == size, sends
    assert max(size for size, _ in sends) <= 1024 * 1024


async def test_a_write_that_wants_read_waits_for_the_socket_to_be_readable(
    temporary: Security,
) -> None:
    scripted: list[Scripted] = []

    def wrap(sock: ssl.SSLSocket) -> Scripted:
        wrapped = Scripted(sock)
        wrapped.send_errors.append(ssl.SSLWantReadError(ssl.SSL_ERROR_WANT_READ, "scripted"))
        scripted.append(wrapped)
        return wrapped

    async with transports(temporary, wrap=wrap) as (client, at_client, server, at_server):
        client.write(b"hello")
        assert scripted[0].sends == [(5, "SSLWantReadError")]
        assert client.get_write_buffer_size() == 5
        # A write behind it waits too, and keeps its place.
        client.write(b" world")
        assert len(scripted[0].sends) == 1
        server.write(b"x")  # makes the client's socket readable
        assert await at_server.received(11, "the write, once readable") == b"hello world"
        assert await at_client.received(1) == b"x"
        assert scripted[0].sends[1][0] == 5  # the same bytes again, first


async def test_a_small_write_that_blocks_is_retried_with_the_same_bytes(
    temporary: Security,
) -> None:
    scripted: list[Scripted] = []

    def wrap(sock: ssl.SSLSocket) -> Scripted:
        wrapped = Scripted(sock)
        wrapped.send_errors.append(ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE, "scripted"))
        scripted.append(wrapped)
        return wrapped

    async with transports(temporary, wrap=wrap) as (client, _, _, at_server):
        client.write(b"hello")
        client.write(bytearray(b" world"))  # queued behind it, not joined with it
        assert await at_server.received(11) == b"hello world"
        sizes = [size for size, _ in scripted[0].sends]
        assert sizes[:2] == [5, 5]


async def test_a_read_that_wants_write_waits_for_the_socket_to_be_writable(
    temporary: Security,
) -> None:
    def wrap(sock: ssl.SSLSocket) -> Scripted:
        wrapped = Scripted(sock)
        wrapped.recv_errors.append(ssl.SSLWantWriteError(ssl.SSL_ERROR_WANT_WRITE, "scripted"))
        return wrapped

    async with transports(temporary, wrap=wrap) as (_, at_client, server, _):
        server.write(b"over here")
        assert await at_client.received(9, "the data, once writable") == b"over here"


# -- closing ----------------------------------------------------------------------------------


async def test_close_sends_queued_data_then_close_notify(temporary: Security) -> None:
    payload = os.urandom(8 * MiB)
    async with transports(temporary) as (client, at_client, server, at_server):
        client.write(payload)
        client.close()
        assert client.is_closing()
        client.write(b"ignored")  # after close(): dropped
        assert await within(at_server.lost, "the server's connection_lost()") is None
        assert await within(at_client.lost, "the client's connection_lost()") is None
        assert bytes(at_server.data) == payload
        # The server saw a clean end (close_notify) and answered it, which ended the client.
        assert at_server.events[-2:] == ["eof", "lost"]
        assert "eof" not in at_client.events
        for transport in (client, server):
            assert transport.get_extra_info("socket").fileno() == -1


async def test_close_does_not_wait_for_ever_on_a_peer_that_does_not_answer(
    temporary: Security, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "SHUTDOWN_TIMEOUT", 0.2)
    loop = asyncio.get_running_loop()
    client_sock, server_sock = await _socket_pair(temporary)
    try:
        at_client = Recorder()
        client = TLSTransport(loop, client_sock, at_client)
        client.start()
        start = loop.time()
        client.close()  # the server socket never reads, never answers
        assert await within(at_client.lost, "connection_lost()") is None
        assert loop.time() - start >= 0.15  # (uvloop's clock has millisecond steps)
        assert client_sock.fileno() == -1
    finally:
        server_sock.close()


async def test_abort_drops_what_is_queued_at_once(temporary: Security) -> None:
    async with transports(temporary) as (client, at_client, server, at_server):
        server.pause_reading()
        client.write(os.urandom(32 * MiB))
        assert client.get_write_buffer_size() > 0
        client.abort()
        assert client.get_write_buffer_size() == 0
        assert await within(at_client.lost, "connection_lost()") is None
        server.resume_reading()
        await within(at_server.lost, "the server to see the connection end")
        assert len(at_server.data) < 32 * MiB


async def test_peer_vanishing_mid_message(temporary: Security) -> None:
    """A client that disappears in the middle of a 64 MiB message: the listener's read
    fails promptly with CommClosedError, the listener stays fine."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException | None] = loop.create_future()

    async def reader(comm: Any) -> None:
        try:
            await comm.read()
        except BaseException as exc:
            outcome.set_result(exc)
            raise
        outcome.set_result(None)

    async with serving(reader, security=temporary) as served:
        comm = await within(comm_core.connect(served.address(), security=temporary), "connect")
        assert isinstance(comm, TLSComm)
        transport = comm.transport
        assert isinstance(transport, TLSTransport)
        write = asyncio.ensure_future(comm.write({"big": os.urandom(64 * MiB)}))
        await until(lambda: transport.get_write_buffer_size() > 0, "the message to be queued")
        sock = transport.get_extra_info("socket")
        # Vanish: no close_notify, no FIN after the whole message; just the end of the socket.
        sock.shutdown(socket.SHUT_RDWR)
        comm.abort()
        with pytest.raises(CommClosedError):
            await within(write, "the write to fail")
        error = await within(outcome, "the listener's read to fail")
        assert isinstance(error, CommClosedError)
        async with connected(served.address(), security=temporary) as again:
            await again.write("still there")


async def test_the_old_path_stays_available(
    temporary: Security, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMM_TLS_TRANSPORT=asyncio selects asyncio's TLS layer instead of this transport."""
    monkeypatch.setenv(transport_module.ENV, "asyncio")
    async with (
        serving(security=temporary) as served,
        connected(served.address(), security=temporary) as client,
    ):
        await client.write("ping")
        assert await within(client.read(), "the echo") == "ping"
        assert not isinstance(client.transport, TLSTransport)
        assert not isinstance((await served.accepted()).transport, TLSTransport)
    monkeypatch.delenv(transport_module.ENV)
    assert transport_module.available(asyncio.get_running_loop())


class _Chunks(asyncio.Protocol):
    """A plain (not buffered) protocol: the transport hands it ``bytes``."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.eof = False

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.data += data

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def test_a_plain_protocol_gets_data_received(temporary: Security) -> None:
    loop = asyncio.get_running_loop()
    payload = os.urandom(3 * MiB)
    client_sock, server_sock = await _socket_pair(temporary)
    at_server = _Chunks()
    server = TLSTransport(loop, server_sock, at_server)
    server.start()
    at_client = Recorder()
    client = TLSTransport(loop, client_sock, at_client)
    client.start()
    client.write(payload)
    client.close()
    assert await within(at_server.lost, "the server's connection_lost()") is None
    assert await within(at_client.lost, "the client's connection_lost()") is None
    assert at_server.eof
    assert bytes(at_server.data) == payload
    assert server.is_closing()


async def test_close_while_the_peer_is_still_sending(temporary: Security) -> None:
    """What arrives after close() is dropped, and both ends still end cleanly: the peer
    sends what it had queued, answers the close_notify, and nobody is reset."""
    payload = os.urandom(16 * MiB)
    async with transports(temporary) as (client, at_client, server, at_server):
        server.write(payload)
        await at_client.received(1, "the first bytes")
        client.close()
        assert await within(at_client.lost, "the client's connection_lost()") is None
        assert await within(at_server.lost, "the server's connection_lost()") is None
        assert len(at_client.data) < len(payload)
        assert "eof" in at_server.events
        assert at_server.events[-1] == "lost"
        assert server.get_write_buffer_size() == 0
