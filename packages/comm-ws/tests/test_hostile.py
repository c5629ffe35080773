"""Every byte from a WebSocket peer is hostile: the HTTP head, frame lengths, control frames
and fragments are bounded, and a peer that breaks a rule gets comm's errors, on both ends.

The peers here are raw sockets speaking just enough WebSocket to break one rule at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import comm_core
from comm_core import CommClosedError, MessageTooLargeError, ProtocolError
from comm_core.protocol import encode_message
from comm_core.testing import echo_handler
from comm_ws._protocol import FIRST_CAPACITY, MAX_FRAGMENTS, WSProtocol
from comm_ws._upgrade import MAX_HEAD, ClientUpgrade, ServerUpgrade
from ws_support import EVENT_TIMEOUT

pytestmark = pytest.mark.usefixtures("loop_name")


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame, as a peer would write it (masked if *mask*)."""
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if mask is None:
        return header + payload
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def message(msg: object) -> bytes:
    buffers, _ = encode_message(msg)
    return b"".join(bytes(b) for b in buffers)


GREETING = {"protocol": comm_core.PROTOCOL_VERSION, "library": "raw", "version": "0"}


# -- a raw server, for comm-ws's client ----------------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A server that accepts the upgrade, sends a comm greeting, then runs *script*."""

    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            response, refused = ServerUpgrade("/").respond(head)
            assert refused is None
            writer.write(response + frame(2, message(GREETING)))
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _sends(data: bytes, writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
    writer.write(data)
    await writer.drain()
    await reader.read()  # until the client hangs up


async def _read_after(address: str) -> BaseException:
    """The error of the client's first read after connecting to *address*."""
    comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
    try:
        await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
    except Exception as exc:
        assert comm.closed()
        return exc
    finally:
        comm.abort()
    raise AssertionError("the read returned")


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (frame(1, b"text"), ProtocolError, "text message"),
        (bytes((0x82 | 0x40, 0)), ProtocolError, "reserved bits"),
        (frame(2, b"x", mask=b"abcd"), ProtocolError, "masked"),
        (frame(5, b""), ProtocolError, "unknown opcode 5"),
        (frame(9, b"p" * 126), ProtocolError, "126 bytes long"),
        (frame(9, b"p", fin=False), ProtocolError, "fragmented"),
        (frame(0, b"x"), ProtocolError, "continuation frame outside a message"),
        (frame(2, b"a", fin=False) + frame(2, b"b"), ProtocolError, "before finishing"),
        (struct.pack("!BBQ", 0x82, 127, 1 << 63), ProtocolError, "top bit"),
        (struct.pack("!BBQ", 0x82, 127, 1 << 40), MessageTooLargeError, "1099511627776"),
        (frame(8, b"\x03"), ProtocolError, "close frame of one byte"),
    ],
)
async def test_a_broken_frame_ends_the_comm(
    data: bytes, error: type[BaseException], match: str
) -> None:
    async with raw_server(lambda r, w: _sends(data, w, r)) as address:
        exc = await _read_after(address)
    assert isinstance(exc, error), exc
    assert match in str(exc)


async def test_a_large_length_reserves_little_until_the_bytes_come() -> None:
    """A frame header announcing 200 MiB (allowed) makes the reader reserve a small
    buffer, not 200 MiB: what a header reserves stays within a few times what arrived."""
    arrived = asyncio.Event()

    async def announce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!BBQ", 0x82, 127, 200 << 20) + b"\0" * 100_000)
        await writer.drain()
        await arrived.wait()

    async with raw_server(announce) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        try:
            protocol = comm.protocol  # type: ignore[attr-defined]
            assert isinstance(protocol, WSProtocol)
            read = asyncio.ensure_future(comm.read())
            for _ in range(200):  # bounded: until the 100,000 bytes are in
                if protocol._filled >= 100_000:
                    break
                await asyncio.sleep(0.01)
            assert protocol._filled == 100_000
            assert len(protocol._target) <= 4 * max(FIRST_CAPACITY, 100_000)
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
        finally:
            arrived.set()
            comm.abort()


async def test_fragments_are_joined() -> None:
    parts = message({"in": "fragments", "data": b"q" * 200_000})
    cut = [parts[:10], parts[10:100_000], parts[100_000:]]
    data = frame(2, cut[0], fin=False) + frame(9, b"ping") + frame(0, cut[1], fin=False)
    data += frame(0, cut[2])

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        await reader.read()

    async with raw_server(script) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        try:
            got = await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
            assert got == {"in": "fragments", "data": b"q" * 200_000}
        finally:
            comm.abort()


