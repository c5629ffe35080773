"""Decoding a hostile body: depth, hash collisions and memory are bounded.

The bodies come from ``hostile_msgpack``, written from the msgpack spec as an
attacker would write them, not from comm's encoder.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import comm_core
from comm_core import ProtocolError, SerializationError, _bounds
from comm_core.protocol import (
    Decoder,
    Encoders,
    Serialized,
    SerializerFamily,
    decode_message,
    encode_message,
    split_message,
)
from hostile_msgpack import (
    KINDS,
    NIL,
    array,
    array_header,
    colliding_pairs,
    custom,
    integer,
    map_header,
    nested,
    text,
    tuple_of,
)

HERE = Path(__file__).parent


def body_of(msg: Any) -> bytes:
    """The msgpack body comm's encoder writes for *msg* (a one-frame message)."""
    buffers, _ = encode_message(msg)
    assert len(buffers) == 1
    return bytes(buffers[0])[12:]


def depth_of(value: Any) -> int:
    """How deeply lists, dicts and tuples nest in a decoded value."""
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, (list, tuple)):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, Serialized):
        return 1 + depth_of(value.header)
    return 0


def family_keeping_header() -> dict[str, SerializerFamily]:
    family = SerializerFamily("f", lambda obj: (obj, []), lambda header, frames: [header])
    return {"f": family}


# -- depth ------------------------------------------------------------------------------


# How many levels of each kind fit in the default limit of 100: a custom value's
# contents hold two lists (itself and its frame indices) and a tuple or custom value
# counts from the deepest level of the value holding it, so custom values nested in
# one another count twice each.
FITTING = {"array": 100, "map": 100, "tuple": 100, "custom": 50}


@pytest.mark.parametrize("kind", KINDS)
def test_nesting_up_to_the_limit_decodes_and_beyond_it_is_refused(kind: str) -> None:
    families = family_keeping_header()
    fitting = FITTING.get(kind, 60)
    decoded = decode_message([nested(kind, fitting)], families=families)
    assert depth_of(decoded) >= fitting
    for depth in (101, 1_000, 100_000):
        # Deep chains of extension values may run out of memory before depth.
        with pytest.raises(ProtocolError, match=r"more than 100 deep|in one another"):
            decode_message([nested(kind, depth)], families=families)
    if kind in FITTING:
        with pytest.raises(ProtocolError, match="more than 100 deep"):
            decode_message([nested(kind, fitting + 1)], families=families)


@pytest.mark.parametrize("kind", KINDS)
def test_the_limit_holds_without_deserializing(kind: str) -> None:
    assert decode_message([nested(kind, FITTING.get(kind, 60))], deserialize=False) is not None
    with pytest.raises(ProtocolError, match="deep"):
        decode_message([nested(kind, 101)], deserialize=False)


@pytest.mark.parametrize("kind", ["array", "tuple", "mixed"])
def test_the_limit_is_a_setting(kind: str) -> None:
    with comm_core.configure(max_message_depth=10):
        decode_message([nested(kind, 10 if kind != "mixed" else 8)], deserialize=False)
        with pytest.raises(ProtocolError, match="more than 10 deep"):
            decode_message([nested(kind, 11)], deserialize=False)
    # Far deeper too, within Python's recursion limit (each tuple costs a few frames).
    levels = 500 if kind == "array" else 100
    assert Decoder(max_depth=500, deserialize=False).decode([nested(kind, levels)]) is not None


def test_depth_is_counted_across_tuples_inside_deep_containers() -> None:
    # 60 lists, then a tuple holding 60 more: 120 levels in all.
    inner = nested("tuple", 60)
    body = b"\x91" * 60 + inner
    with pytest.raises(ProtocolError, match="deep"):
        decode_message([body])
    # Padding that makes the body long (and its items many) changes nothing.
    padded = array(b"\x91" * 60 + inner, *([integer(1000)] * 5000))
    with pytest.raises(ProtocolError, match="deep"):
        decode_message([padded])
    decode_message([b"\x91" * 40 + nested("tuple", 60)])


