"""MessageComm: a comm over a transport of whole messages (the ``msgq`` test transport).

The conformance kit runs over it, as over any backend; the tests below check
what the base class does for a message transport: the wire format inside each
message, size limits on both ends, the first-message limit, a peer's garbage,
and what reads and writes raise once the comm is over.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

import comm_core
from comm_core import CommClosedError, MessageTooLargeError, ProtocolError, SerializationError
from comm_core.protocol import MAX_FIRST_MESSAGE, encode_message, split_message
from comm_core.testing import BackendConformance
from message_backend import PipeBackend, PipeComm


@pytest.fixture(autouse=True)
def _msgq(registry: comm_core.Registry) -> None:
    comm_core.register_backend(PipeBackend, replace=True)


class TestMessageConformance(BackendConformance):
    scheme = "msgq"
    listen_address = "msgq://"


def wire(msg: Any) -> bytes:
    buffers, _ = encode_message(msg)
    return b"".join(bytes(memoryview(b).cast("B")) for b in buffers)


async def pair(**kwargs: Any) -> tuple[PipeComm, PipeComm]:
    return PipeComm.pair("msgq://a", "msgq://b", **kwargs)


# -- the wire format inside a message ---------------------------------------------------------


def test_split_message_gives_the_frames_without_copying_them() -> None:
    payload = bytearray(b"x" * 100_000)
    data = bytearray(wire({"data": payload}))
    frames = split_message(data, max_message_size=1 << 20)
    assert type(frames[0]) is bytes
    assert bytes(frames[1]) == payload
    frames[1][0] = ord("y")  # a view of the message: writable, not a copy
    assert data[-100_000] == ord("y")


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"\x01\x00", ProtocolError, "too short for a header"),
        (struct.pack("<I", 0), ProtocolError, "with 0 frames"),
        (struct.pack("<I", 70_000), ProtocolError, "with 70000 frames"),
        (struct.pack("<IQ", 2, 1), ProtocolError, "shorter than its header"),
        (struct.pack("<IQ", 1, 5) + b"\xc0", ProtocolError, "announces 17"),
        (struct.pack("<IQ", 1, 1) + b"\xc0\xc0", ProtocolError, "announces 13"),
        (struct.pack("<IQ", 1, 2**40) + b"\xc0", MessageTooLargeError, "max_message_size"),
    ],
)
def test_split_message_refuses_headers_that_lie(
    data: bytes, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        split_message(data, max_message_size=1 << 20, peer="msgq://x")


def test_the_first_message_limit_counts_the_header() -> None:
    body = b"\xc4\xff\xff" + b"x" * 0xFFFF  # a bin of 65,535 bytes
    over = struct.pack("<IQ", 1, len(body)) + body
    assert len(over) > MAX_FIRST_MESSAGE
    with pytest.raises(MessageTooLargeError, match="first message"):
        split_message(over, max_message_size=1 << 20, first_message_limit=MAX_FIRST_MESSAGE)
    assert split_message(over, max_message_size=1 << 20)  # later messages may


# -- reads and writes -------------------------------------------------------------------------


async def test_messages_round_trip_with_out_of_band_frames() -> None:
    a, b = await pair()
    big = b"z" * 200_000
    for msg in ["hello", {"op": "x", "n": (1, 2)}, [big, 1], None]:
        await a.write(msg)
    assert await b.read() == "hello"
    assert await b.read() == {"op": "x", "n": (1, 2)}
    got = await b.read()
    assert bytes(got[0]) == big
    assert got[1] == 1
    assert await b.read() is None
    await a.close()
    await b.close()


async def test_a_message_above_max_message_size_is_refused_on_both_ends() -> None:
    a, b = PipeComm.pair("msgq://a", "msgq://b")
    a.max_message_size = 1000
    with pytest.raises(MessageTooLargeError):
        await a.write(b"x" * 2000)
    await a.write("still usable")
    assert await b.read() == "still usable"
    b.max_message_size = 1000
    await a.close()
    c, d = PipeComm.pair("msgq://c", "msgq://d")
    d.max_message_size = 1000
    await c.write("handshake-sized first message")
    assert await d.read() == "handshake-sized first message"
    await c.write(b"x" * 2000)
    with pytest.raises(MessageTooLargeError, match="max_message_size"):
        await d.read()
    with pytest.raises(CommClosedError, match="max_message_size"):
        await d.read()  # and every read after
    assert d.closed()
    await b.close()
    await c.close()


async def test_a_first_message_above_64_kib_is_refused() -> None:
    a, b = await pair()
    await a.write(b"x" * MAX_FIRST_MESSAGE)
    with pytest.raises(MessageTooLargeError, match="first message"):
        await b.read()
    assert b.closed()
    await a.close()


async def test_garbage_from_the_peer_closes_the_comm_with_a_protocol_error() -> None:
    a, b = await pair()
    await a._outbox.put(b"\x01\x00\x00\x00\x05")  # a header cut short
    with pytest.raises(ProtocolError, match="msgq://a sent a message that breaks"):
        await b.read()
    for _ in range(2):
        with pytest.raises(CommClosedError, match="breaks the protocol"):
            await b.read()
        with pytest.raises(CommClosedError, match="breaks the protocol"):
            await b.write("x")
    await a.close()


async def test_a_hostile_body_is_refused_within_the_decoding_bounds() -> None:
    a, b = await pair()
    deep = b"\x91" * 200 + b"\xc0"
    await a._outbox.put(struct.pack("<IQ", 1, len(deep)) + deep)
    with pytest.raises(ProtocolError, match="more than 100 deep"):
        await b.read()
    await a.close()


async def test_pickle_is_refused_unless_named() -> None:
    a, b = await pair()
    await a.write({1, 2}, serializers=["pickle"])
    with pytest.raises(SerializationError, match="pickle"):
        await b.read()
    await a.write({3}, serializers=["pickle"])
    assert await b.read(deserializers=["pickle"]) == {3}
    await a.close()
    await b.close()


async def test_after_the_peer_closes_every_read_raises_comm_closed() -> None:
    a, b = await pair()
    pending = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    await a.write("last")
    await a.close()
    assert await pending == "last"
    for _ in range(3):
        with pytest.raises(CommClosedError, match="closed by the peer"):
            await b.read()
    with pytest.raises(CommClosedError):
        await b.write("x")
    await b.close()


async def test_a_pending_read_raises_when_the_peer_goes() -> None:
    a, b = await pair()
    pending = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    a.abort()
    with pytest.raises(CommClosedError):
        await pending
    with pytest.raises(CommClosedError):
        await b.read()
    b.abort()


async def test_one_reader_at_a_time() -> None:
    a, b = await pair()
    first = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="another read"):
        await b.read()
    await a.write(1)
    assert await first == 1
    await a.close()
    await b.close()


async def test_concurrent_writes_do_not_interleave_and_a_slow_reader_blocks_them() -> None:
    a, b = PipeComm.pair("msgq://a", "msgq://b", high_water=300_000)
    await a.write("hello")  # the first message: small, as a handshake is
    assert await b.read() == "hello"
    payloads = [bytes([i]) * 200_000 for i in range(6)]
    writes = [asyncio.ensure_future(a.write(p)) for p in payloads]
    await asyncio.sleep(0.01)
    # The pipe holds at most a little more than its high-water mark: writers wait.
    assert a._outbox.size <= 300_000 + 200_100
    assert not all(w.done() for w in writes)
    received = [bytes(await b.read()) for _ in payloads]
    await asyncio.gather(*writes)
    assert sorted(received) == sorted(payloads)
    await a.close()
    await b.close()


async def test_a_cancelled_read_aborts_the_comm() -> None:
    a, b = await pair()
    pending = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert b.closed()
    await a.close()
