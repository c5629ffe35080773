"""Peers that misbehave: garbage, silence, dying mid-message, oversized messages, cancellation."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm, CommClosedError, MessageTooLargeError, ProtocolError
from comm_core.protocol import MAGIC, PREAMBLE, encode_message
from comm_core.testing import until
from tcp_support import (
    IPV4,
    MiB,
    Served,
    connected,
    hold,
    ping,
    read_until_closed,
    server_greeting,
    serving,
    tcp_address,
    within,
)

pytestmark = pytest.mark.usefixtures("loop_name")

RawSocket = Callable[..., socket.socket]


def _random_garbage() -> bytes:
    data = random.Random(20240611).randbytes(4096)
    return bytes([MAGIC[0] ^ 0xFF]) + data[1:]  # not even the first byte of the magic


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + bytes(200),
    "ssh": b"SSH-2.0-OpenSSH_9.6\r\n",
    "random": _random_garbage(),
    "other-wire-version": MAGIC + bytes([99, 0, 0]) + bytes(64),
    "absurd-frame-length": PREAMBLE + struct.pack("<IQ", 1, 10**15),
    "absurd-oob-frame-length": PREAMBLE + struct.pack("<IQQ", 2, 10, 10**15),
    "absurd-frame-count": PREAMBLE + struct.pack("<I", 2**31) + bytes(64),
}


async def raw_connect(raw_socket: RawSocket, port: int) -> tuple[socket.socket, str]:
    """A raw loopback connection to *port*, and how the server names this end."""
    sock = raw_socket(socket.AF_INET)
    await within(asyncio.get_running_loop().sock_connect(sock, (IPV4, port)), "a raw connect")
    return sock, tcp_address(*sock.getsockname()[:2])


async def check_still_serving(served: Served) -> None:
    """A new client reaches a listener whose handler is :func:`hold`."""
    async with connected(served.address()) as client:
        server = await served.accepted()
        await server.write("still serving")
        assert await within(client.read(), "a message from the server") == "still serving"


def logged_about(caplog: pytest.LogCaptureFixture, peer: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if peer in r.getMessage()]


# -- garbage and silence ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_garbage_is_dropped_and_logged(
    kind: str, raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    async with serving() as served:
        sock, peer = await raw_connect(raw_socket, served.port)
        await loop.sock_sendall(sock, GARBAGE[kind])
        data, how = await read_until_closed(sock, limit=4096)
        assert how in ("eof", "reset")
        # At most what the server says before it knows who we are: its preamble and handshake.
        assert data[: len(PREAMBLE)] == PREAMBLE[: len(data)], data
        assert served.calls == 0, "the handler was called for a peer that sent garbage"
        messages = logged_about(caplog, peer)
        assert messages, f"no log line names the peer {peer}"
        assert any(word in " ".join(messages) for word in ("preamble", "bytes", "frames")), messages

        async with connected(served.address()) as comm:  # a good client still gets through
            await ping(comm)
        assert served.calls == 1


async def test_a_flood_of_garbage_costs_a_few_log_lines(
    raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    """Peers cause those lines: a listener logs a few drops, then counts the rest."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    peers = 30
    async with serving() as served:
        for _ in range(peers):
            sock, _peer = await raw_connect(raw_socket, served.port)
            await loop.sock_sendall(sock, GARBAGE["http"])
            _data, how = await read_until_closed(sock, limit=4096)
            assert how in ("eof", "reset")
        dropped = [
            r for r in caplog.records if r.getMessage().startswith("dropped a connection from")
        ]
        assert 1 <= len(dropped) <= 3, [r.getMessage() for r in dropped]
        async with connected(served.address()) as comm:  # a good client still gets through
            await ping(comm)