def test_a_deep_body_is_refused_in_a_child_process_without_crashing_it() -> None:
    """Before the fix, 200 nested tuples ended the process with SIGSEGV."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from comm_core import ProtocolError
        from comm_core.protocol import decode_message
        from hostile_msgpack import nested
        for kind in ("tuple", "custom", "mixed"):
            for depth in (200, 2_000, 100_000):
                try:
                    decode_message([nested(kind, depth)], deserialize=False)
                except ProtocolError:
                    pass
                else:
                    sys.exit(f"{{kind}} x {{depth}} decoded")
        print("refused")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "refused"


def test_unserializable_values_do_not_nest() -> None:
    """Their fields are strings: a nested one was str()-ed, its quotes escaped anew at
    each level, doubling its text: 40 levels asked for terabytes."""
    decode_message([nested("unserializable", 1, leaf=text("t"))])
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        sys.path.insert(0, {str(HERE)!r})
        from comm_core import ProtocolError
        from comm_core.protocol import decode_message
        from hostile_msgpack import nested, text
        try:
            decode_message([nested("unserializable", 40, leaf=text("t"))])
        except ProtocolError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not hold 3 strings" in done.stdout


def test_without_msgpacks_c_extension_the_same_limits_hold() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import msgpack
        assert msgpack.Unpacker.__module__ == "msgpack.fallback", msgpack.Unpacker
        from comm_core import ProtocolError
        from comm_core.protocol import decode_message
        from hostile_msgpack import nested, array, integer
        for kind in ("array", "map", "tuple", "mixed"):
            decode_message([nested(kind, 100 if kind != "mixed" else 60)], deserialize=False)
            try:
                decode_message([nested(kind, 101)], deserialize=False)
            except ProtocolError:
                pass
            else:
                sys.exit(kind + " 101 decoded")
        body = array(b"\\x91" * 60 + nested("tuple", 60), *([integer(1000)] * 2000))
        try:
            decode_message([body])
        except ProtocolError:
            print("refused")
        """
    )
    env = {**_environ(), "MSGPACK_PUREPYTHON": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "refused"


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


nested_values = st.recursive(
    st.sampled_from([NIL, integer(7), integer(1 << 40), text("ab"), b"\xc4\x03\x9f\x9f\x9f"]),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: array(*items)),
        st.lists(children, max_size=3).map(lambda items: tuple_of(*items)),
        st.lists(children, max_size=3).map(
            lambda values: (
                map_header(len(values)) + b"".join(text(f"k{i}") + v for i, v in enumerate(values))
            )
        ),
    ),
    max_leaves=40,
)


class Marked:
    """An extension value's decoded contents, marked as such."""

    def __init__(self, contents: Any) -> None:
        self.contents = contents


def containers_around(value: Any) -> tuple[int, list[Marked]]:
    """Depth of lists and dicts in *value*, extension values as leaves, and those values."""
    if isinstance(value, Marked):
        return 0, [value]
    children = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(value, (list, dict)):
        return 0, []
    depth, marked = 0, []
    for child in children:
        child_depth, child_marked = containers_around(child)
        depth = max(depth, child_depth)
        marked += child_marked
    return depth + 1, marked


def counted_depth(value: Any) -> int:
    """The depth comm counts: each extension value from its holder's deepest level."""
    depth, marked = containers_around(value)
    return depth + max((counted_depth(m.contents) for m in marked), default=0)


@settings(max_examples=300, deadline=None)
@given(nested_values, st.integers(min_value=1, max_value=30))
def test_the_measures_agree_with_the_decoded_value(body: bytes, limit: int) -> None:
    def as_tuples(code: int, data: bytes) -> Any:
        return tuple(msgpack.unpackb(data, ext_hook=as_tuples, strict_map_key=False))

    def as_marked(code: int, data: bytes) -> Any:
        return Marked(msgpack.unpackb(data, ext_hook=as_marked, strict_map_key=False))

    depth = depth_of(msgpack.unpackb(body, ext_hook=as_tuples, strict_map_key=False))
    counted = counted_depth(msgpack.unpackb(body, ext_hook=as_marked, strict_map_key=False))
    shape = _bounds.scan(body, limit, 1 << 30)
    assert shape is not None
    assert shape[0] == min(depth, limit + 1)
    flat = _bounds.scan(body, 1 << 30, 1 << 30, into_extensions=False)
    assert flat is not None
    assert _bounds.within_depth(body, limit) == (flat[0] <= limit)
    assert _bounds.container_depth(body, limit) == (flat[0] if flat[0] <= limit else None)
    decoder = Decoder(max_depth=limit)
    if counted <= limit:
        assert depth_of(decoder.decode([body])) == depth
    elif depth > limit:
        with pytest.raises(ProtocolError, match="deep"):
            decoder.decode([body])


def test_every_byte_that_starts_a_run_is_one_item() -> None:
    for byte in range(256):
        if _bounds._STARTS_RUN[byte]:
            assert _bounds._ONE_BYTE_ITEMS.fullmatch(bytes([byte])), hex(byte)
            msgpack.unpackb(bytes([byte]))  # one whole item: no error


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC2, 0xC3, 0xE0, 0xFF]), max_size=300
    ),
    st.lists(st.sampled_from([NIL, integer(1000), text("abc"), array(NIL)]), max_size=3),
)
def test_runs_of_one_byte_items_are_measured_as_walked(run: list[int], tail: list[bytes]) -> None:
    items = [bytes([byte]) for byte in run] + tail
    body = array(*items)
    shape = _bounds.scan(body, 100, 1 << 30)
    assert shape is not None
    decoded = msgpack.unpackb(body, strict_map_key=False)
    assert len(decoded) == len(items)
    maps = run.count(0x80)
    arrays = 1 + run.count(0x90) + tail.count(array(NIL))
    count = 1 + len(items) + tail.count(array(NIL))
    assert shape == (
        depth_of(decoded),
        _bounds.BYTE_COST * count + _bounds.MAP_COST * maps + _bounds.ARRAY_COST * arrays,
    )


