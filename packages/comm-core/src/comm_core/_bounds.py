"""What decoding a message body may cost: nesting depth, memory, time.

msgpack's C decoder is fast, and trusts its input more than comm may. Left to
itself it would

* nest one decoding context (about 40 KiB of C stack) for every extension
  value that comm's ``ext_hook`` decodes, so a few hundred tuples nested in one
  another end the process;
* build whatever the bytes describe: each byte of a run of empty maps becomes
  a dict of some 90 bytes;
* (before msgpack 1.2) reserve room for as many items as a container header
  claims, before they arrive.

This module measures a body before it is decoded, at the speed of C wherever
it can: :func:`header_bytes` picks out every byte that may begin a container or
an extension (one ``bytes.translate``), which bounds the depth and the number
of containers of the body; when that bound is not enough, :func:`within_depth`
has msgpack itself skip over the body inside a known number of open arrays,
so that its own fixed-size stack overflows exactly when the body nests deeper
than allowed. Skipping builds no object and checks that every item a header
claims is there. Where msgpack has no C extension, a scan in Python does the
same, more slowly.

:class:`comm_core.protocol.Decoder` applies these bounds; the docs'
protocol page states them for users.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgpack

from comm_core.exceptions import ProtocolError

__all__ = [
    "ARRAY_COST",
    "BYTE_COST",
    "FREE_BYTES",
    "MAP_COST",
    "NOT_HEADER",
    "container_depth",
    "count_exts",
    "count_maps",
    "estimate",
    "has_long_arrays",
    "header_bytes",
    "scan",
    "validate",
    "within_depth",
]

# Bytes that may begin a container (fixmap, fixarray, array 16/32, map 16/32) or an
# extension value (ext 8/16/32, fixext 1..16). Each nesting level of a decoded value
# begins with one of them, so their number bounds its depth and its containers.
_MAPS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
_ARRAYS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_EXTS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
_LONG_ARRAYS = frozenset({0xDC, 0xDD})


def _deleting_all_but(keep: frozenset[int]) -> bytes:
    return bytes(b for b in range(256) if b not in keep)


#: The bytes that may not begin a container or an extension: ``data.translate(None,
#: NOT_HEADER)`` keeps those that may (:func:`header_bytes`, without a call).
NOT_HEADER: Final = _deleting_all_but(_MAPS | _ARRAYS | _EXTS)
_NOT_MAP = _deleting_all_but(_MAPS)
_NOT_EXT = _deleting_all_but(_EXTS)
_CHUNK = 1 << 20  # a memoryview is translated in pieces of this size

#: Estimated bytes of memory per byte of body (a list's slot, a dict's entry, a short string).
BYTE_COST: Final = 20
#: Estimated bytes of memory per map, beyond :data:`BYTE_COST` (a small dict takes 200 bytes).
MAP_COST: Final = 150
#: Estimated bytes per array, tuple or extension value, beyond :data:`BYTE_COST`.
ARRAY_COST: Final = 64
#: Memory any message may decode to, whatever its size.
FREE_BYTES: Final = 1 << 20


def header_bytes(data: Any) -> bytes:
    """The bytes of *data* that may begin a container or an extension, in order.

    An over-count: the contents of strings, binaries and numbers are included.
    """
    if type(data) is bytes:
        return data.translate(None, NOT_HEADER)
    view = memoryview(data).cast("B")
    if view.nbytes <= _CHUNK:
        return view.tobytes().translate(None, NOT_HEADER)
    return b"".join(
        view[start : start + _CHUNK].tobytes().translate(None, NOT_HEADER)
        for start in range(0, view.nbytes, _CHUNK)
    )


def count_maps(headers: bytes) -> int:
    """How many of *headers* (from :func:`header_bytes`) may begin a map."""
    return len(headers.translate(None, _NOT_MAP))


def count_exts(headers: bytes) -> int:
    """How many of *headers* (from :func:`header_bytes`) may begin an extension value."""
    return len(headers.translate(None, _NOT_EXT))


def has_long_arrays(headers: bytes) -> bool:
    """Whether *headers* hold an array 16 or 32 header (msgpack < 1.2 reserves its items)."""
    return b"\xdc" in headers or b"\xdd" in headers


def estimate(size: int, maps: int, others: int) -> int:
    """A bound of what :func:`scan` estimates for a body of *size* bytes.

    *maps* counts (at least) its maps, *others* its arrays and extension
    values. :func:`scan` counts :data:`BYTE_COST` per item (a list's slot, a
    dict's entry, a number, a short string), the bytes of longer strings and
    binaries, and :data:`MAP_COST` or :data:`ARRAY_COST` per container: the
    memory decoding takes, give or take a short string's header. Every item
    takes a byte at least, and a longer string or binary its length and more,
    so this is never less.
    """
    return BYTE_COST * size + MAP_COST * maps + ARRAY_COST * others


# -- depth ------------------------------------------------------------------------------

_stack_size: int | None = None  # msgpack's decoding stack, found on first use; 0: unknown


def _msgpack_stack() -> int:
    """How many containers msgpack's C decoder keeps open at most; 0 without the C decoder."""
    global _stack_size
    if _stack_size is None:
        _stack_size = _probe_stack()
    return _stack_size


def _probe_stack() -> int:
    if not msgpack.Unpacker.__module__.startswith("msgpack._cmsgpack"):
        return 0  # the pure-Python fallback recurses instead
    if _fits(b"\xc0", 1024) and not _fits(b"\xc0", 1025):
        return 1024  # every msgpack release so far
    if _fits(b"\xc0", 1 << 16):
        return 0  # no fixed stack that this module can use: scan instead
    low, high = 0, 1 << 16  # low fits, high does not
    while high - low > 1:
        middle = (low + high) // 2
        if _fits(b"\xc0", middle):
            low = middle
        else:
            high = middle
    return low


def _fits(data: Any, prefix: int) -> bool:
    """Whether msgpack can skip the value in *data* inside *prefix* open arrays.

    False if its stack overflows. Raises :class:`ProtocolError` if *data* is not
    exactly one well-formed value.
    """
    size = prefix + len(data)
    unpacker = msgpack.Unpacker(
        max_buffer_size=size,
        max_str_len=size,
        max_bin_len=size,
        max_array_len=size,
        max_map_len=size,
        max_ext_len=size,
    )
    if prefix:
        unpacker.feed(b"\x91" * prefix)
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.StackError:
        return False
    except msgpack.OutOfData:
        raise ProtocolError("malformed message body: it ends inside a value") from None
    except (ValueError, msgpack.FormatError) as exc:
        raise ProtocolError(f"malformed message body: {type(exc).__name__}: {exc}") from exc
    if unpacker.tell() != size:
        raise ProtocolError("malformed message body: extra bytes after the value")
    return True


def validate(data: Any) -> None:
    """Raise :class:`ProtocolError` unless *data* holds exactly one well-formed value.

    Every item a header announces must be present, so that decoding then
    reserves memory only for items that exist.
    """
    if _msgpack_stack():
        _fits(data, 0)
    else:
        scan(data, 1 << 30, 1 << 62, into_extensions=False)


def within_depth(data: Any, limit: int) -> bool:
    """Whether containers nest at most *limit* deep in *data*.

    Extension values count as leaves here (their contents are checked when
    they are decoded). Raises :class:`ProtocolError` where :func:`validate` does.
    """
    stack = _msgpack_stack()
    if stack and limit < stack:
        return _fits(data, stack - limit)
    return _scan_depth(data, limit) <= limit


def _scan_depth(data: Any, limit: int) -> int:
    shape = scan(data, limit, 1 << 62, into_extensions=False)
    assert shape is not None  # no cap
    return shape[0]


def container_depth(data: Any, limit: int) -> int | None:
    """How deeply containers nest in *data*, if at most *limit*; else ``None``.

    Extension values count as leaves. A search over the depth, each step a
    pass of msgpack over *data*: about twice the depth's logarithm passes.
    Raises :class:`ProtocolError` where :func:`validate` does.
    """
    stack = _msgpack_stack()
    if not stack or limit >= stack:
        depth = _scan_depth(data, limit)
        return depth if depth <= limit else None
    low = -1  # known to be too shallow
    high = 0
    while not _fits(data, stack - high):
        if high >= limit:
            return None
        low = high
        high = min(limit, 2 * high + 1)
    while high - low > 1:  # low is too shallow, high is deep enough
        middle = (low + high) // 2
        if _fits(data, stack - middle):
            high = middle
        else:
            low = middle
    return high


# The scan, for bodies with few items (most of their bytes in strings or binaries, which
# it steps over) and where msgpack has no C decoder: the size of each item by its first
# byte. 0: a container, an extension, a variable-length item or an invalid byte.
_FIXED = [0] * 256
for _byte in range(256):
    if _byte <= 0x7F or _byte >= 0xE0 or _byte in (0xC0, 0xC2, 0xC3):
        _FIXED[_byte] = 1
    elif 0xA0 <= _byte <= 0xBF:
        _FIXED[_byte] = 1 + (_byte & 0x1F)
    elif _byte == 0xCA:
        _FIXED[_byte] = 5
    elif _byte == 0xCB:
        _FIXED[_byte] = 9
    elif 0xCC <= _byte <= 0xD3:
        _FIXED[_byte] = 1 + (1 << (_byte & 0x03))
# One-byte items: positive and negative fixints, nil, booleans, the empty string, empty
# maps and arrays (what _STARTS_RUN marks).
_ONE_BYTE_ITEMS = re.compile(b"[\\x00-\\x80\\x90\\xa0\\xc0\\xc2\\xc3\\xe0-\\xff]+")
_STARTS_RUN = [_FIXED[_byte] == 1 or _byte in (0x80, 0x90) for _byte in range(256)]
_RUN = 16  # runs shorter than this are walked item by item
# Strings and binaries: the width of their length field.
_STRINGS = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
# Extension values: the width of their length field (0: a fixext, whose length is in the
# first byte).
_EXT_WIDTHS = {0xC7: 1, 0xC8: 2, 0xC9: 4, 0xD4: 0, 0xD5: 0, 0xD6: 0, 0xD7: 0, 0xD8: 0}
# comm's extension types whose data is a msgpack value (tuple, custom, unserializable).
_NESTING_EXTS = frozenset({2, 3, 4})


def scan(
    data: Any,
    limit: int,
    cap: int,
    budget: int | None = None,
    *,
    into_extensions: bool = True,
) -> tuple[int, int] | None:
    """Measure the one msgpack value in *data* by walking its items in Python.

    Returns ``(depth, cost)``: how deeply lists, dicts and tuples nest
    (``limit + 1`` as soon as deeper than *limit*) and the memory its items
    would take, estimated as :func:`estimate` does item by item (more than
    *budget*, if given, as soon as it is). Descends into the contents of comm's
    tuple, custom and unserializable values unless *into_extensions* is false
    (they are then leaves). Returns ``None`` after *cap* items: the walk costs
    about as much per item as decoding does.

    Raises :class:`ProtocolError` unless *data* is exactly one well-formed
    value whose containers hold every item they announce.
    """
    buf = data if type(data) is bytes else bytes(data)
    end = len(buf)
    pos = 0
    items = 0
    runs_from = 0  # runs of one-byte items are looked for from this item on
    deepest = 0
    containers = 0  # their estimated memory
    payload = 0  # bytes of long strings and binaries
    # The innermost open container or extension: items it still holds, where it ends,
    # its depth, and whether it is an extension's contents (which must fill it exactly).
    remaining, stop, depth, contents = 1, end, 0, False
    parents: list[tuple[int, int, int, bool]] = []
    fixed = _FIXED
    starts_run = _STARTS_RUN
    over = (1 << 62) if budget is None else budget
    while True:
        if not remaining:
            if contents and pos != stop:
                raise ProtocolError("malformed message body: extra bytes in an extension value")
            if not parents:
                break
            remaining, stop, depth, contents = parents.pop()
            continue
        items += 1
        if items > cap:
            return None
        if pos >= stop:
            raise _truncated()
        byte = buf[pos]
        size = fixed[byte]
        if starts_run[byte] and remaining >= _RUN and items >= runs_from:
            # A run of one-byte items (small ints, nil, booleans, empty containers):
            # measured at C speed. A flood of empty maps is one.
            run = _ONE_BYTE_ITEMS.match(buf, pos, pos + remaining)
            length = 0 if run is None else run.end() - pos  # never None: byte is one
            if length < _RUN:
                runs_from = items + 4 * _RUN  # not worth looking again for a while
            else:
                items += length - 1
                if items > cap:
                    return None
                empty_maps = buf.count(b"\x80", pos, pos + length)
                empty_arrays = buf.count(b"\x90", pos, pos + length)
                containers += MAP_COST * empty_maps + ARRAY_COST * empty_arrays
                if empty_maps or empty_arrays:
                    if depth >= deepest:
                        deepest = depth + 1
                        if deepest > limit:
                            return deepest, BYTE_COST * items + containers + payload
                    if BYTE_COST * items + containers + payload > over:
                        return deepest, BYTE_COST * items + containers + payload
                remaining -= length
                pos += length
                continue
        remaining -= 1
        if size:
            pos += size
            continue
        if 0x80 <= byte <= 0x9F or 0xDC <= byte <= 0xDF:
            if byte <= 0x9F:
                count = byte & 0x0F
                pos += 1
            else:
                width = 2 if byte in (0xDC, 0xDE) else 4
                count = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
                pos += 1 + width
            if byte < 0x90 or byte >= 0xDE:
                containers += MAP_COST
                count *= 2  # keys and values
            else:
                containers += ARRAY_COST
            if count > stop - pos:
                raise _truncated()
            if containers > over and BYTE_COST * items + containers + payload > over:
                return deepest, BYTE_COST * items + containers + payload
            if depth >= deepest:
                deepest = depth + 1
                if deepest > limit:
                    return deepest, BYTE_COST * items + containers + payload
            if count:
                parents.append((remaining, stop, depth, contents))
                depth += 1
                remaining, contents = count, False
            continue
        width = _STRINGS.get(byte, -1)
        if width > 0:
            length = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width + length
            payload += length
            continue
        width = _EXT_WIDTHS.get(byte, -1)
        if width < 0:
            raise ProtocolError(f"malformed message body: invalid byte 0x{byte:02x}")
        if not width:
            length = 1 << (byte - 0xD4)  # a fixext
        else:
            length = int.from_bytes(buf[pos + 1 : pos + 1 + width], "big")
        start = pos + 2 + width
        pos = start + length
        if pos > stop:
            raise _truncated()
        containers += ARRAY_COST
        if into_extensions and buf[start - 1] in _NESTING_EXTS:
            parents.append((remaining, stop, depth, contents))
            remaining, stop, contents = 1, pos, True
            pos = start
        else:
            payload += length
    if pos != end:
        raise ProtocolError("malformed message body: extra bytes after the value")
    return deepest, BYTE_COST * items + containers + payload


def _truncated() -> ProtocolError:
    return ProtocolError("malformed message body: it ends inside a value")
