"""Hostile msgpack and comm frames, built byte by byte from the specifications.

Nothing here calls comm's encoder or msgpack's packer: every header is
written from the msgpack specification (and comm's frame format from the
docstring of :mod:`comm_core.protocol`), so that this module can emit what
an attacker would and an encoder never does: nesting 100,000 levels deep
(arrays, maps, comm's tuple, custom and unserializable extensions, and any
mix), lengths that claim far more than follows, map keys whose hashes
collide, floods of empty containers, runs of tiny messages and frame
headers that announce 65,536 frames.

Plain functions build fixed payloads (``deep("tuple", 200)`` is the 900-odd
bytes that killed a tcp listener); :data:`CLASSES` names the attack classes
the suite feeds to the decoder and to live listeners; the hypothesis
strategies at the end (:func:`bodies`, :func:`streams`) mix all of it.

msgpack, in brief (all integers big-endian)::

    0x00-0x7f positive fixint   0x80-0x8f fixmap (n)     0x90-0x9f fixarray (n)
    0xa0-0xbf fixstr (n)        0xc0 nil  0xc2 false  0xc3 true
    0xc4/c5/c6 bin 8/16/32      0xc7/c8/c9 ext 8/16/32 (length, then type)
    0xca float32  0xcb float64  0xcc-0xcf uint 8-64     0xd0-0xd3 int 8-64
    0xd4-0xd8 fixext 1/2/4/8/16 (type, then data)      0xd9/da/db str 8/16/32
    0xdc/dd array 16/32         0xde/df map 16/32      0xe0-0xff negative fixint

Extension type -1 is msgpack's timestamp; comm uses 1 (out-of-band
reference: u32 little-endian frame index), 2 (tuple: data is an array), 3
(custom: data is ``[family, header, [frame indices]]``) and 4
(unserializable: data is ``[type name, repr, error]``).

comm framing: the preamble ``b"\\x8eCOMM\\x01\\x00\\x00"``, then per message a
u32 frame count N, N u64 frame lengths (all little-endian), and the frames.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLASSES",
    "HASH_MODULUS",
    "NESTING_KINDS",
    "NIL",
    "PREAMBLE",
    "AttackClass",
    "Ext",
    "Raw",
    "array",
    "array_header",
    "binary",
    "bodies",
    "colliding_floats",
    "colliding_ints",
    "colliding_keys",
    "colliding_tuples",
    "container_flood",
    "custom",
    "deep",
    "ext",
    "ext_header",
    "float64",
    "frame_count_claim",
    "frame_length_claim",
    "handshake",
    "hash_flood",
    "integer",
    "lying_lengths",
    "map_header",
    "message",
    "mixed_hash_flood",
    "nest",
    "one_frame",
    "pack",
    "streams",
    "string",
    "timestamp",
    "tiny_messages",
    "tuple_hash",
    "unserializable_doubling",
]

#: The comm preamble: magic, wire version 1, two reserved zero bytes.
PREAMBLE = b"\x8eCOMM\x01\x00\x00"
NIL = b"\xc0"

EXT_OOB, EXT_TUPLE, EXT_CUSTOM, EXT_UNSERIALIZABLE, EXT_TIMESTAMP = 1, 2, 3, 4, -1


# -- msgpack headers and scalars -------------------------------------------------------------


def _sized(n: int, fix: tuple[int, int] | None, codes: Sequence[tuple[int, int]], width: int | None
           ) -> bytes:  # fmt: skip
    """A header for length *n*: the fix form (base, limit) when it fits, else the first
    of *codes* ((code, bits) pairs) that holds it; *width* forces one of the bit sizes."""
    if width is None and fix is not None and n < fix[1]:
        return bytes([fix[0] | n])
    for code, bits in codes:
        if (width is None and n < 1 << bits) or width == bits:
            if not 0 <= n < 1 << bits:
                raise ValueError(f"{n} does not fit {bits} bits")
            return bytes([code]) + n.to_bytes(bits // 8, "big")
    raise ValueError(f"no header for length {n} (width {width})")


def array_header(n: int, width: int | None = None) -> bytes:
    """The header of an array of *n* items (``width``: 16 or 32 forces array16/32)."""
    return _sized(n, (0x90, 16), ((0xDC, 16), (0xDD, 32)), width)


def map_header(n: int, width: int | None = None) -> bytes:
    """The header of a map of *n* pairs (``width``: 16 or 32 forces map16/32)."""
    return _sized(n, (0x80, 16), ((0xDE, 16), (0xDF, 32)), width)


def string(text: str | bytes, *, declared: int | None = None, width: int | None = None) -> bytes:
    """A str: UTF-8 *text* (or raw bytes, valid UTF-8 or not), whose header may claim
    *declared* bytes instead of the real length."""
    data = text.encode() if isinstance(text, str) else text
    n = len(data) if declared is None else declared
    return _sized(n, (0xA0, 32), ((0xD9, 8), (0xDA, 16), (0xDB, 32)), width) + data


def binary(data: bytes, *, declared: int | None = None, width: int | None = None) -> bytes:
    """A bin whose header may claim *declared* bytes instead of ``len(data)``."""
    n = len(data) if declared is None else declared
    return _sized(n, None, ((0xC4, 8), (0xC5, 16), (0xC6, 32)), width) + data


_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}


def ext_header(code: int, n: int, *, width: int | None = None) -> bytes:
    """The header of an extension of type *code* (-128..127) with *n* bytes of data."""
    if not -128 <= code <= 127:
        raise ValueError(f"extension type {code} is not an int8")
    if width is None and n in _FIXEXT:
        return bytes([_FIXEXT[n], code & 0xFF])
    return _sized(n, None, ((0xC7, 8), (0xC8, 16), (0xC9, 32)), width) + bytes([code & 0xFF])


def ext(code: int, data: bytes, *, declared: int | None = None, width: int | None = None) -> bytes:
    """An extension value; its header may claim *declared* bytes of data."""
    return ext_header(code, len(data) if declared is None else declared, width=width) + data


def integer(n: int) -> bytes:
    """*n* in its shortest msgpack form (-2**63 <= n < 2**64)."""
    if 0 <= n < 0x80:
        return bytes([n])
    if -32 <= n < 0:
        return bytes([n & 0xFF])
    if n >= 0:
        for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([code]) + struct.pack(fmt, n)
        raise ValueError(f"{n} is above msgpack's uint64")
    for code, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
        if n >= -(1 << (8 * struct.calcsize(fmt) - 1)):
            return bytes([code]) + struct.pack(fmt, n)
    raise ValueError(f"{n} is below msgpack's int64")


def float64(x: float) -> bytes:
    return b"\xcb" + struct.pack(">d", x)


def timestamp(seconds: int, nanoseconds: int = 0, *, width: int | None = None) -> bytes:
    """msgpack's timestamp (extension -1) in its 32-, 64- or 96-bit form (*width*)."""
    if width is None:
        width = 32 if nanoseconds == 0 and 0 <= seconds < 1 << 32 else 64
        if not 0 <= seconds < 1 << 34:
            width = 96
    if width == 32:
        return ext(EXT_TIMESTAMP, struct.pack(">I", seconds))
    if width == 64:
        return ext(EXT_TIMESTAMP, struct.pack(">Q", (nanoseconds << 34) | seconds))
    return ext(EXT_TIMESTAMP, struct.pack(">Iq", nanoseconds, seconds))