@pytest.mark.parametrize(
    "body",
    [
        array_header(3) + NIL,  # claims more items than it has
        array(NIL) + NIL,  # extra bytes
        b"\xc1",  # never used
        b"\xdd\xff\xff\xff\xff" + NIL * 200,
        b"\xd9\x05ab",  # a string longer than the body
        tuple_of(NIL)[:-1],
    ],
)
def test_the_measures_refuse_malformed_bodies(body: bytes) -> None:
    padded = body
    with pytest.raises(ProtocolError):
        _bounds.scan(padded, 100, 1 << 30)
    with pytest.raises(ProtocolError):
        decode_message([padded])


# -- hash collisions ---------------------------------------------------------------------


def test_colliding_tuple_keys_are_refused() -> None:
    pairs = list(colliding_pairs(3_800))
    assert len({hash(pair) for pair in pairs}) == 1  # the generator does collide
    entries = b"".join(tuple_of(integer(a), integer(b)) + NIL for a, b in pairs)
    body = map_header(len(pairs)) + entries
    assert len(body) < 128 * 1024
    with pytest.raises(ProtocolError, match="of one hash"):
        decode_message([body])
    # The same in a comm handshake (64 KiB at most) is refused before authentication.
    handshake = map_header(1 + 1_500) + text("protocol") + integer(1)
    handshake += b"".join(tuple_of(integer(a), integer(b)) + NIL for a, b in pairs[:1_500])
    assert len(handshake) < 64 * 1024
    with pytest.raises(ProtocolError, match="of one hash"):
        decode_message([handshake])


def test_many_tuple_keys_of_distinct_hashes_decode() -> None:
    msg = {("x", i, -i): (i, "y") for i in range(5_000)}
    assert decode_message([body_of(msg)]) == msg
    # Up to 8 keys of one hash are fine among many others; a 9th is refused. (The
    # first 64 tuples of a message are not counted: so few cannot cost much.)
    colliding = list(colliding_pairs(9))
    others = {(i, i): 1 for i in range(1_000)}
    few = others | dict.fromkeys(colliding[:8], 0)
    assert decode_message([body_of(few)]) == few
    too_many = others | dict.fromkeys(colliding, 0)
    with pytest.raises(ProtocolError, match="of one hash"):
        decode_message([body_of(too_many)])
    # Equal tuples repeat at will: they are no collision.
    repeated = [(1, 2)] * 10_000
    assert decode_message([body_of(repeated)]) == repeated


# -- memory -------------------------------------------------------------------------------


def peak_while(fn: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def decode_in_child(item: bytes, size: int) -> tuple[str, int]:
    """Decode an array of *item* about *size* bytes long in a fresh process.

    Returns ``"decoded"`` or the error's text, and how much the process's peak
    RSS grew while decoding.
    """
    script = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {str(HERE)!r})
        from comm_core import ProtocolError
        from comm_core.protocol import decode_message
        from hostile_msgpack import array_header
        item = {item!r}
        count = {size} // len(item)
        body = array_header(count) + item * count
        decode_message([b"\\x80"])  # everything imported
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decode_message([body])
        except ProtocolError as exc:
            outcome = str(exc)
        else:
            outcome = "decoded"
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
        print(outcome)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown, outcome = done.stdout.split("\n", 1)
    return outcome.strip(), int(grown)


def test_a_flood_of_empty_maps_is_refused_before_it_is_built() -> None:
    """4 MiB of empty maps decoded to about 290 MiB of dicts."""
    outcome, grown = decode_in_child(b"\x80", 4 * 1024 * 1024)
    assert "max_message_expansion" in outcome
    assert grown < 16 * 1024 * 1024


@pytest.mark.parametrize(
    "item", [b"\x90", b"\x91\x00", b"\x81\xa0\xc0", tuple_of(), tuple_of(NIL), b"\xa2ab"]
)
def test_what_a_body_decodes_to_is_bounded_by_its_size(item: bytes) -> None:
    """Refused, or at most max_message_expansion (64) times its size, plus 1 MiB."""
    size = 1024 * 1024
    outcome, grown = decode_in_child(item, size)
    assert grown <= 64 * size + (1 << 20), (outcome, grown)
    if item in (b"\x90", b"\x81\xa0\xc0"):  # 70 and 84 times their size, estimated
        assert "max_message_expansion" in outcome
        assert grown < 8 * 1024 * 1024  # refused before anything is built
    else:
        assert outcome == "decoded"


