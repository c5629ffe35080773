"""Text that a peer chose, made safe for a log line or an exception message.

A peer controls its handshake (``library``, ``version``, any entry), the names
of serializer families it sends, and more. Put into a message unchanged, such
a string can be megabytes long, or hold newlines and text that forges log
lines (``"\\nCRITICAL:root:..."``). :func:`peer_text` turns any value into one
line of bounded length, escaped as :func:`repr` escapes it, at a cost bounded
by the limit (whatever the value's size).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PEER_TEXT_LIMIT", "peer_text"]

#: The default longest result of :func:`peer_text`, in characters.
PEER_TEXT_LIMIT = 200
_SHORTEST = 16  # a shorter limit could not even say what was cut
_SCALARS = (bool, float, type(None))
_BYTES = (bytes, bytearray, memoryview)


def peer_text(value: object, limit: int = PEER_TEXT_LIMIT, *, bare: bool = False) -> str:
    """*value* as one line of at most *limit* characters, escaped as ``repr()`` does.

    Strings and bytes are quoted and escaped (newlines, control characters,
    invisible and direction-changing Unicode characters become ``\\n``,
    ``\\x1b``, ``\\u202e``, ...); only their first *limit* characters are
    looked at, and a cut one ends with ``...`` and its full length. Other
    values get their type's ``repr()``, shortened the same way: containers
    show their first items only (and nest at most 4 deep), never building the
    text of the whole; a value of any other type shows as ``<type name>``.

    Args:
        value: anything, usually something a peer sent.
        limit: the longest result, in characters (at least 16).
        bare: a string that needs no escaping and fits is returned as it is,
            without quotes (for text that reads better plain: ``comm-core 1.0``).

    Never raises.
    """
    limit = max(int(limit), _SHORTEST)
    if bare and type(value) is str and len(value) <= limit and value.isprintable():
        return value
    return _text(value, limit, 0)


def _text(value: object, limit: int, depth: int) -> str:
    try:
        if isinstance(value, str):
            return _cut(repr(value[:limit]), len(value), "chars", limit)
        if isinstance(value, _BYTES):
            view = memoryview(value).cast("B")
            return _cut(repr(bytes(view[:limit])), view.nbytes, "bytes", limit)
        if isinstance(value, int) and not isinstance(value, bool):
            if value.bit_length() > 3 * limit:  # str() of a huge int costs, or raises
                return _cut(f"<int of {value.bit_length()} bits>", 0, "", limit)
            return _cut(repr(value), 0, "", limit)
        if isinstance(value, _SCALARS):
            return _cut(repr(value), 0, "", limit)
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            return _cut(_container(value, limit, depth), 0, "", limit)
    except Exception:  # a value whose repr or len misbehaves
        pass
    return _cut(f"<{type(value).__name__}>", 0, "", limit)


def _cut(text: str, size: int, unit: str, limit: int) -> str:
    """*text* cut to *limit* characters, saying so; *size* is the whole value's length."""
    if len(text) <= limit and (not unit or size <= limit):
        return text
    suffix = f"... ({size} {unit})" if unit else "..."
    if len(suffix) > limit // 2:
        suffix = "..."
    return text[: limit - len(suffix)] + suffix


_MAX_DEPTH = 4
_BRACKETS: dict[type, str] = {list: "[]", tuple: "()", dict: "{}"}


def _container(value: Any, limit: int, depth: int) -> str:
    """The repr of a container, from as many of its first items as *limit* allows."""
    brackets = _BRACKETS.get(type(value), "{}")
    if not value:
        return brackets if type(value) in _BRACKETS else f"{type(value).__name__}()"
    if depth >= _MAX_DEPTH:
        return brackets[0] + "..." + brackets[1]
    out = brackets[0]
    pairs = isinstance(value, dict)
    for count, item in enumerate(value.items() if pairs else value):
        if len(out) > limit:  # _cut marks the cut
            return out
        room = max(limit - len(out), _SHORTEST)
        if pairs:
            key, val = item
            part = f"{_text(key, room, depth + 1)}: {_text(val, room, depth + 1)}"
        else:
            part = _text(item, room, depth + 1)
        out += (", " if count else "") + part
    if isinstance(value, tuple) and len(value) == 1:
        out += ","
    return out + brackets[1]
