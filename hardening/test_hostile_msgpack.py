"""The hostile msgpack generator's own tests: it emits what it says it emits.

msgpack's own unpacker (and comm's decoder, at depths that are safe today)
is the oracle for the encodings; ``hash()`` is the oracle for the
collisions. A generator that got a length wrong would make the suite's
deep payloads fail early, at the first bad header, and test nothing.
"""

from __future__ import annotations

import contextlib
import math
import struct
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_msgpack as hm
from comm_core import ProtocolError
from comm_core.protocol import PREAMBLE, Decoder, FrameDecoder, SerializationFailure, Serialized
from support import record


def _unpack(data: bytes) -> Any:
    """msgpack's view of *data*, extensions kept as ExtType."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _tuples(code: int, data: bytes) -> Any:
    """An ext_hook that reads comm's tuples (ext 2) as tuples and leaves the rest."""
    if code == 2:
        return tuple(msgpack.unpackb(data, ext_hook=_tuples, raw=False, strict_map_key=False))
    return msgpack.ExtType(code, data)


def _ext_or_none(data: bytes) -> Any:
    try:
        return _unpack(data)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError):
        return None


def test_preamble_is_comms() -> None:
    assert hm.PREAMBLE == PREAMBLE


#: Values whose encoding has one right answer (msgpack's shortest forms).
VALUES: list[Any] = [
    None, True, False, 0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
    0.5, -1e300, "", "x" * 31, "x" * 32, "é" * 200, "y" * 70_000, b"", b"\x00" * 300,
    b"z" * 70_000, [], [1] * 15, [1] * 16, [None] * 70_000, {}, {i: i for i in range(16)},
    {"a": [1, {"b": b"c"}]},
]  # fmt: skip


def test_pack_matches_msgpack() -> None:
    """The from-spec encoder writes what msgpack's packer writes (the shortest forms)."""
    for value in VALUES:
        assert hm.pack(value) == msgpack.packb(value, use_bin_type=True), repr(value)[:80]


def test_forced_widths_and_declared_lengths() -> None:
    assert hm.array_header(1, width=32) == b"\xdd\x00\x00\x00\x01"
    assert _unpack(hm.array_header(2, width=16) + b"\x01\x02") == [1, 2]
    assert _unpack(hm.map_header(1, width=32) + b"\x01\x02") == {1: 2}
    assert _unpack(hm.string("ab", width=32)) == "ab"
    assert _unpack(hm.binary(b"ab", width=8)) == b"ab"
    assert hm.string(b"x", declared=5, width=8) == b"\xd9\x05x"
    for name, data in hm.lying_lengths().items():
        assert len(data) < 40, name
        if isinstance(_ext_or_none(data), msgpack.ExtType):  # the lie is inside comm's ext
            with pytest.raises(ProtocolError):
                Decoder().decode([data])
            continue
        with pytest.raises((ValueError, msgpack.ExtraData, msgpack.FormatError)):
            _unpack(data)
    # Each 32-bit header claims 2**32 - 1.
    lies = hm.lying_lengths()
    assert lies["array32"][:5] == b"\xdd\xff\xff\xff\xff"
    assert lies["map32"][:5] == b"\xdf\xff\xff\xff\xff"
    assert lies["str32"][:5] == b"\xdb\xff\xff\xff\xff"
    assert lies["bin32"][:5] == b"\xc6\xff\xff\xff\xff"
    assert lies["ext32"][:6] == b"\xc9\xff\xff\xff\xff\x02"


def test_extensions_and_timestamps() -> None:
    for n in (0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 70_000):
        data = bytes(n)
        assert _unpack(hm.ext(2, data)) == msgpack.ExtType(2, data)
    assert msgpack.unpackb(hm.ext(-5, b"ab"), ext_hook=lambda c, d: (c, d)) == (-5, b"ab")
    for seconds, nanos, width in [(1, 0, None), (1, 5, None), (2**33, 9, None),
                                  (-(2**40), 7, 96), (5, 0, 64)]:  # fmt: skip
        got = _unpack(hm.timestamp(seconds, nanos, width=width))
        assert got == msgpack.Timestamp(seconds, nanos)
    assert Decoder().decode(
        [
            hm.pack(
                (1, (2, "x")),
            )
        ]
    ) == (1, (2, "x"))


def _naive(kinds: list[str], leaf: bytes, family: str = "nope") -> bytes:
    """The same nesting as hm.nest, built the slow, obvious way (inside out)."""
    inner = leaf
    for kind in reversed(kinds):
        if kind == "array":
            inner = hm.array([inner])
        elif kind == "map":
            inner = b"\x81\x00" + inner
        elif kind == "map-key":
            inner = b"\x81" + inner + hm.NIL
        elif kind == "tuple":
            inner = hm.ext(2, hm.array([inner]))
        elif kind == "custom":
            inner = hm.ext(3, hm.array([hm.string(family), inner, hm.array([])]))
        else:
            inner = hm.ext(4, hm.array([inner, hm.string(""), hm.string("")]))
    return inner