def test_ordinary_bodies_with_many_small_containers_decode() -> None:
    records = [{"key": f"x-{i}", "state": "memory", "nbytes": i} for i in range(100_000)]
    assert decode_message([body_of(records)]) == records
    tiny = [{"a": 1}] * 300_000  # about 57 times its size, under the default 64
    assert decode_message([body_of(tiny)]) == tiny
    pairs = [[i % 100, 7] for i in range(300_000)]
    assert decode_message([body_of(pairs)]) == pairs


def test_the_expansion_limit_is_a_setting() -> None:
    records = [{"a": 1}] * 300_000
    body = body_of(records)
    with (
        comm_core.configure(max_message_expansion=16),
        pytest.raises(ProtocolError, match="max_message_expansion=16"),
    ):
        decode_message([body])
    assert Decoder(max_expansion=60).decode([body]) == records


def test_nested_large_tuples_hold_a_bounded_amount_of_memory() -> None:
    # msgpack copies each tuple's contents out of the one holding it: 100 tuples of
    # 1 MiB nested in one another held 100 MiB at once, for a body of 1 MiB.
    leaf = b"\xc6" + (1 << 20).to_bytes(4, "big") + b"x" * (1 << 20)
    body = nested("tuple", 100, leaf=leaf)

    def decode() -> None:
        with pytest.raises(ProtocolError, match="in one another"):
            decode_message([body])

    assert peak_while(decode) < 64 * len(body) + (1 << 20)
    assert depth_of(decode_message([nested("tuple", 3, leaf=leaf)])) == 3
    with (
        comm_core.configure(max_message_expansion=4),
        pytest.raises(ProtocolError, match="in one another"),
    ):
        decode_message([nested("tuple", 2, leaf=leaf)])


def test_claimed_items_that_are_missing_reserve_nothing() -> None:
    # Array headers claiming 65,535 items each, nested, in a body that has few.
    body = (b"\xdc\xff\xff" * 90) + NIL * 60_000
    body += b"\x00" * (64 * 1024 - len(body))

    def decode() -> None:
        with pytest.raises(ProtocolError):
            decode_message([body])

    assert peak_while(decode) < 8 * 1024 * 1024


# -- the rest of the contract ---------------------------------------------------------------


def test_a_message_too_deep_to_encode_raises_serialization_error() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(SerializationError, match="too deeply"):
        encode_message(deep)
    chain: tuple[Any, ...] = ()
    for _ in range(5_000):
        chain = (chain,)
    with pytest.raises(SerializationError, match="too deeply"):
        encode_message(chain)


def test_msgpack_timestamps_round_trip() -> None:
    stamp = msgpack.Timestamp(1_700_000_000, 5)
    assert decode_message([body_of({"at": stamp})]) == {"at": stamp}


def test_peer_text_in_errors_is_escaped_and_bounded() -> None:
    name = "x\nCRITICAL: forged" + "y" * 10_000
    with pytest.raises(SerializationError) as caught:
        decode_message([custom(name, NIL)], families={})
    message = str(caught.value)
    assert "\n" not in message
    assert "CRITICAL: forged" in message  # escaped, on one line
    assert len(message) < 600


def _python_nested(kind: str, levels: int) -> Any:
    value: Any = []
    for level in range(levels - 1):
        wrap = kind if kind != "mixed" else ("list", "dict", "tuple")[level % 3]
        value = [value] if wrap == "list" else {"k": value} if wrap == "dict" else (value,)
    return value


@pytest.mark.parametrize("kind", ["list", "dict", "tuple", "mixed"])
def test_the_encoder_refuses_what_a_peer_with_its_limit_would(kind: str) -> None:
    """A writer checks max_message_depth before sending: a message its peer (with the
    same setting) would refuse, dropping the connection, fails the write instead."""
    encoder = Encoders({}, None, 100).get(None, "raise")
    buffers, _ = encoder.encode(_python_nested(kind, 100))
    frames = split_message(b"".join(buffers), max_message_size=1 << 20)
    assert Decoder(max_depth=100).decode(frames) == _python_nested(kind, 100)
    with pytest.raises(SerializationError, match="more than 100 deep"):
        encoder.encode(_python_nested(kind, 101))
    with comm_core.configure(max_message_depth=10):
        shallow = Encoders({}, None, comm_core.get_setting("max_message_depth")).get(None, "raise")
    with pytest.raises(SerializationError, match="more than 10 deep"):
        shallow.encode(_python_nested(kind, 11))