@pytest.mark.parametrize("sent", [b"", PREAMBLE[:5]], ids=["nothing", "part-of-preamble"])
async def test_peer_that_sends_no_preamble_is_dropped_after_the_handshake_timeout(
    sent: bytes, raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    timeout = 0.3
    async with serving(handshake_timeout=timeout) as served:
        sock, peer = await raw_connect(raw_socket, served.port)
        start = loop.time()
        await loop.sock_sendall(sock, sent)
        # The listener sends its preamble and handshake message without waiting for ours
        # (as the protocol says), then nothing more, and closes at the timeout.
        data, _ = await read_until_closed(sock, limit=4096)
        elapsed = loop.time() - start
        server_greeting(data)
        assert timeout - 0.05 <= elapsed <= timeout + 5, elapsed
        assert served.calls == 0
        assert logged_about(caplog, peer), f"no log line names the peer {peer}"
        async with connected(served.address()) as comm:
            await ping(comm)


async def test_silent_peers_are_each_dropped_at_their_own_deadline(
    raw_socket: RawSocket,
) -> None:
    """A peer that connected after another is not dropped with it, and a peer that
    connects after every earlier one was dropped or handshaken still has a deadline."""
    loop = asyncio.get_running_loop()
    timeout = 0.4
    async with serving(handshake_timeout=timeout) as served:
        first, _ = await raw_connect(raw_socket, served.port)
        first_start = loop.time()
        await within(loop.sock_recv(first, len(PREAMBLE)), "the listener to accept")
        async with connected(served.address()) as comm:  # a good client in between
            await ping(comm)
        # Not a wait for an event: the second peer must come half a timeout later,
        # so that dropping it with the first would show.
        await asyncio.sleep(timeout / 2)
        second, _ = await raw_connect(raw_socket, served.port)
        second_start = loop.time()
        await within(loop.sock_recv(second, len(PREAMBLE)), "the listener to accept")
        await read_until_closed(first, limit=4096)
        first_elapsed = loop.time() - first_start
        await read_until_closed(second, limit=4096)
        second_elapsed = loop.time() - second_start
        assert timeout - 0.05 <= first_elapsed <= timeout + 5, first_elapsed
        assert timeout - 0.01 <= second_elapsed <= timeout + 5, second_elapsed
        # Every earlier peer is gone: a new silent one is still dropped in time.
        third, _ = await raw_connect(raw_socket, served.port)
        third_start = loop.time()
        await read_until_closed(third, limit=4096)
        assert timeout - 0.05 <= loop.time() - third_start <= timeout + 5
        assert served.calls == 1


async def test_stop_keeps_the_deadline_of_connections_that_sent_no_preamble(
    raw_socket: RawSocket,
) -> None:
    """stop() does not drop a connection it accepted (its dialer may hold a comm that
    connect() returned): one that sends no preamble is dropped at its deadline, as
    if the listener had not stopped."""
    loop = asyncio.get_running_loop()
    timeout = 0.3
    async with serving(handshake_timeout=timeout) as served:
        assert served.listener is not None
        sock, _ = await raw_connect(raw_socket, served.port)
        greeting = await within(loop.sock_recv(sock, len(PREAMBLE)), "the server's preamble")
        start = loop.time()  # a little after the accept
        assert greeting == PREAMBLE  # the server has accepted the connection
        served.listener.stop()
        data, _ = await read_until_closed(sock, timeout=5)
        elapsed = loop.time() - start
        server_greeting(greeting + data)
        assert timeout - 0.1 <= elapsed <= timeout + 5, elapsed
        assert served.calls == 0


# -- peers that die mid-message ------------------------------------------------------------

#: A raw client in a process of its own: it connects, handshakes, sends the header and
#: half of a large message, says so on stdout, and waits to be killed.
_HALF_A_MESSAGE = r"""
import socket, struct, sys
from comm_core import PROTOCOL_VERSION
from comm_core.protocol import PREAMBLE, encode_message

host, port, size, read_greeting = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise SystemExit("the server closed the connection")
        data += chunk
    return data

[handshake], _ = encode_message({"protocol": PROTOCOL_VERSION})
header, payload = encode_message({"data": bytes(size)})[0]
with socket.create_connection((host, port)) as sock:
    sock.sendall(PREAMBLE + handshake)
    if read_greeting == "yes":  # so that our close is a FIN, not a reset
        assert recv_exactly(sock, len(PREAMBLE)) == PREAMBLE
        count, length = struct.unpack("<IQ", recv_exactly(sock, 12))
        recv_exactly(sock, length)
    sock.sendall(header + memoryview(payload)[: size // 2])
    print("sent", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("read_greeting", ["yes", "no"], ids=["fin", "reset"])
async def test_peer_process_killed_mid_message(read_greeting: str) -> None:
    """The reader gets CommClosedError promptly, never a partial message; the listener
    keeps serving."""
    size = 16 * MiB
    loop = asyncio.get_running_loop()
    async with serving(hold) as served:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _HALF_A_MESSAGE,
            IPV4,
            str(served.port),
            str(size),
            read_greeting,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            server = await served.accepted()  # the child's handshake arrived
            read = asyncio.ensure_future(server.read())
            assert child.stdout is not None
            line = await within(child.stdout.readline(), "the child to send half a message")
            assert line == b"sent\n"
            child.kill()
            killed = loop.time()
            await within(child.wait(), "the child to die")
            with pytest.raises(CommClosedError):
                await within(read, "the read to fail after the peer died", timeout=5)
            assert loop.time() - killed < 5
            assert server.closed()
            with pytest.raises(CommClosedError):
                await within(server.read(), "a second read")
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        await check_still_serving(served)


async def start_blocked_write(client: Comm, server: Comm) -> asyncio.Future[int]:
    """Make *server* (listening with read_high_water=MiB) stop reading, then start a 64 MiB
    write on *client* and wait until it blocks, which it stays."""
    await client.write({"first": bytes(2 * MiB)})
    await until(lambda: server.protocol.reading_paused, "the server to pause reading")  # type: ignore[attr-defined]
    write = asyncio.ensure_future(client.write({"data": bytes(64 * MiB)}))
    protocol = client.protocol  # type: ignore[attr-defined]
    await until(lambda: write.done() or protocol.write_paused, "the large write to block")
    assert not write.done()
    return write


async def test_client_transport_aborted_mid_large_write() -> None:
    """The pending write fails; the reader gets the messages that were whole, then
    CommClosedError, never part of the large one."""
    async with serving(hold, read_high_water=MiB) as served:
        async with connected(served.address()) as client:
            server = await served.accepted()
            write = await start_blocked_write(client, server)
            client.transport.abort()  # type: ignore[attr-defined]
            with pytest.raises(CommClosedError):
                await within(write, "the write to fail")
            first = await within(server.read(), "the whole message sent before")
            assert bytes(first["first"]) == bytes(2 * MiB)
            with pytest.raises(CommClosedError):
                await within(server.read(), "the server's read to fail")
            assert client.closed()
        await check_still_serving(served)


# -- max_message_size ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [2000, 2 * MiB], ids=["in-body", "out-of-band"])
async def test_sender_refuses_a_message_above_its_limit(size: int) -> None:
    limit = size // 2
    received: list[Any] = []

    async def record(comm: Comm) -> None:
        async with comm:
            async for msg in comm:
                received.append(msg)
                await comm.write(msg)

    async with serving(record) as served, connected(served.address(), max_message_size=limit) as c:
        with pytest.raises(MessageTooLargeError) as info:
            await c.write({"data": b"x" * size})
        assert info.value.limit == limit
        assert info.value.size > size
        assert str(limit) in str(info.value)
        assert str(info.value.size) in str(info.value)
        assert not c.closed()
        await ping(c)  # nothing of the refused message was sent
        assert received == [{"op": "ping", "payload": "ping"}]


@pytest.mark.parametrize("size", [2000, 2 * MiB], ids=["in-body", "out-of-band"])
async def test_receiver_drops_a_comm_sending_above_its_limit(
    size: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limit = size // 2
    async with (
        serving(hold, max_message_size=limit) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()
        await client.write({"data": b"x" * size})
        with pytest.raises(MessageTooLargeError) as info:
            await within(server.read(), "the server to refuse the message")
        error = info.value
        assert isinstance(error, ProtocolError)
        assert error.limit == limit
        assert error.size > size
        assert str(error.size) in str(error)
        assert str(limit) in str(error)
        assert client.local_address in str(error)
        assert server.closed()
        with pytest.raises(CommClosedError):
            await within(client.read(), "the sender's read after the receiver refused")


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelled_read_aborts_the_comm() -> None:
    async with serving(hold) as served, connected(served.address()) as client:
        server = await served.accepted()
        peer_read = asyncio.ensure_future(server.read())
        started = asyncio.get_running_loop().create_future()

        async def read() -> Any:
            started.set_result(None)
            return await client.read()  # suspends at once: nothing was sent

        reading = asyncio.ensure_future(read())
        await started
        assert not reading.done()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert client.closed()
        with pytest.raises(CommClosedError):
            await within(peer_read, "the peer to see the comm closed")
        with pytest.raises(CommClosedError):
            await client.read()


async def test_cancelled_large_write_aborts_the_comm() -> None:
    """The peer sees the comm closed and never the partial message."""
    async with (
        serving(hold, read_high_water=MiB) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()
        write = await start_blocked_write(client, server)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert client.closed()
        first = await within(server.read(), "the whole message sent before")
        assert len(first["first"]) == 2 * MiB
        with pytest.raises(CommClosedError):
            await within(server.read(), "the peer to see the comm closed")
        with pytest.raises(CommClosedError):
            await client.write("after")


# -- closing --------------------------------------------------------------------------------


async def test_abort_after_a_close_that_flushed() -> None:
    """abort() never raises, also after a close() that had to wait for its data to leave
    (asyncio's transport then refuses abort())."""
    closed = asyncio.Event()

    async def send_and_close(comm: Comm) -> None:
        await comm.write({"data": bytes(64 * MiB)})
        await comm.close()
        closed.set()

    async with serving(send_and_close) as served, connected(served.address()) as client:
        server = await served.accepted()
        msg = await within(client.read(), "the large message")
        assert len(msg["data"]) == 64 * MiB
        await within(closed.wait(), "the server's close()")
        server.abort()
        server.abort()
        await server.close()
        assert server.closed()
        with pytest.raises(CommClosedError):
            await within(client.read(), "the read after the server closed")


# -- a connection reset under a writer that never waits ----------------------------------------


async def test_writes_after_a_reset_raise_instead_of_vanishing() -> None:
    """Regression: after the peer reset the connection, a writer whose writes never had to
    wait (so it never yielded to the event loop) wrote into the void for ever: the
    transport dropped the data and connection_lost() could not run. write() must raise
    CommClosedError at once."""
    with socket.create_server((IPV4, 0)) as server_sock:
        port = server_sock.getsockname()[1]
        connector = comm_core.get_backend("tcp").get_connector()
        comm = await within(connector.connect(f"{IPV4}:{port}"), "a raw connect")
        try:
            peer, _ = server_sock.accept()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Out-of-band frames: each write() hands its bytes to the socket at once, and
            # ten of them fit in the kernel's buffers, so none has to wait.
            payload = bytes(100 * 1024)
            written = 0
            failure: CommClosedError | None = None
            for index in range(2000):
                if index == 10:
                    peer.close()  # an RST, which the writer learns of on its next send
                try:
                    await comm.write({"index": index, "data": payload})
                except CommClosedError as exc:
                    failure = exc
                    break
                written += 1
            assert failure is not None, "2000 writes after the reset all 'succeeded'"
            assert 10 <= written < 20, written
        finally:
            comm.abort()


# -- the first message (the handshake) is small ---------------------------------------------------


async def test_a_large_first_message_is_refused_before_anything_is_reserved(
    raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: 20 bytes (the preamble and a header claiming just under 1 MiB) made the
    listener allocate and zero 1 MiB before the handshake, and hold it until the handshake
    timeout. A first message is limited to MAX_FIRST_MESSAGE: the peer is dropped at once."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    async with serving(handshake_timeout=60) as served:
        sock, peer = await raw_connect(raw_socket, served.port)
        start = loop.time()
        await loop.sock_sendall(sock, PREAMBLE + struct.pack("<IQ", 1, 2**20 - 1))
        data, _ = await read_until_closed(sock, limit=4096)
        assert loop.time() - start < 5
        assert data[: len(PREAMBLE)] == PREAMBLE[: len(data)]
        assert served.calls == 0
        assert any("first message" in m for m in logged_about(caplog, peer)), caplog.text


async def test_a_large_message_right_after_the_handshake_is_accepted(
    raw_socket: RawSocket,
) -> None:
    """The limit of the first message is lifted as soon as it is read, even when the next
    message arrives in the same bytes."""
    loop = asyncio.get_running_loop()
    [handshake], _ = encode_message({"protocol": PROTOCOL_VERSION})
    big = encode_message({"data": bytes(2 * MiB)})[0]
    async with serving(hold) as served:
        sock, _ = await raw_connect(raw_socket, served.port)
        await loop.sock_sendall(sock, b"".join([PREAMBLE, handshake, *map(bytes, big)]))
        server = await served.accepted()
        msg = await within(server.read(), "the large message")
        assert bytes(msg["data"]) == bytes(2 * MiB)
