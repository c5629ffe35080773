"""msgpack bytes as an attacker writes them, from the msgpack spec, without comm's encoder.

Big-endian lengths; comm's extension types 2 (tuple), 3 (custom) and 4
(unserializable) hold a msgpack value. Deep values are built from the inside
out in linear time, so that 100,000 levels cost milliseconds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NIL = b"\xc0"

_MASK = (1 << 64) - 1
_P1 = 11400714785074694791
_P2 = 14029467366897019727
_P5 = 2870177450012600261
_HASH_MODULUS = (1 << 61) - 1


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + struct.pack(">H", count)
    return b"\xdd" + struct.pack(">I", count)


def map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 1 << 16:
        return b"\xde" + struct.pack(">H", count)
    return b"\xdf" + struct.pack(">I", count)


def ext_header(code: int, length: int) -> bytes:
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    kind = code & 0xFF
    if length in fixed:
        return bytes([fixed[length], kind])
    if length < 1 << 8:
        return bytes([0xC7, length, kind])
    if length < 1 << 16:
        return b"\xc8" + struct.pack(">H", length) + bytes([kind])
    return b"\xc9" + struct.pack(">I", length) + bytes([kind])


def text(value: str) -> bytes:
    data = value.encode()
    if len(data) < 32:
        return bytes([0xA0 | len(data)]) + data
    if len(data) < 1 << 8:
        return b"\xd9" + bytes([len(data)]) + data
    return b"\xda" + struct.pack(">H", len(data)) + data


def integer(value: int) -> bytes:
    if 0 <= value < 128:
        return bytes([value])
    if -32 <= value < 0:
        return struct.pack(">b", value)
    if value >= 0:
        return b"\xcf" + struct.pack(">Q", value)
    return b"\xd3" + struct.pack(">q", value)


def array(*items: bytes) -> bytes:
    return array_header(len(items)) + b"".join(items)


def ext(code: int, data: bytes) -> bytes:
    return ext_header(code, len(data)) + data


def tuple_of(*items: bytes) -> bytes:
    return ext(2, array(*items))


def custom(family: str, header: bytes, indices: tuple[int, ...] = ()) -> bytes:
    return ext(3, array(text(family), header, array(*(integer(i) for i in indices))))


def unserializable(first: bytes) -> bytes:
    return ext(4, array(first, text("repr"), text("error")))


#: The levels :func:`nested` can build, by name, that comm can decode nested.
KINDS = ("array", "map", "tuple", "custom", "mixed")


def nested(kind: str, depth: int, leaf: bytes = NIL) -> bytes:
    """A value nesting *depth* containers of *kind* (``"mixed"``: all kinds in turn).

    Each level holds the next as its only item (a map: as the value of key
    ``"k"``; a custom value: as its header, family ``"f"``; an unserializable
    value: as its type name).
    """
    kinds = [kind] if kind != "mixed" else ["array", "map", "tuple", "array", "custom"]
    # Build from the inside out: the pieces before the core, innermost first, and the
    # size of what each level wraps (extension headers depend on it).
    before: list[bytes] = []
    after: list[bytes] = []
    size = len(leaf)
    for level in range(depth):
        shape = kinds[level % len(kinds)]
        if shape == "array":
            head, tail = b"\x91", b""
        elif shape == "map":
            head, tail = b"\x81" + text("k"), b""
        elif shape == "tuple":
            inner = b"\x91"
            head, tail = ext_header(2, len(inner) + size) + inner, b""
        elif shape == "custom":
            inner = b"\x93" + text("f")
            tail = b"\x90"
            head = ext_header(3, len(inner) + size + len(tail)) + inner
        elif shape == "unserializable":
            inner = b"\x93"
            tail = text("repr") + text("error")
            head = ext_header(4, len(inner) + size + len(tail)) + inner
        else:
            raise ValueError(f"unknown kind {shape!r}")
        before.append(head)
        after.append(tail)
        size += len(head) + len(tail)
    return b"".join(reversed(before)) + leaf + b"".join(after)


def _rotate_left(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _rotate_right(value: int, bits: int) -> int:
    return ((value >> bits) | (value << (64 - bits))) & _MASK


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def colliding_pairs(count: int, target: int = 0x1234_5678_9ABC) -> Iterator[tuple[int, int]]:
    """Yield *count* distinct int pairs ``(a, b)`` whose tuples all hash alike on CPython.

    CPython hashes a tuple with xxHash's rounds over its items' hashes, and an
    int's hash is the int modulo 2**61 - 1: neither is randomized. Each round
    can be inverted, so for every first item there is a second one that
    brings the tuple to the hash asked for.
    """
    inverse_p1 = pow(_P1, -1, 1 << 64)
    inverse_p2 = pow(_P2, -1, 1 << 64)
    # hash((a, b)) = rotl(acc1 + hash(b) * P2, 31) * P1 + (2 ^ P5 ^ 3527539), where
    # acc1 = rotl(P5 + hash(a) * P2, 31) * P1.
    length_term = 2 ^ (_P5 ^ 3527539)
    wanted = _rotate_right(((target - length_term) & _MASK) * inverse_p1 & _MASK, 31)
    made = 0
    first = 0
    while made < count:
        first += 1
        acc1 = _rotate_left((_P5 + first * _P2) & _MASK, 31) * _P1 & _MASK
        lane = _signed((wanted - acc1) * inverse_p2 & _MASK)
        # Only lanes that are the hash of some int: |lane| < 2**61 - 1, not -1.
        if -_HASH_MODULUS < lane < _HASH_MODULUS and lane != -1:
            yield first, lane
            made += 1
