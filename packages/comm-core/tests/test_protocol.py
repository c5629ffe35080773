"""Byte-level tests of the wire protocol: golden bytes, round trips, limits, garbage."""

from __future__ import annotations

import collections
import contextlib
import enum
import pickle
import struct
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comm_core import MessageTooLargeError, ProtocolError, SerializationError
from comm_core.protocol import (
    MAX_FIRST_MESSAGE,
    MAX_FRAMES,
    OOB_THRESHOLD,
    PREAMBLE,
    FrameDecoder,
    SerializationFailure,
    Serialized,
    SerializerFamily,
    check_preamble,
    decode_message,
    encode_message,
    pickle_family,
)


def wire(msg: Any, **kwargs: Any) -> bytes:
    buffers, _ = encode_message(msg, **kwargs)
    return b"".join(bytes(memoryview(b).cast("B")) for b in buffers)


def receive(data: bytes, *, chunk: int | None = None, limit: int = 1 << 40) -> list[list[Any]]:
    """Feed *data* (after a preamble) to a decoder, optionally in chunks; return frames."""
    messages: list[list[Any]] = []
    decoder = FrameDecoder(messages.append, max_message_size=limit)
    stream = PREAMBLE + data
    step = chunk or len(stream)
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
    return messages


def roundtrip(msg: Any, **kwargs: Any) -> Any:
    (frames,) = receive(wire(msg, **kwargs))
    return decode_message(frames)


# -- golden bytes --------------------------------------------------------------------


def test_preamble_bytes() -> None:
    assert PREAMBLE == b"\x8eCOMM\x01\x00\x00"


def test_golden_small_message() -> None:
    body = b"\x81\xa2op\xa4ping"  # msgpack {"op": "ping"}
    assert wire({"op": "ping"}) == struct.pack("<IQ", 1, len(body)) + body
    assert wire({"op": "ping"}) == b"\x01\x00\x00\x00" + b"\x09" + b"\x00" * 7 + body


def test_golden_tuple_and_bytes() -> None:
    # ("a", b"\x01") -> ext 2 holding the array ["a", bin(01)]
    inner = b"\x92\xa1a\xc4\x01\x01"
    body = b"\xc7" + bytes([len(inner)]) + b"\x02" + inner
    assert wire(("a", b"\x01")) == struct.pack("<IQ", 1, len(body)) + body


def test_golden_out_of_band_frame() -> None:
    payload = b"z" * OOB_THRESHOLD
    # {"d": ext 1 -> u32 1}
    body = b"\x81\xa1d" + b"\xd6\x01" + b"\x01\x00\x00\x00"
    expected = struct.pack("<IQQ", 2, len(body), len(payload)) + body + payload
    assert wire({"d": payload}) == expected


def test_out_of_band_buffers_are_not_copied() -> None:
    payload = bytearray(b"q" * (OOB_THRESHOLD * 2))
    buffers, size = encode_message({"data": payload, "more": [payload]})
    assert buffers[1] is payload
    assert buffers[2] is payload
    assert size == sum(memoryview(b).nbytes for b in buffers)


# -- what read() returns ----------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Point(NamedTuple):
    x: int
    y: int


def test_builtin_types_round_trip() -> None:
    msg = {
        "none": None,
        "bools": [True, False],
        "int": -(2**63),
        "uint": 2**64 - 1,
        "float": 1.5,
        "str": "héllo",
        "bytes": b"\x00\xff",
        "list": [1, [2, 3]],
        "tuple": (1, (2, "x")),
        "empty": [(), [], {}],
        1: "int key",
        (1, 2): "tuple key",
        b"k": "bytes key",
    }
    assert roundtrip(msg) == msg
    out = roundtrip(msg)
    assert type(out["tuple"]) is tuple
    assert type(out["tuple"][1]) is tuple
    assert type(out["list"]) is list


def test_subclasses_become_builtins() -> None:
    msg = {
        "od": collections.OrderedDict(a=1),
        "enum": Color.RED,
        "point": Point(1, 2),
        "dd": collections.defaultdict(list, {"k": [1]}),
    }
    out = roundtrip(msg)
    assert out == {"od": {"a": 1}, "enum": 1, "point": (1, 2), "dd": {"k": [1]}}
    assert type(out["od"]) is dict
    assert type(out["enum"]) is int
    assert type(out["point"]) is tuple