@given(st.lists(st.sampled_from(hm.NESTING_KINDS), min_size=1, max_size=300))
@settings(max_examples=60, deadline=None)
def test_nest_matches_the_obvious_construction(kinds: list[str]) -> None:
    assert hm.nest(kinds) == _naive(kinds, hm.NIL)


def _depth_of(value: Any) -> int:
    """Levels of nesting of a decoded chain (iteratively)."""
    depth = 0
    while True:
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        elif isinstance(value, dict) and value:
            key, item = next(iter(value.items()))
            value = key if isinstance(key, tuple) else item
        elif isinstance(value, Serialized):
            value = value.header
        elif isinstance(value, SerializationFailure):
            return depth + 1  # its fields are text
        else:
            return depth
        depth += 1


@pytest.mark.parametrize("kind", hm.NESTING_KINDS)
def test_shallow_chains_decode_to_their_depth(kind: str) -> None:
    """At a depth that is safe today, comm's decoder sees the chain the generator
    meant (custom levels stay Serialized with deserialize=False)."""
    # A key must be hashable: below a map-key level, tuples only.
    data = hm.nest(["map-key"] + ["tuple"] * 19) if kind == "map-key" else hm.deep(kind, 20)
    if kind == "unserializable":  # it holds three strings: it cannot nest
        with pytest.raises(ProtocolError, match="does not hold 3 strings"):
            Decoder(deserialize=False).decode([data])
        return
    value = Decoder(deserialize=False).decode([data])
    assert _depth_of(value) == 20


def _walk_levels(data: bytes) -> int:
    """Check a deep chain header by header, without recursion: every extension's
    declared length must be exactly what it encloses. Returns the number of levels."""
    levels, at, end = 0, 0, len(data)
    ends: list[int] = []  # where each open extension must end
    while at < end:
        byte = data[at]
        if byte == 0x91 or byte == 0x93:  # an array of 1 (or custom's/ext 4's 3 items)
            at += 1
            levels += 1
        elif byte == 0x81:  # a map of 1 ({0: inner} or {inner: nil})
            at += 2 if data[at + 1] == 0x00 else 1
            levels += 1
        elif byte in (0xC7, 0xC8, 0xC9):
            size_len = {0xC7: 1, 0xC8: 2, 0xC9: 4}[byte]
            length = int.from_bytes(data[at + 1 : at + 1 + size_len], "big")
            at += 2 + size_len
            ends.append(at + length)
        elif byte in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
            length = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}[byte]
            at += 2
            ends.append(at + length)
        elif 0xA0 <= byte <= 0xBF:  # a family name or an empty field
            at += 1 + (byte & 0x1F)
        elif byte in (0xC0, 0x90):  # the leaf, or custom's empty index list
            at += 1
        else:
            raise AssertionError(f"unexpected byte {byte:#x} at {at}")
    assert at == end
    assert all(e <= end for e in ends)
    # The outermost extension encloses everything after its header.
    if ends:
        assert ends[0] == end, (ends[0], end)
    return levels


@pytest.mark.parametrize(
    "pattern", [["tuple"], ["custom"], ["array", "tuple", "map"], ["unserializable", "tuple"]]
)
def test_chains_100_000_deep_are_well_formed(pattern: list[str]) -> None:
    """100,000 levels, built in linear time, every length exact (checked by a walker
    that does not recurse: msgpack's own unpacker cannot go that deep)."""
    start = time.perf_counter()
    data = hm.deep(pattern, 100_000)
    built = time.perf_counter() - start
    assert built < 5, f"building took {built:.2f}s"
    assert len(data) < 100_000 * 16
    assert _walk_levels(data) >= 100_000
    record(f"generator.deep.{'-'.join(pattern)}.bytes", len(data), "bytes", depth=100_000,
           build_ms=round(built * 1e3, 1))  # fmt: skip


def test_deep_tuple_200_is_the_reported_payload_size() -> None:
    """The issue's killer: ext 2 nested about 200 deep is about 900 bytes."""
    assert 600 <= len(hm.deep("tuple", 200)) <= 1200


# -- hash collisions ---------------------------------------------------------------------------


@given(st.lists(st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False), max_size=6))
@settings(max_examples=200, deadline=None)
def test_tuple_hash_is_cpythons(items: list[Any]) -> None:
    assert hm.tuple_hash([hash(i) for i in items]) == hash(tuple(items))


def test_colliding_tuples_collide() -> None:
    """Verified with hash(): 4,000 distinct pairs, one hash; inserting them into a dict
    costs far more than 4,000 ordinary pairs (the collisions are real)."""
    pairs = hm.colliding_tuples(4000, target=-12345)
    assert {hash(p) for p in pairs} == {-12345}
    assert len({p[0] for p in pairs}) == 4000  # distinct (without hashing them together)
    assert all(type(a) is int and type(b) is int for a, b in pairs)
    assert all(-(2**63) <= b < 2**63 for _, b in pairs)  # an int64 on the wire
    ordinary = [(i, i * 7919) for i in range(4000)]
    start = time.perf_counter()
    dict.fromkeys(ordinary)
    normal = time.perf_counter() - start
    start = time.perf_counter()
    as_dict = dict.fromkeys(pairs)
    colliding = time.perf_counter() - start
    assert len(as_dict) == 4000
    assert colliding > 20 * normal, (colliding, normal)
    record("generator.collisions.dict_of_4000", round(colliding * 1e3, 1), "ms",
           ordinary_ms=round(normal * 1e3, 2))  # fmt: skip