def array(items: Iterable[bytes]) -> bytes:
    """An array of already encoded *items*."""
    parts = list(items)
    return array_header(len(parts)) + b"".join(parts)


def custom(family: str, header: bytes = NIL, indices: Sequence[int] = ()) -> bytes:
    """comm's custom-type extension (3): ``[family, header, [frame indices]]``."""
    return ext(EXT_CUSTOM, array([string(family), header, array(map(integer, indices))]))


@dataclass(frozen=True)
class Raw:
    """Already encoded msgpack, inserted as is by :func:`pack`."""

    data: bytes


@dataclass(frozen=True)
class Ext:
    """An extension value for :func:`pack`: type *code*, data encoded by :func:`pack`."""

    code: int
    value: Any


def pack(obj: Any) -> bytes:
    """Encode a small Python value from the spec (tuples as comm's extension 2).

    For building keys, handshakes and leaves; deep or huge structures are
    built with :func:`nest` and friends, which never recurse.
    """
    if obj is None:
        return NIL
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, int):
        return integer(obj)
    if isinstance(obj, float):
        return float64(obj)
    if isinstance(obj, str):
        return string(obj)
    if isinstance(obj, (bytes, bytearray)):
        return binary(bytes(obj))
    if isinstance(obj, tuple):
        return ext(EXT_TUPLE, array(pack(item) for item in obj))
    if isinstance(obj, Ext):
        return ext(obj.code, pack(obj.value))
    if isinstance(obj, list):
        return array(pack(item) for item in obj)
    if isinstance(obj, dict):
        return map_header(len(obj)) + b"".join(pack(k) + pack(v) for k, v in obj.items())
    raise TypeError(f"pack() does not encode {type(obj).__name__}")