def test_small_bytes_like_are_read_as_bytes() -> None:
    out = roundtrip({"a": bytearray(b"ab"), "b": memoryview(b"cd"), "c": b"ef"})
    assert out == {"a": b"ab", "b": b"cd", "c": b"ef"}
    assert all(type(v) is bytes for v in out.values())


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_large_bytes_like_are_read_as_memoryview(kind: type) -> None:
    raw = bytes(range(256)) * (OOB_THRESHOLD // 256 + 1)
    out = roundtrip({"data": kind(raw), "nested": [(kind(raw),)]})
    assert type(out["data"]) is memoryview
    assert out["data"] == raw
    assert bytes(out["nested"][0][0]) == raw
    out["data"][0] = 7  # a writable buffer of our own
    assert out["data"][0] == 7


def test_shaped_and_strided_memoryviews_travel_as_bytes() -> None:
    raw = bytes(range(256)) * (OOB_THRESHOLD // 128)
    shaped = memoryview(raw).cast("B", (2, len(raw) // 2))
    strided = memoryview(raw)[::2]
    out = roundtrip({"shaped": shaped, "strided": strided})
    assert out["shaped"] == raw
    assert out["strided"] == raw[::2]


def test_message_of_many_frames_in_chunks() -> None:
    payloads = [bytes([i]) * (OOB_THRESHOLD + i) for i in range(5)]
    data = wire({"p": payloads}) * 3
    for chunk in (1, 7, 4096, 70000, None):
        messages = receive(data, chunk=chunk) if chunk != 1 else receive(data[:5000], chunk=1)
        for frames in messages:
            out = decode_message(frames)
            assert [bytes(p) for p in out["p"]] == payloads


def test_large_header_grows_the_buffer() -> None:
    many = [b"xy"] * 40000  # a 320 KB header: more than the decoder's first buffer
    data = wire(many, threshold=2)
    (frames,) = receive(data, chunk=1 << 16)
    assert len(frames) == 40001
    assert decode_message(frames) == many


# -- custom types ----------------------------------------------------------------------


class Opaque:
    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


def test_unknown_type_needs_a_family() -> None:
    with pytest.raises(SerializationError, match="Opaque"):
        wire({"x": Opaque(1)})


def test_on_error_message_sends_a_description() -> None:
    out = roundtrip({"x": Opaque(1), "y": 2}, on_error="message")
    assert out["y"] == 2
    failure = out["x"]
    assert isinstance(failure, SerializationFailure)
    assert failure.type_name == "Opaque"


def test_pickle_is_refused_unless_named() -> None:
    (frames,) = receive(wire({"x": Opaque(3)}, families=[pickle_family]))
    with pytest.raises(SerializationError, match="pickle"):
        decode_message(frames)
    with pytest.raises(SerializationError, match="pickle"):
        decode_message(frames, accept=["other"])
    assert decode_message(frames, accept=["pickle"]) == {"x": Opaque(3)}


def test_pickle_keeps_buffers_out_of_band() -> None:
    big = bytearray(b"b" * (1 << 20))
    buffers, _ = encode_message(
        {"x": pickle.PickleBuffer(big)}, families=[pickle_family], threshold=1 << 30
    )
    assert any(memoryview(b).nbytes == len(big) for b in buffers[1:])


def test_custom_family_and_relay_without_deserializing() -> None:
    family = SerializerFamily(
        "opaque",
        lambda obj: (
            ({"v": obj.value}, [b"frame"])
            if isinstance(obj, Opaque)
            else (_ for _ in ()).throw(TypeError("not Opaque"))
        ),
        lambda header, frames: Opaque(header["v"]),
    )
    families = {"opaque": family}
    (frames,) = receive(wire([Opaque(5)], families=[family]))
    assert decode_message(frames, families=families) == [Opaque(5)]
    relayed = decode_message(frames, families=families, deserialize=False)
    assert isinstance(relayed[0], Serialized)
    assert relayed[0].family == "opaque"
    # A relay forwards it unchanged; the final reader gets the object.
    (again,) = receive(wire(relayed))
    assert decode_message(again, families=families) == [Opaque(5)]


def test_unknown_family_on_read() -> None:
    msg = Serialized("nope", None, (b"x",))
    (frames,) = receive(wire(msg))
    with pytest.raises(SerializationError, match="nope"):
        decode_message(frames, families={})


# -- limits ----------------------------------------------------------------------------


def test_sender_refuses_too_large_before_sending() -> None:
    with pytest.raises(MessageTooLargeError) as info:
        encode_message({"d": b"x" * 1000}, max_size=100)
    assert info.value.size > 100
    assert info.value.limit == 100
    with pytest.raises(MessageTooLargeError):
        encode_message({"d": b"x" * (OOB_THRESHOLD + 1)}, max_size=OOB_THRESHOLD)


def test_receiver_refuses_from_the_header() -> None:
    header = struct.pack("<IQ", 1, 10**15)  # a petabyte
    messages: list[Any] = []
    decoder = FrameDecoder(messages.append, max_message_size=1 << 20, peer="tcp://peer:1")
    with pytest.raises(MessageTooLargeError, match=r"1000000000000000.*1048576") as info:
        decoder.feed(PREAMBLE + header)
    assert info.value.size == 10**15
    assert not messages


@pytest.mark.parametrize("claim", [MAX_FIRST_MESSAGE + 1, 2**20 - 1, 2**30])
def test_first_message_limit_refuses_a_large_first_message_from_the_header(claim: int) -> None:
    """Regression: a peer's first header (before any handshake) claiming just under 1 MiB
    made the receiver allocate and zero that much at once, for 20 bytes sent."""
    decoder = FrameDecoder(
        lambda f: None, max_message_size=1 << 30, first_message_limit=MAX_FIRST_MESSAGE
    )
    with pytest.raises(MessageTooLargeError, match="first message") as info:
        decoder.feed(PREAMBLE + struct.pack("<IQ", 1, claim))
    assert info.value.limit == MAX_FIRST_MESSAGE


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_first_message_limit_is_lifted_by_the_first_message(chunk: int | None) -> None:
    """A large second message is accepted, even in the same bytes as the first."""
    messages: list[list[Any]] = []
    decoder = FrameDecoder(
        messages.append, max_message_size=1 << 30, first_message_limit=MAX_FIRST_MESSAGE
    )
    big = {"data": b"x" * (4 * MAX_FIRST_MESSAGE)}
    stream = PREAMBLE + wire({"protocol": 1}) + wire(big) + wire({"small": 1})
    step = chunk or len(stream)
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
    assert [decode_message(m) for m in messages][1:] == [big, {"small": 1}]
    assert decoder.max_message_size == 1 << 30


@pytest.mark.parametrize("count", [0, MAX_FRAMES + 1, 2**32 - 1])
def test_receiver_refuses_bad_frame_counts(count: int) -> None:
    decoder = FrameDecoder(lambda f: None, max_message_size=1 << 30)
    with pytest.raises(ProtocolError, match="frames"):
        decoder.feed(PREAMBLE + struct.pack("<I", count))


# -- what a header makes the receiver reserve --------------------------------------------


def _after_handshake(**kwargs: Any) -> tuple[FrameDecoder, list[list[Any]]]:
    """A decoder as a stream comm has one, past its preamble and first message."""
    messages: list[list[Any]] = []
    decoder = FrameDecoder(
        messages.append,
        max_message_size=1 << 31,
        first_message_limit=MAX_FIRST_MESSAGE,
        **kwargs,
    )
    decoder.feed(PREAMBLE + wire({"protocol": 1}))
    assert len(messages) == 1
    return decoder, messages


def _virtual_memory() -> int | None:
    """This process's virtual memory size in bytes (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def _traced() -> Any:
    """Trace allocations in the block; yields a list that gets the growth, in bytes."""
    import gc
    import tracemalloc

    growth: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield growth
        growth.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("claim", [2**20 - 1, 2**30 - 1])
def test_a_large_frame_header_reserves_little(claim: int) -> None:
    """Regression: after the handshake, a 12-byte header announcing a frame made the
    receiver allocate the whole frame's buffer at once: zeroed (resident) below 1 MiB,
    mapped above (address space, and commit charge where overcommit is strict), held
    for as long as the peer kept the connection open."""
    decoder, _ = _after_handshake()
    vm_before = _virtual_memory()
    with _traced() as growth:
        decoder.feed(struct.pack("<IQ", 1, claim) + b"x" * 100)
    assert growth[0] < 96 * 1024, growth
    vm_after = _virtual_memory()
    if vm_before is not None and vm_after is not None:
        assert vm_after - vm_before < 2**20, (vm_before, vm_after)
    assert decoder.reserved_bytes <= 16 * 1024 + 64 * 1024


@pytest.mark.parametrize("size", [OOB_THRESHOLD, 100_000, 2**20 - 1, 5 * 2**20 + 3])
@pytest.mark.parametrize("chunk", [65537, 300_000])
def test_a_large_frame_buffer_grows_with_what_arrives(size: int, chunk: int) -> None:
    """What the decoder holds for a large frame stays within four times what arrived of
    it (at least 64 KiB); the frame is still received in place, whole and writable."""
    decoder, messages = _after_handshake()
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    decoder.feed(struct.pack("<IQ", 1, size))
    base = decoder.reserved_bytes
    arrived = 0
    while arrived < size:
        piece = payload[arrived : arrived + chunk]
        decoder.feed(piece)
        arrived += len(piece)
        if arrived < size:
            reserved = decoder.reserved_bytes - base
            assert reserved <= max(64 * 1024, 4 * arrived), (arrived, reserved)
    assert len(messages) == 2
    (frame,) = messages[1]
    assert isinstance(frame, memoryview)
    assert not frame.readonly
    assert frame == payload


def test_a_frame_no_longer_than_one_before_gets_its_buffer_whole() -> None:
    """Once the peer has sent a frame of some length, frames up to that length are
    received into a buffer of their full length, allocated once; a longer frame starts
    small again."""
    decoder, messages = _after_handshake()
    size = 4 * 2**20
    for _ in range(2):
        decoder.feed(struct.pack("<IQ", 1, size) + b"a")
        decoder.feed(b"b" * (size - 1))
    assert [bytes(frames[0]) for frames in messages[1:]] == [b"a" + b"b" * (size - 1)] * 2
    base = decoder.reserved_bytes
    decoder.feed(struct.pack("<IQ", 1, size) + b"a")
    assert decoder.reserved_bytes - base == size
    decoder.feed(b"b" * (size - 1))
    decoder.feed(struct.pack("<IQ", 1, size + 1) + b"a")
    assert decoder.reserved_bytes - base <= 64 * 1024


def test_a_growing_frame_survives_a_caller_that_holds_its_last_buffer() -> None:
    """A transport may still hold the buffer it filled when it asks for the next one
    (asyncio's TLS layer on Python 3.10 does): the frame's buffer cannot grow in place
    then, and is copied into a larger one instead, bytes intact."""
    decoder, messages = _after_handshake()
    size = 3 * 2**20 + 5
    payload = bytes(range(251)) * (size // 251) + b"q" * (size % 251)
    data = memoryview(struct.pack("<IQ", 1, size) + payload)
    held: list[memoryview] = []
    while data.nbytes:
        buf = decoder.get_buffer(data.nbytes)
        n = min(buf.nbytes, data.nbytes, 200_000)
        buf[:n] = data[:n]
        held = [buf]  # the previous buffer is released only now
        data = data[n:]
        decoder.buffer_updated(n)
    del held
    assert len(messages) == 2
    assert messages[1][0] == payload


def test_small_frames_and_headers_are_buffered_as_they_arrive() -> None:
    """Regression: a header announcing a frame just under 64 KiB, or a message of 65,536
    frames, made the receive buffer grow to that size before the bytes came."""
    decoder, messages = _after_handshake()
    base = decoder.reserved_bytes
    with _traced() as growth:
        decoder.feed(struct.pack("<IQ", 1, OOB_THRESHOLD - 1) + b"x" * 10)
    assert growth[0] < 4096, growth
    assert decoder.reserved_bytes == base
    decoder.feed(b"x" * (OOB_THRESHOLD - 11))
    assert messages[1] == [b"x" * (OOB_THRESHOLD - 1)]
    decoder, messages = _after_handshake()
    with _traced() as growth:
        decoder.feed(struct.pack("<I", MAX_FRAMES) + bytes(80))
    assert growth[0] < 4096, growth
    assert decoder.reserved_bytes == base
    decoder.feed(bytes(8 * MAX_FRAMES - 80))
    assert messages[1] == [b""] * MAX_FRAMES


# -- the first message's limit covers every byte of it ------------------------------------


@pytest.mark.parametrize("count", [(MAX_FIRST_MESSAGE - 4) // 8 + 1, MAX_FRAMES])
@pytest.mark.parametrize("max_message_size", [1024, 1 << 30])
def test_a_first_message_header_is_refused_from_its_frame_count(
    count: int, max_message_size: int
) -> None:
    """Regression: the limit of a first message counted its frames' bytes only, so a
    first header announcing 65,536 frames of nothing passed it, and the receiver waited
    for 512 KiB of frame lengths, reserving room for them. 4 + 8 * count alone now
    exceeds the limit: refused from the count, before a single length arrives (also when
    max_message_size is below the first message's limit)."""
    decoder = FrameDecoder(
        lambda f: None,
        max_message_size=max_message_size,
        first_message_limit=MAX_FIRST_MESSAGE,
        peer="tcp://peer:1",
    )
    with pytest.raises(MessageTooLargeError, match=r"tcp://peer:1.*first message") as info:
        decoder.feed(PREAMBLE + struct.pack("<I", count))
    assert info.value.size == 4 + 8 * count
    assert info.value.limit == MAX_FIRST_MESSAGE


@pytest.mark.parametrize("frames", [1, 3])
def test_a_first_message_may_have_64_kib_header_included(frames: int) -> None:
    """A first message of exactly MAX_FIRST_MESSAGE bytes, header included, is accepted;
    one byte more is refused (before the fix, the header's 4 + 8 * N bytes were not
    counted, and one-frame messages passed up to 12 bytes over)."""
    header = 4 + 8 * frames
    body = MAX_FIRST_MESSAGE - header
    lengths = [body - 2 * (frames - 1), *[2] * (frames - 1)]

    def message(extra: int) -> bytes:
        sizes = [lengths[0] + extra, *lengths[1:]]
        return struct.pack(f"<I{frames}Q", frames, *sizes) + b"".join(
            bytes([i]) * n for i, n in enumerate(sizes)
        )

    accepted: list[list[Any]] = []
    decoder = FrameDecoder(
        accepted.append, max_message_size=1 << 30, first_message_limit=MAX_FIRST_MESSAGE
    )
    decoder.feed(PREAMBLE + message(0))
    assert [sum(map(len, f)) for f in accepted] == [body]
    refused = FrameDecoder(
        lambda f: None, max_message_size=1 << 30, first_message_limit=MAX_FIRST_MESSAGE
    )
    with pytest.raises(MessageTooLargeError, match="first message") as info:
        refused.feed(PREAMBLE + message(1))
    assert info.value.size == MAX_FIRST_MESSAGE + 1


# -- pausing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [{}, 7, {"op": "push", "i": 12345, "data": b"x" * 16}, [b"ab", b"cd", b"ef"]],
    ids=["empty", "int", "small", "three-frames"],
)
def test_held_bytes_covers_what_queued_messages_cost(msg: Any) -> None:
    """What a stream comm counts against read_high_water for a message waiting unread
    (comm_core.stream.held_bytes) covers the memory its frames and their containers
    take, as traced, without counting more than twice that."""
    import collections

    from comm_core.stream import held_bytes

    count = 20_000
    data = wire(msg, threshold=2) * count
    ready: collections.deque[list[Any]] = collections.deque()
    decoder = FrameDecoder(ready.append, max_message_size=1 << 30)
    decoder.feed(PREAMBLE)
    with _traced() as growth:
        decoder.feed(data)
    assert len(ready) == count
    held = sum(held_bytes(frames) for frames in ready)
    received = decoder.reserved_bytes  # the decoder's receive buffer, traced too
    assert growth[0] - received <= held <= 2 * growth[0], (growth[0], received, held)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 100_000, None])
def test_a_paused_decoder_keeps_what_arrives_until_resumed(chunk: int | None) -> None:
    """A decoder paused from on_message delivers nothing more, keeping what arrives
    undecoded; resume() delivers it, message by message here (each pauses again)."""
    msgs: list[Any] = [{"i": i, "data": bytes([i]) * (i * 9000)} for i in range(12)]
    data = b"".join(wire(m) for m in msgs)
    received: list[list[Any]] = []
    decoder: FrameDecoder

    def on_message(frames: list[Any]) -> None:
        received.append(frames)
        decoder.pause()

    decoder = FrameDecoder(on_message, max_message_size=1 << 30)
    stream = PREAMBLE + data
    step = chunk or len(stream)
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
        assert len(received) <= 1
    assert decoder.paused
    for count in range(2, len(msgs) + 1):
        decoder.resume()
        assert len(received) == count
    decoder.resume()
    assert not decoder.paused
    assert [_bytesify(decode_message(f)) for f in received] == msgs


# -- garbage ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "guess"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "TLS"),
        (b"\x15\x03\x03\x00\x02\x02\x46", "a TLS alert: is the peer a tls:// endpoint"),
        (b"SSH-2.0-OpenSSH_9.0\r\n", "SSH"),
        (b"\x8eCOMM\x02\x00\x00", "version 2"),
        (b"\x00\x01\x02\x03\x04\x05\x06\x07", "not a comm endpoint"),
    ],
)
def test_garbage_preambles(data: bytes, guess: str) -> None:
    decoder = FrameDecoder(lambda f: None, max_message_size=1 << 30, peer="tcp://1.2.3.4:5")
    with pytest.raises(ProtocolError, match=guess) as info:
        decoder.feed(data)
    assert "tcp://1.2.3.4:5" in str(info.value)


def test_wrong_first_byte_fails_before_eight_bytes() -> None:
    decoder = FrameDecoder(lambda f: None, max_message_size=1 << 30)
    with pytest.raises(ProtocolError):
        decoder.feed(b"G")


def test_check_preamble_accepts_only_the_preamble() -> None:
    check_preamble(PREAMBLE, "peer")
    with pytest.raises(ProtocolError):
        check_preamble(PREAMBLE[:-1] + b"\x01", "peer")


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # truncated array
        b"\x01\x02",  # extra data
        b"\xd6\x01\x05\x00\x00\x00",  # out-of-band frame 5 of 1
        b"\xd4\x63\x00",  # unknown extension 99
        b"\xc7\x01\x03\x01",  # custom extension holding an int
    ],
)
def test_malformed_bodies_raise_protocol_error(body: bytes) -> None:
    (frames,) = receive(struct.pack("<IQ", 1, len(body)) + body)
    with pytest.raises(ProtocolError):
        decode_message(frames)