def test_colliding_ints_floats_and_mixed_keys() -> None:
    ints = hm.colliding_ints(12345)
    assert len(ints) in (8, 9)
    assert len(set(ints)) == len(ints)
    assert {hash(i) for i in ints} == {12345}
    assert max(ints) < 2**64
    floats = hm.colliding_floats(12345)
    assert len(floats) >= 30
    assert {hash(f) for f in floats} == {12345}
    assert all(math.isfinite(f) and f != 12345 for f in floats)
    keys = hm.colliding_keys(1000)
    assert len(keys) == 1000
    assert {hash(k) for k in keys} == {0x5EED}
    assert any(isinstance(k[0], float) for k in keys)
    assert len(set(keys)) == 1000  # distinct as dict keys (1000 collide: still fast)


def test_hash_floods_decode_to_every_key() -> None:
    """The encoded floods are real maps: every key arrives, all with one hash (decoded by
    msgpack itself: comm's decoder refuses them)."""
    for build in (hm.hash_flood, hm.mixed_hash_flood):
        data = build(300)
        value = msgpack.unpackb(data, ext_hook=_tuples, raw=False, strict_map_key=False)
        assert isinstance(value, dict)
        tuples = [k for k in value if isinstance(k, tuple)]
        assert len(tuples) == 300
        assert {hash(k) for k in tuples} == {0x5EED}
        with pytest.raises(ProtocolError, match="of one hash"):
            Decoder().decode([data])
    flood = hm.mixed_hash_flood(400)
    assert len(msgpack.unpackb(flood, ext_hook=_tuples, raw=False, strict_map_key=False)) > 400


# -- floods and framing ------------------------------------------------------------------------


def test_container_flood_and_tiny_messages() -> None:
    data = hm.container_flood(4096)
    assert len(data) <= 4096
    assert _unpack(data) == [{}] * (len(data) - 5)
    got: list[Any] = []
    decoder = FrameDecoder(got.append, max_message_size=2**20)
    decoder.feed(PREAMBLE + hm.tiny_messages(1000))
    assert got == [[b"\x80"]] * 1000
    assert len(hm.tiny_messages(1000)) == 13 * 1000


def test_frames_and_claims() -> None:
    got: list[Any] = []
    decoder = FrameDecoder(got.append, max_message_size=2**30)
    decoder.feed(PREAMBLE + hm.message([b"\xc0", b"abc"]) + hm.one_frame(b"\x01"))
    assert [[bytes(f) for f in frames] for frames in got] == [[b"\xc0", b"abc"], [b"\x01"]]
    assert hm.frame_count_claim() == struct.pack("<I", 65536)
    assert hm.frame_count_claim(65536, 3) == struct.pack("<I3Q", 65536, 0, 0, 0)
    assert hm.frame_length_claim(2**20 - 1) == struct.pack("<IQ", 1, 2**20 - 1)
    many = hm.CLASSES["many-frames"].framed(0)
    assert len(many) == 4 + 8 * 65536 + 1 + 65535


def test_handshake_is_a_valid_one() -> None:
    body = hm.handshake(1, library="hostile", pad=hm.Raw(hm.pack([{}] * 3)))
    assert Decoder().decode([body]) == {"protocol": 1, "library": "hostile", "pad": [{}] * 3}


def test_attack_classes_build_quickly() -> None:
    """Every class builds at the size the suite sends before a handshake in well under a
    second, within 64 KiB where a first message must fit."""
    for name, cls in hm.CLASSES.items():
        start = time.perf_counter()
        data = cls.framed(60 * 1024)
        assert time.perf_counter() - start < 2, name
        assert len(data) >= 4, name
        if name not in {"many-frames", "tiny-messages", "lying-lengths", "timestamp"}:
            assert len(data) <= 64 * 1024, (name, len(data))


# -- the strategies ----------------------------------------------------------------------------


@given(hm.streams(max_depth=2_000, max_size=8 * 1024))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_streams_strategy_makes_streams(stream: bytes) -> None:
    assert stream[: len(PREAMBLE)] == PREAMBLE[: len(stream)]


@given(hm.bodies(max_depth=30, max_size=2048))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_bodies_strategy_is_mostly_msgpack(body: bytes) -> None:
    """Bodies are msgpack or fail in msgpack's own ways (lies, limits), never
    another way (at depths safe today; the deep ones are the decoder tests' work)."""
    errors = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)
    with contextlib.suppress(*errors):
        msgpack.unpackb(body, raw=False, strict_map_key=False)