async def test_too_many_fragments() -> None:
    body = message("x" * (MAX_FRAGMENTS + 10))
    data = frame(2, body[:1], fin=False)
    data += b"".join(frame(0, body[i : i + 1], fin=False) for i in range(1, MAX_FRAGMENTS + 2))
    async with raw_server(lambda r, w: _sends(data, w, r)) as address:
        exc = await _read_after(address)
    assert isinstance(exc, ProtocolError)
    assert f"more than {MAX_FRAGMENTS} fragments" in str(exc)


async def test_fragments_count_towards_the_size_limit() -> None:
    data = frame(2, b"\0" * 300_000, fin=False) + frame(0, b"\0" * 300_000, fin=False)
    async with raw_server(lambda r, w: _sends(data, w, r)) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT, max_message_size=1000)
        try:
            with pytest.raises(MessageTooLargeError):
                await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
        finally:
            comm.abort()


async def test_a_ping_gets_its_pong() -> None:
    pong = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame(9, b"are you there"))
        await writer.drain()
        data = b""
        for _ in range(100):  # the client's handshake, then the pong: FIN|pong, masked, 13
            at = data.find(b"\x8a\x8d")
            if at >= 0 and len(data) >= at + 2 + 4 + 13:
                mask = data[at + 2 : at + 6]
                payload = data[at + 6 : at + 19]
                pong.set_result(bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
                break
            chunk = await reader.read(4096)
            if not chunk:
                break
            data += chunk
        await reader.read()

    async with raw_server(script) as address:
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        try:
            assert await asyncio.wait_for(pong, EVENT_TIMEOUT) == b"are you there"
        finally:
            comm.abort()


# -- a raw client, for comm-ws's listener ----------------------------------------------------


async def _raw_client(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = comm_core.get_address_host_port(address)
    return await asyncio.open_connection(host, port)


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """What the listener sends until it closes (bounded by EVENT_TIMEOUT)."""
    return await asyncio.wait_for(reader.read(), EVENT_TIMEOUT)


@contextlib.asynccontextmanager
async def _listener(**kwargs: object) -> AsyncIterator[comm_core.Listener]:
    async with comm_core.listen("ws://127.0.0.1:0", echo_handler, **kwargs) as listener:
        yield listener
        # whatever the test did, the listener still serves others
        async with await comm_core.connect(listener.contact_address) as comm:
            await comm.write("still serving")
            assert await comm.read() == "still serving"


async def test_an_endless_request_head_is_refused() -> None:
    async with _listener() as listener:
        reader, writer = await _raw_client(listener.contact_address)
        writer.write(b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * (MAX_HEAD + 10))
        answer = await _answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"longer than" in answer


async def test_too_many_header_lines_are_refused() -> None:
    async with _listener() as listener:
        reader, writer = await _raw_client(listener.contact_address)
        request = ClientUpgrade("ws", "127.0.0.1", 1, "/").request
        writer.write(request[:-2] + b"X-A: b\r\n" * 101 + b"\r\n")
        answer = await _answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"more than 100 header lines" in answer


async def test_a_request_with_a_body_is_refused() -> None:
    async with _listener() as listener:
        reader, writer = await _raw_client(listener.contact_address)
        request = ClientUpgrade("ws", "127.0.0.1", 1, "/").request
        writer.write(request[:-2] + b"Content-Length: 5\r\n\r\nhello")
        answer = await _answer(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_silent_client_is_dropped_at_the_handshake_timeout() -> None:
    async with _listener(handshake_timeout=0.3) as listener:
        reader, writer = await _raw_client(listener.contact_address)
        writer.write(b"GET / HTT")  # and nothing more
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await _answer(reader) == b""
        writer.close()
        assert loop.time() - start < 0.3 + 5


async def _upgraded(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await _raw_client(address)
    writer.write(ClientUpgrade("ws", "127.0.0.1", 1, "/").request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EVENT_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def test_an_unmasked_client_frame_closes_with_1002() -> None:
    async with _listener() as listener:
        reader, writer = await _upgraded(listener.contact_address)
        writer.write(frame(2, message(GREETING)))  # not masked
        answer = await _answer(reader)
        writer.close()
        assert b"\x88" in answer  # a close frame...
        at = answer.index(b"\x88")
        assert struct.unpack("!H", answer[at + 2 : at + 4]) == (1002,)  # protocol error
        assert b"unmasked" in answer[at:]


async def test_a_first_message_above_64_kib_is_refused_before_it_arrives() -> None:
    async with _listener() as listener:
        reader, writer = await _upgraded(listener.contact_address)
        writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, 65537) + os.urandom(4))
        answer = await _answer(reader)
        writer.close()
        at = answer.index(b"\x88")
        assert struct.unpack("!H", answer[at + 2 : at + 4]) == (1009,)  # message too big


async def test_a_peer_that_never_answers_pings_is_dead() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads, never answers

    async with raw_server(silent) as address:
        comm = await comm_core.connect(
            address, timeout=EVENT_TIMEOUT, ping_interval=0.1, ping_timeout=0.2
        )
        try:
            with pytest.raises(CommClosedError, match="did not answer a WebSocket ping"):
                await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
        finally:
            comm.abort()


async def test_keepalive_spares_a_slow_reader() -> None:
    """A client whose reader does not read for a while (its reading pauses) is not
    dropped by either side's keepalive, and then reads everything."""
    count = 40
    chunk = b"\0" * 100_000

    async def flood(comm: comm_core.Comm) -> None:
        async with comm:
            for i in range(count):
                await comm.write({"i": i, "data": chunk})
            with contextlib.suppress(CommClosedError):
                await comm.read()

    keepalive = {"ping_interval": 0.05, "ping_timeout": 0.05}
    async with comm_core.listen(
        "ws://127.0.0.1:0", flood, write_high_water=64 * 1024, **keepalive
    ) as listener:
        comm = await comm_core.connect(
            listener.contact_address, read_high_water=200_000, **keepalive
        )
        async with comm:
            protocol = comm.protocol  # type: ignore[attr-defined]
            for _ in range(200):  # bounded: until the client's reading paused
                if protocol._reading_paused:
                    break
                await asyncio.sleep(0.01)
            assert protocol._reading_paused
            await asyncio.sleep(0.5)  # ten ping intervals with the reader asleep
            for i in range(count):
                got = await asyncio.wait_for(comm.read(), EVENT_TIMEOUT)
                assert got["i"] == i


async def test_handshake_errors_name_the_peer() -> None:
    data = frame(2, b"\0\0\0\x09")  # a header that says 9 frames, and no room for them
    async with raw_server(lambda r, w: _sends(data, w, r)) as address:
        exc = await _read_after(address)
    assert isinstance(exc, ProtocolError)
    assert "127.0.0.1" in str(exc)


async def test_peers_that_hang_up_mid_upgrade_do_not_fill_the_pending_slots() -> None:
    """Connections lost during their HTTP upgrade free their place among the
    ``max_pending_handshakes``: the listener then still accepts others."""
    async with _listener(max_pending_handshakes=4, handshake_timeout=30) as listener:
        for _ in range(12):
            _, writer = await _raw_client(listener.contact_address)
            writer.write(b"GET / HTTP/1.1\r\n")
            await writer.drain()
            writer.transport.abort()
        pending = listener._pending  # type: ignore[attr-defined]
        for _ in range(500):  # bounded: until the listener has seen every one of them go
            if all(p.state == "closed" for p in pending):
                break
            await asyncio.sleep(0.01)
        # _listener's exit connects a good client through the listener: it must get in.


async def test_a_flood_of_refused_clients_costs_a_few_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused upgrade is a line a stranger can cause: a flood of them gets the first few
    and one count, not a line each."""
    caplog.set_level(logging.INFO, logger="comm_ws")
    flood = 12
    async with _listener() as listener:
        for _ in range(flood):
            reader, writer = await _raw_client(listener.contact_address)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP, no upgrade
            # The listener logs as it answers and closes: with the answer, the line is there.
            assert (await _answer(reader)).startswith(b"HTTP/1.1 426 ")
            writer.close()
        refused = [r for r in caplog.records if "refused the connection from" in r.getMessage()]
        assert len(refused) == 3
    summary = [r for r in caplog.records if f"... and {flood - 3} more" in r.getMessage()]
    assert len(summary) == 1