# -- properties --------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = scalars.filter(lambda k: not isinstance(k, float)) | st.tuples(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=5)
)
messages = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


@given(messages)
@settings(max_examples=300, deadline=None)
def test_encode_then_decode_is_identity(msg: Any) -> None:
    assert roundtrip(msg) == msg


@given(st.lists(messages, min_size=1, max_size=4), st.integers(min_value=1, max_value=64))
@settings(max_examples=100, deadline=None)
def test_any_chunking_yields_the_same_messages(msgs: list[Any], chunk: int) -> None:
    data = b"".join(wire(m, threshold=8) for m in msgs)
    decoded = [decode_message(f) for f in receive(data, chunk=chunk)]
    expected = [roundtrip(m) for m in msgs]
    assert [_bytesify(d) for d in decoded] == [_bytesify(e) for e in expected]


def _bytesify(obj: Any) -> Any:
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, dict):
        return {k: _bytesify(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bytesify(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_bytesify(v) for v in obj)
    return obj


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_decoder_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    received: list[list[Any]] = []
    decoder = FrameDecoder(received.append, max_message_size=1 << 16, expect_preamble=False)
    try:
        decoder.feed(data)
    except ProtocolError:
        return
    for frames in received:
        with contextlib.suppress(ProtocolError, SerializationError):
            decode_message(frames)


@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_decode_message_raises_only_comm_errors(body: bytes) -> None:
    with contextlib.suppress(ProtocolError, SerializationError):
        decode_message([body, b"frame"])