# -- nesting -----------------------------------------------------------------------------------

#: What each level of :func:`nest` may be: the encoded inner value sits in an array, as
#: a map's value or key, as a tuple's item (ext 2), as a custom value's header (ext 3),
#: or as an unserializable value's field (ext 4).
NESTING_KINDS = ("array", "map", "map-key", "tuple", "custom", "unserializable")


def _level(kind: str, inner: int, family: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after an inner value of *inner* bytes, for one level."""
    if kind == "array":
        return array_header(1), b""
    if kind == "map":
        return map_header(1) + b"\x00", b""  # {0: inner}
    if kind == "map-key":
        return map_header(1), NIL  # {inner: None}
    if kind == "tuple":
        head = array_header(1)
        return ext_header(EXT_TUPLE, len(head) + inner) + head, b""
    if kind == "custom":  # [family, inner, []]
        head, tail = array_header(3) + family, array_header(0)
        return ext_header(EXT_CUSTOM, len(head) + inner + len(tail)) + head, tail
    if kind == "unserializable":  # [inner, "", ""]
        head, tail = array_header(3), string("") * 2
        return ext_header(EXT_UNSERIALIZABLE, len(head) + inner + len(tail)) + head, tail
    raise ValueError(f"unknown nesting kind {kind!r} (known: {', '.join(NESTING_KINDS)})")


def nest(kinds: Sequence[str], leaf: bytes = NIL, *, family: str = "nope") -> bytes:
    """Wrap *leaf* in one level per item of *kinds*, the first one outermost.

    Built bottom-up without recursion, in time and memory linear in the
    result (an extension's header needs the length of everything inside it).
    *family* names the serializer family of ``custom`` levels.
    """
    fam = string(family)
    prefixes: list[bytes] = []
    suffixes: list[bytes] = []
    size = len(leaf)
    for kind in reversed(kinds):
        before, after = _level(kind, size, fam)
        prefixes.append(before)
        suffixes.append(after)
        size += len(before) + len(after)
    prefixes.reverse()
    return b"".join(prefixes) + leaf + b"".join(suffixes)


def deep(pattern: str | Sequence[str], depth: int, leaf: bytes = NIL, **kwargs: Any) -> bytes:
    """*depth* levels of nesting, repeating *pattern* (one kind, or a sequence of kinds:
    ``deep(("tuple", "array", "map"), 300)`` is a tuple-in-array-in-map chain)."""
    kinds = [pattern] if isinstance(pattern, str) else list(pattern)
    return nest([kinds[i % len(kinds)] for i in range(depth)], leaf, **kwargs)


def unserializable_doubling(depth: int) -> bytes:
    """Extension 4 nested *depth* times through its first field.

    A decoder that turns each field into text with ``str()`` of the inner
    value repeats (and escapes) the inner text at every level: the text
    doubles per level, so 24 levels (149 bytes) decode to 67 MB of text.
    """
    return deep("unserializable", depth, string("x"))


# -- lying lengths -----------------------------------------------------------------------------


def lying_lengths(claim: int = 2**32 - 1) -> dict[str, bytes]:
    """Headers that claim up to *claim* items or bytes, followed by next to nothing:
    each 32-bit form, the 16-bit forms at their maximum, and claims inside containers."""
    small = min(claim, 2**16 - 1)
    return {
        "array32": array_header(claim, width=32) + NIL,
        "map32": map_header(claim, width=32) + NIL + NIL,
        "str32": string(b"x", declared=claim, width=32),
        "bin32": binary(b"x", declared=claim, width=32),
        "ext32": ext(EXT_TUPLE, array_header(1), declared=claim, width=32),
        "array16": array_header(small, width=16) + NIL,
        "map16": map_header(small, width=16) + NIL,
        "tuple-of-array32": ext(EXT_TUPLE, array_header(claim, width=32)),
        "custom-of-map32": ext(
            EXT_CUSTOM, array([string("nope"), map_header(claim, width=32), array_header(0)])
        ),
        "oob-index": ext(EXT_OOB, struct.pack("<I", claim)),
        "array32-of-str32": array_header(claim, width=32) + string(b"", declared=claim, width=32),
    }


# -- colliding hashes --------------------------------------------------------------------------

#: Python hashes an int *n* to ``n mod (2**61 - 1)`` (sign kept): n and n + HASH_MODULUS
#: share a hash, and so do floats x and x * 2.0**61.
HASH_MODULUS = (1 << 61) - 1

_MASK = (1 << 64) - 1
# CPython's tuple hash (Objects/tupleobject.c, 3.8 and later): xxHash's round on each
# item's hash, then the length mixed in. These are its 64-bit constants.
_XXPRIME_1 = 11400714785074694791
_XXPRIME_2 = 14029467366897019727
_XXPRIME_5 = 2870177450012600261
_INV_PRIME_1 = pow(_XXPRIME_1, -1, 1 << 64)
_INV_PRIME_2 = pow(_XXPRIME_2, -1, 1 << 64)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _acc_step(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _XXPRIME_2) & _MASK, 31) * _XXPRIME_1) & _MASK


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def tuple_hash(item_hashes: Sequence[int]) -> int:
    """``hash()`` of a tuple whose items hash to *item_hashes*, computed as CPython does
    (64-bit builds); the generator's own tests check it against ``hash()``."""
    acc = _XXPRIME_5
    for h in item_hashes:
        acc = _acc_step(acc, h & _MASK)
    acc = (acc + (len(item_hashes) ^ (_XXPRIME_5 ^ 3527539))) & _MASK
    return 1546275796 if acc == _MASK else _signed(acc)


def _int_with_hash(lane: int) -> int | None:
    """An int (within int64) whose hash is the 64-bit pattern *lane*, if there is one."""
    value = _signed(lane)
    if 0 <= value < HASH_MODULUS or -HASH_MODULUS < value < -1:
        return value  # hash(v) == v for these (hash(-1) is -2, never -1)
    return None


def _check_platform() -> None:
    if sys.hash_info.width != 64 or sys.implementation.name != "cpython":
        raise RuntimeError("hash collisions are computed for 64-bit CPython")


def colliding_tuples(count: int, *, target: int = 0x5EED, start: int = 0) -> list[tuple[int, int]]:
    """*count* distinct pairs of ints that all hash to *target* (64-bit CPython 3.8+).

    For a pair ``(a, b)`` the hash is ``f(g(P5, hash(a)), hash(b))`` with both
    steps invertible (a rotation, and multiplication by odd constants modulo
    2**64): for each ``a`` from *start* on, solve for the hash ``b`` must have,
    and keep the pair when an int has that hash (about one ``a`` in four).
    """
    _check_platform()
    if target & _MASK == _MASK:
        raise ValueError("no tuple hashes to -1")
    # Undo the last steps: the length term, the multiplication and the rotation.
    acc2 = (target - (2 ^ (_XXPRIME_5 ^ 3527539))) & _MASK
    before_rotation = _rotl((acc2 * _INV_PRIME_1) & _MASK, 33)
    pairs: list[tuple[int, int]] = []
    a = start
    while len(pairs) < count:
        acc1 = _acc_step(_XXPRIME_5, hash(a) & _MASK)
        b = _int_with_hash(((before_rotation - acc1) * _INV_PRIME_2) & _MASK)
        if b is not None:
            pairs.append((a, b))
        a += 1
    return pairs


def colliding_ints(residue: int, *, unsigned: bool = True) -> list[int]:
    """Every msgpack int that hashes like *residue* (0 <= residue < 2**61 - 1): residue +
    k * (2**61 - 1), up to 2**64 - 1 (*unsigned*) or 2**63 - 1."""
    top = 1 << (64 if unsigned else 63)
    return list(range(residue, top, HASH_MODULUS))


def colliding_floats(mantissa: int) -> list[float]:
    """Floats other than ``float(mantissa)`` that hash like *mantissa* (a small int):
    ``mantissa * 2.0**(61 * j)``, as 2**61 is 1 modulo the hash modulus."""
    out = []
    for j in range(-20, 20):
        if j == 0:
            continue
        value = math.ldexp(mantissa, 61 * j) if -1074 < 61 * j < 1024 - 64 else 0.0
        if value and math.isfinite(value):
            out.append(value)
    return out


def _hash_siblings(a: int) -> list[Any]:
    """*a* (a small int) and distinct ints and floats that share its hash.

    The int a + k * (2**61 - 1) equals the float a * 2.0**61 when k == a: that
    k is left out, so that no two of these are equal (as dict keys)."""
    ints = [v for k, v in enumerate(colliding_ints(a)) if k == 0 or k != a]
    return [*ints, *colliding_floats(a)] if a > 0 else [a]


def colliding_keys(count: int, *, target: int = 0x5EED) -> list[Any]:
    """*count* distinct keys of every hashable type comm decodes whose hash is not
    randomized (tuples of ints and floats), all with the same hash: pairs from
    :func:`colliding_tuples` whose first item is swapped for its hash-siblings
    (other ints and floats that hash like it)."""
    keys: list[Any] = []
    for a, b in colliding_tuples(max(1, count // 8), target=target, start=1):
        siblings = _hash_siblings(a)
        keys.extend((sibling, b) for sibling in siblings[:4] + siblings[-4:])
        if len(keys) >= count:
            break
    if len(keys) < count:  # too few siblings: top up with plain pairs
        keys.extend(colliding_tuples(count - len(keys), target=target, start=1 << 40))
    return keys[:count]


def hash_flood(count: int, *, target: int = 0x5EED) -> bytes:
    """A map of *count* tuple keys (extension 2) with equal hashes, each mapped to nil."""
    return map_header(count, width=32) + b"".join(
        pack(key) + NIL for key in colliding_tuples(count, target=target)
    )


def mixed_hash_flood(count: int, *, target: int = 0x5EED) -> bytes:
    """:func:`hash_flood` with keys of mixed item types (:func:`colliding_keys`), plus
    ints and floats that share hashes among themselves."""
    keys: list[Any] = colliding_keys(count, target=target)
    for residue in range(1, 1 + count // 200):
        keys.extend(_hash_siblings(residue))
    return map_header(len(keys), width=32) + b"".join(pack(key) + NIL for key in keys)


# -- floods ------------------------------------------------------------------------------------


def container_flood(size: int, item: bytes = b"\x80") -> bytes:
    """An array32 of as many copies of *item* as fit in *size* bytes: with ``b"\\x80"``, a
    body of empty maps (each one byte on the wire, a dict once decoded)."""
    count = max(0, (size - 5) // len(item))
    return array_header(count, width=32) + item * count


# -- comm framing ------------------------------------------------------------------------------


def message(
    frames: Sequence[bytes], *, count: int | None = None, lengths: Sequence[int] | None = None
) -> bytes:
    """One comm message: u32 frame count, u64 lengths, frames (little-endian). *count*
    and *lengths* may lie about *frames*."""
    n = len(frames) if count is None else count
    claimed = [len(f) for f in frames] if lengths is None else list(lengths)
    return struct.pack(f"<I{len(claimed)}Q", n, *claimed) + b"".join(frames)


def one_frame(body: bytes) -> bytes:
    """A one-frame message holding *body*."""
    return struct.pack("<IQ", 1, len(body)) + body


def tiny_messages(count: int, body: bytes = b"\x80") -> bytes:
    """*count* one-frame messages of *body* (13 bytes each with the default ``{}``)."""
    return one_frame(body) * count


def frame_count_claim(count: int = 65536, lengths: int = 0) -> bytes:
    """A message header announcing *count* frames, with only *lengths* of the *count*
    frame lengths (each 0) sent."""
    return struct.pack("<I", count) + bytes(8 * min(lengths, count))


def frame_length_claim(length: int) -> bytes:
    """A one-frame message header announcing a frame of *length* bytes, and no frame."""
    return struct.pack("<IQ", 1, length)


def handshake(protocol: int = 1, **extra: Any) -> bytes:
    """The body of a comm handshake message: ``{"protocol": protocol, **extra}`` (values
    may be :class:`Raw`)."""
    return pack({"protocol": protocol, **extra})


# -- the attack classes ------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackClass:
    """One kind of hostile input.

    *body* builds a message body of about *size* bytes (a deep chain takes
    *size* as its depth budget in bytes); *framed* builds the framed bytes
    that follow the preamble or a handshake (by default one message
    holding *body*).
    """

    name: str
    summary: str
    body: Callable[[int], bytes] | None = None
    framed_builder: Callable[[int], bytes] | None = None

    def framed(self, size: int) -> bytes:
        if self.framed_builder is not None:
            return self.framed_builder(size)
        assert self.body is not None
        return one_frame(self.body(size))


def _depth_for(pattern: Sequence[str], size: int, limit: int = 100_000) -> int:
    """How many levels of *pattern* (around nil) fit in *size* bytes (*limit* at most)."""
    family = string("nope")
    total, depth = len(NIL), 0
    while depth < limit:
        before, after = _level(pattern[depth % len(pattern)], total, family)
        if total + len(before) + len(after) > size:
            break
        total += len(before) + len(after)
        depth += 1
    return max(1, depth)


def _deep_class(name: str, pattern: Sequence[str], summary: str) -> AttackClass:
    return AttackClass(name, summary, body=lambda size: deep(pattern, _depth_for(pattern, size)))


def _lying(size: int) -> bytes:
    return b"".join(one_frame(body) for body in lying_lengths().values())


def _handshake_padding(size: int) -> bytes:
    return one_frame(handshake(pad=Raw(container_flood(size - 40))))


def _handshake_mix(size: int) -> bytes:
    """A handshake that carries some of everything: colliding keys, padding, a chain."""
    keys = max(1, size // 40)
    collide = map_header(keys) + b"".join(pack(k) + NIL for k in colliding_tuples(keys))
    chain = deep(("tuple", "array", "map"), 150)
    pad = container_flood(size // 4)
    return one_frame(handshake(keys=Raw(collide), chain=Raw(chain), pad=Raw(pad)))


#: The attack classes, by name. Sizes are a hint in bytes: the suite sends about 60 KiB
#: before the handshake (a first message may not exceed 64 KiB) and more after it.
CLASSES: dict[str, AttackClass] = {
    c.name: c
    for c in [
        _deep_class("deep-array", ["array"], "arrays nested to 100,000 levels"),
        _deep_class("deep-map", ["map"], "maps nested (as values) to 100,000 levels"),
        _deep_class("deep-tuple", ["tuple"], "comm tuples (ext 2) nested to 100,000 levels"),
        _deep_class("deep-custom", ["custom"], "custom-family headers (ext 3) nested"),
        AttackClass(
            "deep-tuple-key",
            "a map whose key is tuples nested to 100,000 levels",
            body=lambda size: nest(["map-key"] + ["tuple"] * _depth_for(["tuple"], size)),
        ),
        _deep_class(
            "deep-mixed",
            ["tuple", "array", "map", "custom", "unserializable"],
            "tuple-in-array-in-map-in-custom-in-unserializable chains",
        ),
        AttackClass(
            "unserializable-doubling",
            "ext 4 nested 24 deep: its text doubles per level",
            body=lambda size: unserializable_doubling(24),
        ),
        AttackClass(
            "lying-lengths",
            "array32/map32/str32/bin32/ext32 claiming 2**32 - 1, in 11 messages",
            framed_builder=_lying,
        ),
        AttackClass(
            "hash-flood",
            "a map of tuple keys whose hashes are equal",
            body=lambda size: hash_flood(max(1, size // 17)),
        ),
        AttackClass(
            "hash-flood-mixed",
            "colliding keys of every non-randomized type (int, float, tuples of them)",
            body=lambda size: mixed_hash_flood(max(1, size // 23)),
        ),
        AttackClass("empty-maps", "a body of empty maps (one byte each)", body=container_flood),
        AttackClass(
            "empty-arrays",
            "a body of empty arrays (one byte each; lists are tracked by the garbage collector)",
            body=lambda size: container_flood(size, b"\x90"),
        ),
        AttackClass(
            "empty-tuples",
            "a body of 1-tuples (ext 2, four bytes each)",
            body=lambda size: container_flood(size, pack((None,))),
        ),
        AttackClass(
            "timestamp",
            "msgpack timestamps (ext -1) in all three widths, then broken ones",
            framed_builder=lambda size: (
                one_frame(array([timestamp(1), timestamp(1, 5), timestamp(-(2**40), 7, width=96)]))
                + one_frame(ext(EXT_TIMESTAMP, b"\x00" * 3))
                + one_frame(ext(EXT_TIMESTAMP, b"\xff" * 8))
            ),
        ),
        AttackClass(
            "custom-families",
            "a handshake holding a pickle value (never accepted unless named), then a "
            "message holding a value of a family nobody installed",
            framed_builder=lambda size: (
                one_frame(handshake(value=Raw(custom("pickle"))))
                + one_frame(array([custom("nope", pack({"x": 1}))]))
            ),
        ),
        AttackClass(
            "frame-count-claim",
            "a header announcing 65,536 frames, then silence",
            framed_builder=lambda size: frame_count_claim(),
        ),
        AttackClass(
            "frame-length-claim",
            "a header announcing a frame of 1 MiB - 1 bytes (or of the size hint, if less), "
            "then silence",
            framed_builder=lambda size: frame_length_claim(min(2**20 - 1, size)),
        ),
        AttackClass(
            "tiny-messages",
            "a run of one-frame messages of {} (13 bytes each)",
            framed_builder=lambda size: tiny_messages(max(1, size // 13)),
        ),
        AttackClass(
            "many-frames",
            "a message of 65,536 frames (512 KiB of header, 1-byte frames)",
            framed_builder=lambda size: message([NIL] + [b"x"] * 65535),
        ),
        AttackClass(
            "handshake-padding",
            "a valid handshake padded with {}",
            framed_builder=_handshake_padding,
        ),
        AttackClass(
            "handshake-mix",
            "a valid handshake carrying colliding keys, a nested chain and {} padding",
            framed_builder=_handshake_mix,
        ),
    ]
}


# -- hypothesis strategies ---------------------------------------------------------------------


def _strategies() -> Any:
    from hypothesis import strategies as st

    return st


def bodies(max_depth: int = 100_000, max_size: int = 256 * 1024) -> Any:
    """A hypothesis strategy of hostile msgpack bodies: chains of any mix of nesting
    kinds up to *max_depth* levels around scalars, floods, colliding maps, lying
    headers and timestamps, combined inside maps, arrays and extensions."""
    st = _strategies()
    scalars = st.sampled_from(
        [NIL, b"\xc3", integer(-(2**63)), integer(2**64 - 1), float64(math.nan), string("é"),
         binary(b"\x00" * 3), timestamp(0), pack(()), pack(((),)), ext(EXT_OOB, bytes(4))]
    )  # fmt: skip
    depth = st.one_of(
        st.integers(1, 64),
        st.integers(65, 2_000),
        st.sampled_from([max_depth, max_depth // 2, 10_000, 250, 200, 33]),
    ).map(lambda d: min(d, max_depth))
    chain = st.builds(
        lambda pattern, levels, leaf, family: deep(pattern, levels, leaf, family=family),
        st.lists(st.sampled_from(NESTING_KINDS), min_size=1, max_size=5),
        depth,
        scalars,
        st.sampled_from(["nope", "pickle", ""]),
    )
    floods = st.builds(
        container_flood,
        st.integers(16, max_size),
        st.sampled_from([b"\x80", b"\x90", pack((None,)), b"\xa0", pack(Ext(4, ["", "", ""]))]),
    )
    collisions = st.builds(
        lambda n, mixed: (mixed_hash_flood if mixed else hash_flood)(n),
        st.integers(1, max(1, max_size // 20)),
        st.booleans(),
    )
    lies = st.sampled_from(list(lying_lengths().values()) + list(lying_lengths(70_000).values()))
    leaves = st.one_of(scalars, chain, chain, floods, collisions, lies)  # chains: twice

    def combine(children: Any) -> Any:
        return st.one_of(
            st.lists(children, min_size=1, max_size=4).map(array),
            st.lists(st.tuples(st.sampled_from([NIL, integer(1), string("k"), pack((1, 2))]),
                               children), min_size=1, max_size=4).map(
                lambda pairs: map_header(len(pairs)) + b"".join(k + v for k, v in pairs)),
            st.builds(lambda kind, inner: nest([kind], inner),
                      st.sampled_from(NESTING_KINDS), children),
        )  # fmt: skip

    return st.recursive(leaves, combine, max_leaves=4)


def streams(max_depth: int = 100_000, max_size: int = 256 * 1024) -> Any:
    """A hypothesis strategy of whole hostile streams: the preamble, then one to three
    messages holding :func:`bodies` (framed honestly, with lying counts or lengths,
    with extra frames, or as a run of tiny messages), sometimes cut short."""
    st = _strategies()
    body = bodies(max_depth, max_size)

    def frame(kind: str, data: bytes, extra: int) -> bytes:
        if kind == "honest":
            return message([data, *(b"x" * i for i in range(extra))])
        if kind == "count":
            return message([data], count=65536) + data
        if kind == "length":
            return message([data], lengths=[len(data) + 1 + extra]) + data
        return tiny_messages(extra + 1, data[:64])

    framed = st.builds(
        frame, st.sampled_from(["honest"] * 4 + ["count", "length", "tiny"]), body,
        st.integers(0, 3),
    )  # fmt: skip
    return st.builds(
        lambda msgs, cut: (PREAMBLE + b"".join(msgs))[: cut or None],
        st.lists(framed, min_size=1, max_size=3),
        st.sampled_from([0, 0, 0, None]).flatmap(
            lambda cut: st.just(0) if cut == 0 else st.integers(1, 4096)
        ),
    )
