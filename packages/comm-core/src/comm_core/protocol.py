"""The comm wire protocol, shared by every stream transport (tcp, tls, unix, ...).

Byte-level specification, version 1
===================================

All integers are unsigned and **little-endian**.

Preamble
--------
Each side sends 8 bytes as soon as the connection is up, before anything else::

    offset  size  value
    0       5     magic  b"\\x8eCOMM"
    5       1     protocol version (1)
    6       2     reserved, zero

A receiver checks the peer's preamble before reading anything more, and drops
the connection if the magic, version or reserved bytes differ. So an HTTP
request, a TLS ClientHello or random bytes cost at most 8 bytes of memory.

Messages
--------
After the preamble the stream is a sequence of messages::

    u32          N, the number of frames (1 <= N <= 65536)
    N x u64      the length of each frame, in bytes
    frame 0      the message body, one msgpack object
    frame 1..N-1 out-of-band buffers, raw bytes

The receiver adds the lengths up and refuses a message above its
``max_message_size`` before allocating anything for it, and reserves memory
for a frame only as its bytes arrive. The first message of a connection, the
comm handshake, may be at most ``MAX_FIRST_MESSAGE`` (64 KiB) long, header
included, whatever ``max_message_size`` says: a peer that has not said who it
is cannot make the receiver reserve more.

Decoding a body is bounded too (see :class:`Decoder`): in nesting depth
(``max_message_depth``), in the memory it decodes to
(``max_message_expansion`` times its size) and in keys made to collide.

The body is msgpack (``bin`` for bytes, ``str`` for UTF-8 text, maps with any
key type). These msgpack extension types carry what msgpack lacks:

=====  ===============  ======================================================
code   name             ext data
=====  ===============  ======================================================
1      out-of-band      u32: index (1..N-1) of the frame holding the buffer
2      tuple            msgpack array of the items
3      custom           msgpack array ``[family, header, [frame indices]]``
4      unserializable   msgpack array ``[type name, repr, error]``
=====  ===============  ======================================================

What :meth:`Comm.read <comm_core.Comm.read>` returns
-----------------------------------------------------
* ``bytes``, ``bytearray`` and ``memoryview`` values shorter than
  ``oob_threshold`` (64 KiB) travel inside the body and are read as ``bytes``.
  Longer ones travel as their own frame, are sent without copying, received
  straight into a buffer of their own (which grows as the frame arrives, the
  first time a peer sends one that long), and are read as a writable
  ``memoryview`` over that buffer (``bytes(view)`` copies it).
* Tuples are read as tuples (also as dict keys), lists as lists, dicts as
  dicts with their keys' types kept; subclasses of builtin containers and
  scalars (``OrderedDict``, ``IntEnum``, named tuples) are read as the builtin
  type. ``None``, ``bool``, ``int`` (64-bit), ``float``, ``str`` and
  ``msgpack.Timestamp`` round-trip.
* Other types need a serializer family (see :func:`comm_core.serializer_families`).
  A family turns an object into a small msgpack-able header plus frames, and
  back. ``write(serializers=...)`` picks the families a write may use;
  ``read(deserializers=...)`` those a read accepts. The ``pickle`` family is
  never accepted unless the reader names it: an untrusted peer must not make
  us unpickle. With ``deserialize=False`` custom values arrive as
  :class:`Serialized` wrappers that can be written on unchanged.

Do not mutate a buffer passed to ``write()`` until that ``write()`` has
returned and the comm has been flushed (the next ``await``): it is sent
without a copy.
"""

from __future__ import annotations

import contextlib
import struct
import sys
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import msgpack

from comm_core import _bounds
from comm_core._bounds import NOT_HEADER as _NOT_HEADER
from comm_core._config import get_setting
from comm_core._record import Record
from comm_core._text import peer_text
from comm_core.exceptions import MessageTooLargeError, ProtocolError, SerializationError

__all__ = [
    "BUILTIN_FAMILIES",
    "BY_REFERENCE",
    "CONTROL_RELEASED",
    "CONTROL_SIZE",
    "MAGIC",
    "MAX_FIRST_MESSAGE",
    "MAX_FRAMES",
    "OOB_THRESHOLD",
    "PREAMBLE",
    "PREAMBLE_SIZE",
    "REFERENCE_SIZE",
    "WIRE_VERSION",
    "Decoder",
    "Encoder",
    "Encoders",
    "FrameDecoder",
    "FrameReferences",
    "SerializationFailure",
    "Serialized",
    "SerializerFamily",
    "check_preamble",
    "control_record",
    "decode_message",
    "encode_message",
    "pickle_family",
    "split_message",
]

MAGIC: Final = b"\x8eCOMM"
WIRE_VERSION: Final = 1
PREAMBLE: Final = MAGIC + bytes([WIRE_VERSION, 0, 0])
PREAMBLE_SIZE: Final = len(PREAMBLE)
#: Most frames one message may have.
MAX_FRAMES: Final = 65536
#: Largest first message (the comm handshake) stream comms accept, in bytes.
MAX_FIRST_MESSAGE: Final = 64 * 1024
#: Bytes-like values at least this long travel as their own frame.
OOB_THRESHOLD: Final = 64 * 1024
#: Set in a frame's length (bit 63): the frame travels by reference, its bytes elsewhere
#: (see :class:`FrameReferences`); :data:`REFERENCE_SIZE` bytes stand in for them.
BY_REFERENCE: Final = 1 << 63
#: Bytes on the stream of an out-of-band frame sent by reference.
REFERENCE_SIZE: Final = 16
#: Bytes of a control record: ``u32 0`` (no frames), ``u32 kind``, then a payload of
#: :data:`REFERENCE_SIZE` bytes. Never delivered as a message.
CONTROL_SIZE: Final = 8 + REFERENCE_SIZE
#: The control record a reader sends once a frame it received by reference is no longer
#: used; its payload is that frame's reference.
CONTROL_RELEASED: Final = 1
_CONTROL = struct.Struct("<II")


def _packer_buffer() -> dict[str, Any]:
    """A small initial buffer for each packer (every comm has one), where msgpack allows."""
    try:  # buf_size is msgpack 1.1's; the buffer grows when a message needs more
        msgpack.Packer(buf_size=_PACKER_BUFFER_SIZE)  # type: ignore[call-arg]
    except TypeError:
        return {}
    return {"buf_size": _PACKER_BUFFER_SIZE}


_PACKER_BUFFER_SIZE = 16 * 1024
_PACKER_BUFFER = _packer_buffer()

EXT_OOB: Final = 1
EXT_TUPLE: Final = 2
EXT_CUSTOM: Final = 3
EXT_UNSERIALIZABLE: Final = 4

_U32 = struct.Struct("<I")
_WALKED = frozenset({bytes, bytearray, memoryview, dict, list, tuple})  # types walk() inspects
_NO_DEPTH_LIMIT: Final = 1 << 62
_ONE_FRAME = struct.Struct("<IQ")
_BYTES_TYPES = (bytes, bytearray, memoryview)


def check_preamble(data: bytes | bytearray | memoryview, peer: str) -> None:
    """Raise :class:`ProtocolError` unless *data* is a valid comm preamble.

    The message names *peer* and guesses what the peer speaks instead.
    """
    head = bytes(data[:PREAMBLE_SIZE])
    if head == PREAMBLE:
        return
    if head[: len(MAGIC)] == MAGIC:
        raise ProtocolError(
            f"peer {peer} speaks comm wire protocol version {head[len(MAGIC)]} "
            f"(reserved bytes {head[6:8]!r}); this side speaks version {WIRE_VERSION}"
        )
    if head[:1] == b"\x16":
        guess = "a TLS handshake: is the peer using tls:// against a tcp:// endpoint?"
    elif head[:1] == b"\x15":
        guess = "a TLS alert: is the peer a tls:// endpoint? Dial it with tls://"
    elif head[:4] in {b"GET ", b"POST", b"HEAD", b"PUT ", b"HTTP", b"OPTI", b"DELE", b"CONN"}:
        guess = "HTTP"
    elif head[:4] == b"SSH-":
        guess = "SSH"
    else:
        guess = "something else"
    raise ProtocolError(
        f"peer {peer} is not a comm endpoint: it sent {head!r} instead of the comm "
        f"preamble {PREAMBLE!r}; it looks like {guess}"
    )


# -- serializer families -------------------------------------------------------------


class SerializerFamily(Record):
    """A named way to turn objects of some types into a header and frames, and back.

    Args:
        name: unique name, sent on the wire.
        serialize: ``obj -> (header, frames)`` where *header* is msgpack-able and
            *frames* a list of bytes-like objects; raise :class:`TypeError` for
            objects the family does not handle.
        deserialize: ``(header, frames) -> obj``.
        trusted_by_default: accepted on read when the reader does not name
            the families it accepts. Must be false for families that can
            run code (pickle).

    Immutable, and compared by value.
    """

    __slots__ = ("name", "serialize", "deserialize", "trusted_by_default")  # noqa: RUF023 (field order)

    name: str
    serialize: Callable[[Any], tuple[Any, list[Any]]]
    deserialize: Callable[[Any, list[memoryview]], Any]
    trusted_by_default: bool

    def __init__(
        self,
        name: str,
        serialize: Callable[[Any], tuple[Any, list[Any]]],
        deserialize: Callable[[Any, list[memoryview]], Any],
        trusted_by_default: bool = True,
    ) -> None:
        self._assign(
            name=name,
            serialize=serialize,
            deserialize=deserialize,
            trusted_by_default=trusted_by_default,
        )


# pickle is imported on first use: most processes never pickle, and it costs
# milliseconds of every interpreter's start.
def _pickle_dumps(obj: Any) -> tuple[Any, list[Any]]:
    import pickle

    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return None, [data, *(buf.raw() for buf in buffers)]


def _pickle_loads(header: Any, frames: list[memoryview]) -> Any:
    import pickle

    return pickle.loads(frames[0], buffers=frames[1:])


#: Pickle (protocol 5, out-of-band buffers). Never accepted on read unless named.
pickle_family: Final = SerializerFamily(
    "pickle", _pickle_dumps, _pickle_loads, trusted_by_default=False
)


#: The families the wire protocol itself provides (``pickle``): what an :class:`Encoder`
#: or :class:`Decoder` knows unless handed more. The registry hands comms every family
#: plugins register too (:func:`comm_core.serializer_families`); this module never asks.
BUILTIN_FAMILIES: Final[Mapping[str, SerializerFamily]] = MappingProxyType(
    {pickle_family.name: pickle_family}
)


class Serialized(Record):
    """A custom value kept serialized, as read with ``deserialize=False``.

    Writing it to another comm sends the same family, header and frames, so a
    relay can forward values it cannot (or must not) deserialize. Immutable,
    and compared by value.
    """

    __slots__ = ("family", "header", "frames")  # noqa: RUF023 (field order)

    family: str
    header: Any
    frames: tuple[Any, ...]

    def __init__(self, family: str, header: Any, frames: tuple[Any, ...]) -> None:
        self._assign(family=family, header=header, frames=frames)


class SerializationFailure(Record):
    """Stands in for a value that could not be serialized, with ``on_error="message"``.

    Immutable, and compared by value.
    """

    __slots__ = ("type_name", "text", "error")  # noqa: RUF023 (field order)

    type_name: str
    text: str
    error: str

    def __init__(self, type_name: str, text: str, error: str) -> None:
        self._assign(type_name=type_name, text=text, error=error)


# -- encoding ---------------------------------------------------------------------------


class Encoder:
    """Encodes messages into wire buffers; reusable, so a comm keeps one.

    Not thread-safe and not reentrant: one message at a time.

    Args:
        families: the serializer families values of other types may use.
        on_error: ``"raise"`` or ``"message"`` (see :meth:`Comm.write
            <comm_core.Comm.write>`).
        max_size: refuse messages larger than this, before sending anything.
        threshold: bytes-like values at least this long travel out of band.
        max_depth: refuse messages whose dicts, lists and tuples nest deeper than
            this, before sending anything (``max_message_depth``: a peer with the
            same setting would refuse them, and drop the connection).
    """

    __slots__ = (
        "__weakref__",
        "_packer",
        "families",
        "frames",
        "max_depth",
        "max_size",
        "on_error",
        "threshold",
    )

    def __init__(
        self,
        families: Sequence[SerializerFamily] = (),
        on_error: str = "raise",
        *,
        max_size: int | None = None,
        threshold: int = OOB_THRESHOLD,
        max_depth: int | None = None,
    ) -> None:
        self.families = families
        self.on_error = on_error
        self.max_size = max_size
        self.threshold = threshold
        self.max_depth = _NO_DEPTH_LIMIT if max_depth is None else max_depth
        self.frames: list[Any] = []
        self._packer = self._new_packer()

    def _new_packer(self) -> msgpack.Packer:
        # The packer's hook must not hold the encoder: an encoder and its packer in a
        # reference cycle would wait for the garbage collector, every comm's with them.
        ref = weakref.ref(self)

        def default(obj: Any) -> Any:
            encoder = ref()
            assert encoder is not None  # it is packing
            return encoder.default(obj)

        return msgpack.Packer(
            default=default, use_bin_type=True, strict_types=True, **_PACKER_BUFFER
        )

    def encode(self, msg: Any) -> tuple[list[Any], int]:
        """Return the buffers of one wire message holding *msg*, and their total size.

        The first buffer holds the frame header and the body; each further
        buffer is one out-of-band frame, the caller's own object (not copied).

        Raises:
            SerializationError: a value cannot be serialized (with ``on_error="raise"``),
                or dicts, lists and tuples nest deeper than ``max_depth``.
            MessageTooLargeError: the message exceeds ``max_size``.
        """
        frames = self.frames = []
        try:
            body: bytes = self._packer.pack(self.walk(msg))
        except BaseException as exc:
            self._packer = self._new_packer()  # its buffer may hold half a message
            if isinstance(exc, (TypeError, ValueError, OverflowError)):
                raise SerializationError(f"cannot serialize message: {exc}") from exc
            if isinstance(exc, RecursionError):
                raise SerializationError(
                    "cannot serialize message: it nests lists, dicts or tuples too deeply "
                    "(a peer refuses more than its max_message_depth levels)"
                ) from exc
            raise
        max_size = self.max_size
        if not frames:
            size = len(body)
            if max_size is not None and size > max_size:
                _too_large(size, max_size)
            return [_ONE_FRAME.pack(1, size) + body], size + _ONE_FRAME.size
        if len(frames) >= MAX_FRAMES:
            raise SerializationError(
                f"message has {len(frames) + 1} frames, more than the protocol's {MAX_FRAMES}"
            )
        lengths = [len(body), *(_nbytes(f) for f in frames)]
        size = sum(lengths)
        if max_size is not None and size > max_size:
            _too_large(size, max_size)
        header = struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)
        return [header + body, *frames], size + len(header)

    def oob(self, value: Any) -> msgpack.ExtType:
        if type(value) is memoryview and (
            value.ndim != 1 or value.format != "B" or not value.c_contiguous
        ):
            # Frames are plain bytes: cast shaped views, copy strided ones.
            value = value.cast("B") if value.c_contiguous else value.tobytes()
        self.frames.append(value)
        return msgpack.ExtType(EXT_OOB, _U32.pack(len(self.frames)))

    def walk(self, obj: Any, depth: int = 1) -> Any:
        """Replace long bytes-like values in containers by out-of-band references.

        Containers are copied only where something inside them was replaced.
        *depth* is the nesting level of *obj* (1: the message itself).

        Raises:
            SerializationError: containers nest deeper than ``max_depth``.
        """
        kind = type(obj)
        if kind is dict:
            if depth > self.max_depth:
                raise self._too_deep()
            out: Any = None
            threshold = self.threshold
            for key, value in obj.items():
                vtype = type(value)
                if vtype is bytes and len(value) < threshold:
                    continue  # the common case, without a call
                if vtype in _WALKED:
                    new = self.walk(value, depth + 1)
                    if new is not value:
                        if out is None:
                            out = dict(obj)
                        out[key] = new
            return obj if out is None else out
        if kind is list or kind is tuple:
            if depth > self.max_depth:
                raise self._too_deep()
            out = None
            for index, value in enumerate(obj):
                if type(value) in _WALKED:
                    new = self.walk(value, depth + 1)
                    if new is not value:
                        if out is None:
                            out = list(obj)
                        out[index] = new
            if out is None:
                return obj
            return out if kind is list else tuple(out)
        if kind in _BYTES_TYPES and _nbytes(obj) >= self.threshold:
            return self.oob(obj)
        return obj

    def _too_deep(self) -> SerializationError:
        return SerializationError(
            f"cannot serialize message: it nests lists, dicts or tuples more than "
            f"{self.max_depth} deep (max_message_depth): a peer with that setting would "
            "refuse it and drop the connection"
        )

    def default(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.pack(list(obj)))
        if kind is msgpack.ExtType:
            return obj
        if kind is Serialized:
            return self._custom(obj.family, obj.header, obj.frames)
        if kind is SerializationFailure:
            return msgpack.ExtType(
                EXT_UNSERIALIZABLE, self.pack([obj.type_name, obj.text, obj.error])
            )
        # Subclasses of builtins travel as the builtin.
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return float(obj)
        if isinstance(obj, str):
            return str(obj)
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, tuple):
            return msgpack.ExtType(EXT_TUPLE, self.pack(list(obj)))
        if isinstance(obj, list):
            return list(obj)
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return self.oob(obj) if _nbytes(obj) >= self.threshold else bytes(obj)
        errors = []
        for family in self.families:
            try:
                header, frames = family.serialize(obj)
            except TypeError as exc:
                errors.append(f"{family.name}: {exc}")
                continue
            except Exception as exc:
                errors.append(f"{family.name}: {type(exc).__name__}: {exc}")
                continue
            return self._custom(family.name, header, frames)
        reason = "; ".join(errors) if errors else "no serializer family was allowed"
        if self.on_error == "message":
            return self.default(
                SerializationFailure(type(obj).__qualname__, _safe_repr(obj), reason)
            )
        raise SerializationError(
            f"cannot serialize {type(obj).__qualname__} value {_safe_repr(obj)}: {reason}"
        )

    def _custom(self, family: str, header: Any, frames: Sequence[Any]) -> msgpack.ExtType:
        first = len(self.frames) + 1
        self.frames.extend(frames)
        indices = list(range(first, first + len(frames)))
        return msgpack.ExtType(EXT_CUSTOM, self.pack([family, header, indices]))

    def pack(self, obj: Any) -> bytes:
        """Pack a nested value (a tuple's items, a custom header) with a fresh packer."""
        return msgpack.packb(
            self.walk(obj), default=self.default, use_bin_type=True, strict_types=True
        )


def _unpack_flat(data: bytes) -> Any:
    """The msgpack value in *data*, extension values in it left as ``msgpack.ExtType``."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _all_str(values: list[Any]) -> bool:
    return all(type(value) is str for value in values)


class Encoders:
    """The encoders of one comm, by the serializer families a write allows.

    Writes with the default families (those trusted by default) and
    ``on_error="raise"``, nearly all of them, share one encoder, made on first
    use; other writes get one of their own. Family selection is done here for
    every comm (:class:`~comm_core.stream.StreamComm`,
    :class:`~comm_core.message.MessageComm`).

    Args:
        families: the families known, by name (a comm's
            :attr:`Options.families <comm_core.Options>`, or the registry's).
        max_size: messages above this size are refused (``max_message_size``).
        max_depth: messages that nest deeper are refused (``max_message_depth``).
    """

    __slots__ = ("_default", "families", "max_depth", "max_size")

    def __init__(
        self,
        families: Mapping[str, SerializerFamily],
        max_size: int | None,
        max_depth: int | None = None,
    ) -> None:
        self.families = families
        self.max_size = max_size
        self.max_depth = max_depth
        self._default: Encoder | None = None

    def set_max_size(self, max_size: int | None) -> None:
        """Refuse messages above *max_size* from now on."""
        self.max_size = max_size
        if self._default is not None:
            self._default.max_size = max_size

    def get(self, serializers: Collection[str] | None, on_error: str) -> Encoder:
        """The encoder for a write allowing *serializers* (``None``: the default ones)."""
        if serializers is None and on_error == "raise":
            encoder = self._default
            if encoder is None:
                trusted = [f for f in self.families.values() if f.trusted_by_default]
                encoder = self._default = Encoder(
                    trusted, max_size=self.max_size, max_depth=self.max_depth
                )
            return encoder
        known = self.families
        if serializers is None:
            families = [f for f in known.values() if f.trusted_by_default]
        else:
            families = [known[name] for name in serializers if name in known]
        return Encoder(families, on_error, max_size=self.max_size, max_depth=self.max_depth)


def _safe_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<repr failed: {type(exc).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def _nbytes(buf: Any) -> int:
    return buf.nbytes if type(buf) is memoryview else len(buf)


def encode_message(
    msg: Any,
    *,
    families: Sequence[SerializerFamily] = (),
    on_error: str = "raise",
    max_size: int | None = None,
    threshold: int = OOB_THRESHOLD,
) -> tuple[list[Any], int]:
    """Encode *msg* into the buffers of one wire message, and their total size.

    A one-off :class:`Encoder`; see :meth:`Encoder.encode`.
    """
    return Encoder(families, on_error, max_size=max_size, threshold=threshold).encode(msg)


def _too_large(size: int, limit: int) -> None:
    raise MessageTooLargeError(
        f"message of {size} bytes exceeds max_message_size of {limit} bytes",
        size=size,
        limit=limit,
    )


# -- decoding ---------------------------------------------------------------------------

#: Most extension values (tuples, custom values) of one hash value a message may hold.
#: More would let a peer make map keys collide, and a dict's cost quadratic.
MAX_EQUAL_HASHES: Final = 8
# With at most this many extension values, a message cannot make keys collide much.
_FEW_EXTS = 64
# Extension contents up to this long need no check when their holder needed none: they
# nest at most max_message_depth deep in one another, so they hold little memory.
_SHORT = 512
# Extension values nested at most this deep are decoded with msgpack.unpackb, whose
# decoding context (about 40 KiB) is on the C stack; deeper ones in Python.
_ON_STACK = 4
_UNLIMITED = -1  # an allowance of depth that needs no more checks
_NONE: Final = object()


class Decoder:
    """Decodes messages from their frames; reusable, so a comm keeps one.

    Not thread-safe and not reentrant: one message at a time. Every body is
    hostile: decoding refuses, with :class:`ProtocolError`, a body nested more
    than *max_depth* deep or that would decode to more memory than
    *max_expansion* times its size (see the protocol's docs), and its time is
    linear in the body's size.

    Args:
        families: serializer families by name, as the caller was handed them
            (a comm: from its :class:`~comm_core.Options`; the registry's are
            :func:`comm_core.serializer_families`); default:
            :data:`BUILTIN_FAMILIES`.
        deserialize: turn custom values into objects; if false, they are
            returned as :class:`Serialized` wrappers.
        max_depth: deepest nesting of containers a message may have; default:
            the ``max_message_depth`` setting.
        max_expansion: most memory a body may decode to, as a multiple of its
            size, beyond its first MiB; default: the ``max_message_expansion``
            setting.
    """

    __slots__ = (
        "__weakref__",
        "_budget",
        "_exts",
        "_hashes",
        "_held",
        "_levels",
        "_nesting",
        "_seen",
        "_shallow",
        "accept",
        "deserialize",
        "families",
        "frames",
        "max_depth",
        "max_expansion",
    )

    def __init__(
        self,
        families: Mapping[str, SerializerFamily] | None = None,
        *,
        deserialize: bool = True,
        max_depth: int | None = None,
        max_expansion: float | None = None,
    ) -> None:
        self.families = BUILTIN_FAMILIES if families is None else families
        self.deserialize = deserialize
        self.frames: Sequence[Any] = ()
        self.accept: Collection[str] | None = None
        self.max_depth = int(get_setting("max_message_depth") if max_depth is None else max_depth)
        self.max_expansion = float(
            get_setting("max_message_expansion") if max_expansion is None else max_expansion
        )
        # One [data, allowance, allowance of its extension values or None] per value
        # being decoded: the body, then each extension value's contents within it.
        self._levels: list[Any] = []
        self._budget = 0  # memory the body may decode to (estimated)
        self._held = 0  # bytes of the extension contents being decoded, one in another
        self._exts = 0  # extension values decoded in this message
        self._nesting = 0  # extension values being decoded, one in another
        self._shallow = False  # whether in one that needs no more checks
        # Once there are too many extension values to let them collide: the first of
        # each hash, and the others of each hash that is not unique.
        self._seen: dict[int, Any] = {}
        self._hashes: dict[int, list[Any]] = {}

    def decode(self, frames: Sequence[Any], accept: Collection[str] | None = None) -> Any:
        """Decode the message made of *frames* (body first, then out-of-band frames).

        Args:
            accept: the serializer families accepted for custom values; ``None``
                accepts those trusted by default (never pickle).

        Raises:
            ProtocolError: the body is not valid msgpack, references are broken,
                or it nests too deeply, holds too many colliding keys or would
                decode to too much memory.
            SerializationError: a custom value's family is unknown or not accepted.
        """
        self.frames = frames
        self.accept = accept
        body = frames[0]
        try:
            if type(body) is bytes and len(body) <= self.max_depth:
                # Each level of nesting takes a byte at least: nothing to check.
                self._shallow = True
                return msgpack.unpackb(
                    body, ext_hook=self.ext_hook, raw=False, strict_map_key=False
                )
            return self._decode_body(body)
        except (ProtocolError, SerializationError):
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolError(
                f"malformed message body: {type(exc).__name__}: {peer_text(str(exc))}"
            ) from exc
        except RecursionError as exc:
            raise ProtocolError("malformed message body: nested too deeply") from exc
        finally:
            # _held and _nesting are restored where they change.
            self.frames = ()
            self._shallow = False
            self._levels.clear()
            if self._exts:
                if self._exts > _FEW_EXTS:
                    self._seen = {}
                    self._hashes = {}
                self._exts = 0

    def _decode_body(self, body: Any) -> Any:
        size = len(body) if type(body) is bytes else memoryview(body).nbytes
        limit = self.max_depth
        levels = self._levels
        if size <= limit:  # as in decode()
            self._shallow = True
            return msgpack.unpackb(body, ext_hook=self.ext_hook, raw=False, strict_map_key=False)
        inner: int | None = _UNLIMITED
        if size < _SHORT and type(body) is bytes:
            # A short body cannot decode to more than the first MiB of its budget: only
            # its depth may need a look.
            self._budget = _bounds.FREE_BYTES
            headers = body.translate(None, _NOT_HEADER)
            if len(headers) > limit:
                if not _bounds.within_depth(body, limit):
                    raise self._too_deep()
                inner = None  # found when an extension value needs it
            levels.append([body, limit, inner])
            return msgpack.unpackb(body, ext_hook=self.ext_hook, raw=False, strict_map_key=False)
        budget = self._budget = _bounds.FREE_BYTES + int(self.max_expansion * size)
        # A body with few items for its size (most of it strings or binaries) is walked
        # in Python, which measures it exactly; the walk gives up on one with many.
        shape = _bounds.scan(body, limit, size >> 8, budget)
        if shape is None:
            # Many items: bound the depth and the containers by the bytes that may
            # begin one (a pass of C over the body).
            headers = _bounds.header_bytes(body)
            maps = _bounds.count_maps(headers)
            if _bounds.estimate(size, maps, len(headers) - maps) > budget:
                # Perhaps too many containers: measure them all, building nothing.
                shape = _bounds.scan(body, limit, 1 << 62, budget)
            elif len(headers) <= limit:
                if size > _SHORT and _bounds.has_long_arrays(headers):
                    _bounds.validate(body)
            elif not _bounds.within_depth(body, limit):
                raise self._too_deep()
            else:
                inner = None  # found when an extension value needs it
        if shape is not None:
            depth, cost = shape
            if depth > limit:
                raise self._too_deep()
            if cost > budget:
                raise ProtocolError(
                    f"message body of {size} bytes would decode to more than {budget} "
                    f"bytes (estimated): more than max_message_expansion="
                    f"{self.max_expansion:g} times its size, beyond its first MiB"
                )
        levels.append([body, limit, inner])
        return msgpack.unpackb(body, ext_hook=self.ext_hook, raw=False, strict_map_key=False)

    def frame(self, index: int) -> Any:
        if not 1 <= index < len(self.frames):
            raise ProtocolError(
                f"message refers to out-of-band frame {index}, "
                f"but has frames 1..{len(self.frames) - 1}"
            )
        return self.frames[index]

    def ext_hook(self, code: int, data: bytes) -> Any:
        value: Any
        if code == EXT_TUPLE:
            items = self.unpack(data)
            if type(items) is not list:
                raise ProtocolError("tuple extension does not hold an array")
            value = tuple(items)
        elif code == EXT_OOB:
            if len(data) != 4:
                raise ProtocolError(f"out-of-band reference of {len(data)} bytes, expected 4")
            return self.frame(_U32.unpack(data)[0])
        elif code == EXT_CUSTOM:
            value = self.custom(self.unpack(data))
        elif code == EXT_UNSERIALIZABLE:
            # Three strings: extension values in it stay undecoded (and are refused).
            fields = _unpack_flat(data)
            # Strings only: str() of a nested SerializationFailure quotes it, and its
            # text would double at each level.
            if not (type(fields) is list and len(fields) == 3 and _all_str(fields)):
                raise ProtocolError("unserializable extension does not hold 3 strings")
            value = SerializationFailure(*fields)
        else:
            raise ProtocolError(f"unknown msgpack extension type {code}")
        self._exts += 1
        if self._exts > _FEW_EXTS:
            self._check_hash(value)
        return value

    def _check_hash(self, value: Any) -> None:
        """Refuse the message if *value* makes too many distinct extension values of one hash.

        Map keys of one hash cost a dict time quadratic in their number. Hashes
        of str and bytes are randomized, but a tuple's of numbers is not. Equal
        values may repeat at will: as keys, they do not collide.
        """
        try:
            key = hash(value)
        except Exception:
            return  # unhashable: never a key
        seen = self._seen
        first = seen.get(key, _NONE)
        if first is _NONE:
            seen[key] = value
            return
        try:
            if first == value:
                return
            others = self._hashes.setdefault(key, [])
            if value in others:
                return
        except Exception:
            return  # a value that cannot be compared is no key either
        if len(others) + 1 >= MAX_EQUAL_HASHES:
            raise ProtocolError(
                f"message holds more than {MAX_EQUAL_HASHES} different tuples or custom "
                "values of one hash (keys made to collide?)"
            )
        others.append(value)

    def custom(self, fields: Any) -> Any:
        if not (
            isinstance(fields, list)
            and len(fields) == 3
            and isinstance(fields[0], str)
            and isinstance(fields[2], list)
        ):
            raise ProtocolError("custom-type extension is malformed")
        name, header, indices = fields
        frames = [self.frame(i) for i in indices if isinstance(i, int)]
        if len(frames) != len(indices):
            raise ProtocolError("custom-type extension has non-integer frame indices")
        if not self.deserialize:
            return Serialized(name, header, tuple(frames))
        families = self.families
        family = families.get(name)
        if family is None:
            raise SerializationError(
                f"peer sent a value of serializer family {peer_text(name)}, which is not "
                f"installed here (known: {', '.join(sorted(families)) or 'none'})"
            )
        allowed = family.trusted_by_default if self.accept is None else name in self.accept
        if not allowed:
            raise SerializationError(
                f"refused to deserialize a {name!r} value from the peer: pass "
                f"deserializers=[..., {name!r}] to read() to accept it"
                + (" (only from peers you trust: it can run code)" if name == "pickle" else "")
            )
        try:
            return family.deserialize(header, frames)
        except Exception as exc:
            raise SerializationError(
                f"serializer family {name!r} failed to deserialize a value: "
                f"{peer_text(f'{type(exc).__name__}: {exc}', bare=True)}"
            ) from exc

    def unpack(self, data: bytes) -> Any:
        """Decode the msgpack value inside an extension value, within the body's bounds.

        Its depth counts from the deepest level of the value that holds it
        (where the extension is is not known here): it may nest as deep as what
        that value leaves of the allowance.
        """
        size = len(data)
        if size <= _SHORT:
            if self._shallow:
                return self._nested(data, size)
            allowance = self._levels[-1][2]
            if allowance is not None and (allowance < 0 or size <= allowance):
                # The common case: a short value with depth to spare, and so are all
                # the values in it. They nest at most max_depth deep in one another,
                # so they hold little memory.
                self._shallow = True
                try:
                    return self._nested(data, size)
                finally:
                    self._shallow = False  # never set around the slow path below
        levels = self._levels
        level = levels[-1]
        allowance = level[2]
        if allowance is None:  # the first extension value in a deep one: measure it
            depth = _bounds.container_depth(level[0], level[1])
            if depth is None:  # checked before decoding it
                raise self._too_deep()
            allowance = level[2] = level[1] - depth
        # msgpack hands each extension's contents over as a copy, and a decoder in
        # Python copies them again: twice their size, for every one that holds the
        # next, at once. They may take half of what the body may decode to.
        held = self._held + 2 * size
        if 2 * held > self._budget:
            raise ProtocolError(
                f"message nests extension values in one another that hold {held} bytes at "
                f"once while decoded, more than half the {self._budget} bytes the message "
                "may decode to (max_message_expansion)"
            )
        inner: int | None = _UNLIMITED
        if allowance < 0 or size <= allowance:
            if size > _SHORT and _bounds.has_long_arrays(_bounds.header_bytes(data)):
                _bounds.validate(data)
        else:
            headers = _bounds.header_bytes(data)
            if len(headers) <= allowance:
                if size > _SHORT and _bounds.has_long_arrays(headers):
                    _bounds.validate(data)
            elif not _bounds.within_depth(data, allowance):
                raise self._too_deep()
            else:
                inner = None
        levels.append([data, allowance, inner])
        self._held = held
        try:
            return self._nested(data, size)
        finally:
            levels.pop()
            self._held -= 2 * size

    def _nested(self, data: bytes, size: int) -> Any:
        """Decode *data*, an extension value's contents, once their bounds are checked."""
        nesting = self._nesting
        self._nesting = nesting + 1
        try:
            if nesting < _ON_STACK:
                return msgpack.unpackb(
                    data, ext_hook=self.ext_hook, raw=False, strict_map_key=False
                )
            # Deeper, msgpack's decoder in Python: msgpack.unpackb's decoding context
            # (about 40 KiB) is on the C stack, which a few hundred of them would
            # exhaust, and one on the heap (msgpack.Unpacker) costs as much memory.
            from msgpack import fallback

            return fallback.unpackb(data, ext_hook=self.ext_hook, raw=False, strict_map_key=False)
        finally:
            self._nesting = nesting

    def _too_deep(self) -> ProtocolError:
        return ProtocolError(
            f"message nests lists, dicts or tuples more than {self.max_depth} deep "
            "(max_message_depth)"
        )


def decode_message(
    frames: Sequence[Any],
    *,
    families: Mapping[str, SerializerFamily] | None = None,
    accept: Collection[str] | None = None,
    deserialize: bool = True,
) -> Any:
    """Decode a message from its frames: a one-off :class:`Decoder`; see :meth:`Decoder.decode`."""
    return Decoder(families, deserialize=deserialize).decode(frames, accept)


# -- whole messages -------------------------------------------------------------------------


def split_message(
    data: Any,
    *,
    max_message_size: int,
    first_message_limit: int | None = None,
    peer: str = "peer",
) -> list[Any]:
    """Cut one whole wire message (a frame header, then its frames) into its frames.

    For transports that deliver messages whole (see :mod:`comm_core.message`).
    The body comes back as ``bytes`` and the out-of-band frames as
    ``memoryview`` slices of *data*, not copied (writable if *data* is).

    Args:
        data: the message, a bytes-like object.
        max_message_size: refuse a message whose frames hold more bytes.
        first_message_limit: for the first message of a connection: refuse one
            longer than this, header included (see :data:`MAX_FIRST_MESSAGE`).
        peer: named in error messages.

    Raises:
        MessageTooLargeError: the frames exceed *max_message_size*, or the
            whole message *first_message_limit*.
        ProtocolError: the header is malformed or its lengths do not add up to
            the message.
    """
    view = memoryview(data).cast("B") if type(data) is not bytes else memoryview(data)
    size = view.nbytes
    if first_message_limit is not None and size > first_message_limit:
        raise MessageTooLargeError(
            f"peer {peer} sent a first message of {size} bytes, more than the limit of a "
            f"first message (the comm handshake) of {first_message_limit} bytes",
            size=size,
            limit=first_message_limit,
        )
    if size < 4:
        raise ProtocolError(f"peer {peer} sent a message of {size} bytes, too short for a header")
    (count,) = _U32.unpack_from(view)
    if not 1 <= count <= MAX_FRAMES:
        raise ProtocolError(
            f"peer {peer} sent a message header with {count} frames; "
            f"the protocol allows 1 to {MAX_FRAMES}"
        )
    start = 4 + 8 * count
    if size < start:
        raise ProtocolError(
            f"peer {peer} sent a message of {size} bytes, shorter than its header of {count} "
            "frame lengths"
        )
    lengths = struct.unpack_from(f"<{count}Q", view, 4)
    total = sum(lengths)
    if total > max_message_size:
        raise MessageTooLargeError(
            f"peer {peer} sent a message of {total} bytes, more than max_message_size of "
            f"{max_message_size} bytes",
            size=total,
            limit=max_message_size,
        )
    if start + total != size:
        raise ProtocolError(
            f"peer {peer} sent a message of {size} bytes whose header announces {start + total}"
        )
    frames: list[Any] = [view[start : start + lengths[0]].tobytes()]
    position = start + lengths[0]
    for length in lengths[1:]:
        frames.append(view[position : position + length])
        position += length
    return frames


# -- frames by reference (a transport's shared memory) ------------------------------------


def control_record(kind: int, payload: bytes) -> bytes:
    """A control record of *kind* with *payload* (:data:`REFERENCE_SIZE` bytes).

    Raises:
        ValueError: *kind* is 0 or does not fit in 32 bits, or *payload* has the
            wrong length.
    """
    if not 0 < kind < 1 << 32 or len(payload) != REFERENCE_SIZE:
        raise ValueError(f"not a control record: kind {kind}, {len(payload)} payload bytes")
    return _CONTROL.pack(0, kind) + payload


class FrameReferences:
    """What a transport supplies to send large out-of-band frames by reference.

    A transport that can share memory with its peer (comm-unix's arena, over
    one Unix socket) puts a frame's bytes there and sends a reference of
    :data:`REFERENCE_SIZE` bytes in their place; the peer's decoder hands the
    reference back to its own :class:`FrameReferences`, which returns the
    frame. The message's structure (header and body) always travels on the
    stream and is decoded with every bound of a stream message. Both ends
    must have agreed (in their comm handshake, say) before one sends a
    reference: a decoder without references refuses a frame length with
    :data:`BY_REFERENCE` set (it is above any ``max_message_size``) and a
    control record (a message header of 0 frames).

    Set an instance as :attr:`FrameDecoder.references` (the reading side) and
    as :attr:`comm_core.stream.StreamProtocol.references` (the writing side).
    The base class sends nothing by reference and accepts no reference.
    """

    #: Out-of-band frames at least this long are offered to :meth:`place`.
    threshold: int = 1 << 62

    @property
    def writing(self) -> bool:
        """Whether the peer accepts references now (:meth:`place` is then called)."""
        return False

    async def place(self, frame: memoryview) -> bytes | None:
        """Put *frame* (a flat byte view) where the peer can read it; its reference.

        May wait (for room the peer frees). ``None``: the frame goes on the
        stream as usual.

        Raises:
            CommClosedError: the connection ended while waiting.
        """
        return None

    def resolve(self, reference: bytes, length: int) -> Any:
        """The frame of *length* bytes that *reference* (from the peer) names.

        Raises:
            ProtocolError: the reference is not valid (the decoder's caller
                drops the connection).
        """
        raise ProtocolError(f"a frame of {length} bytes by reference, which is not accepted")

    def control(self, kind: int, payload: bytes) -> None:
        """A control record from the peer (:data:`CONTROL_RELEASED`, or the transport's own
        kinds).

        Raises:
            ProtocolError: the record is not valid here.
        """
        raise ProtocolError(f"a control record of kind {kind}, which is not accepted")


# -- incremental frame decoding -----------------------------------------------------------

_DIRECT = 64 * 1024  # frames at least this long are received into their own buffer
_MAX_READ = 1 << 30  # never ask the OS (or OpenSSL) for more than this in one call
_MAX_BUFFER = 256 * 1024  # the receive buffer for small frames grows up to this
_MAPPED_FROM = 1 << 20  # frames at least this long are received into mapped memory
_HUGE_PAGES_FROM = 4 * 1024 * 1024  # buffers at least this long are backed by huge pages
#: A large frame's buffer starts at most this long (or as long as what has arrived of the
#: frame), unless the peer sent a frame at least as long before; then it grows by
#: _GROWTH each time it is full, so that what a peer's header makes us reserve stays
#: within a small multiple of what it has sent.
_FIRST_CAPACITY = 32 * 1024
_GROWTH = 4
#: The header of a message with one frame.
_ONE_HEADER = _ONE_FRAME.size


def _allocate(size: int, mapped: bool) -> bytearray | Any:
    """A zeroed buffer of *size* bytes: an anonymous private mapping if *mapped* (and the
    platform has one that can grow in place), else a :class:`bytearray`."""
    if mapped and sys.platform != "win32":
        import mmap

        # Zero pages, touched once by recv. Private: a shared mapping (mmap's default)
        # would be shared with forked children, and is slower to fault in (shmem).
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        _advise_huge_pages(buffer)
        return buffer
    return bytearray(size)


def _advise_huge_pages(buffer: Any) -> None:
    if len(buffer) >= _HUGE_PAGES_FROM:
        import mmap

        # Transparent huge pages (where the OS has them, on request): filling a fresh
        # buffer then costs one page fault per 2 MiB instead of per 4 KiB, which
        # doubles the speed of receiving a large frame.
        with contextlib.suppress(AttributeError, OSError):
            buffer.madvise(mmap.MADV_HUGEPAGE)


def _discard(frames: list[Any]) -> None:
    pass


class FrameDecoder:
    """Turns a byte stream into messages' frames, receiving large frames in place.

    Drive it like an :class:`asyncio.BufferedProtocol`: write into the buffer
    :meth:`get_buffer` returns, then call :meth:`buffer_updated`; each complete
    message is passed, as a list of frames, to *on_message*. :meth:`feed` does
    both for a chunk of bytes.

    Frames of 64 KiB or more are received into a buffer of their own, which
    becomes the frame (a writable ``memoryview``), so they are never copied
    once received. What a header makes the decoder reserve grows with what
    arrives, not with what the header announces: a frame longer than any the
    peer sent before on this connection starts in a buffer of 64 KiB (or of
    what has arrived of it), which grows fourfold each time it is full (on
    Linux by remapping, without a copy); frames no longer than one the peer
    sent before get a buffer of their full size at once. The receive buffer
    of smaller frames and headers likewise grows only when received bytes
    fill it. So the memory a connection holds is at most a few times what
    its peer has sent.

    Args:
        on_message: called with the frames of each complete message; during the
            call, :attr:`message_size` holds the message's size in bytes. It may
            call :meth:`pause` to receive no further message for now.
        max_message_size: larger messages raise :class:`MessageTooLargeError`
            from the header, before anything is allocated for them (the size of
            a message is the sum of its frames' lengths).
        peer: named in error messages.
        expect_preamble: check the peer's preamble first.
        first_message_limit: a limit for the first message only (the comm
            handshake), such as :data:`MAX_FIRST_MESSAGE`, on all its bytes,
            the header included: a header whose frame count alone could take
            the message past it is refused at once. ``None``: none.

    Errors raised from :meth:`buffer_updated` (and :meth:`resume`) leave the
    decoder unusable: the caller closes the connection.
    """

    def __init__(
        self,
        on_message: Callable[[list[Any]], None],
        *,
        max_message_size: int,
        peer: str = "peer",
        expect_preamble: bool = True,
        buffer_size: int = 16 * 1024,
        first_message_limit: int | None = None,
    ) -> None:
        self.on_message = on_message
        #: Size in bytes of the message being delivered to *on_message*.
        self.message_size = 0
        self._deliver = on_message
        self._first_limit = first_message_limit
        self._max_size = max_message_size
        # The largest body a one-frame message may have on the fast path of _parse.
        self._fast_max = max_message_size
        if first_message_limit is not None:
            # Until the first message is delivered: its own limit, header included, and
            # a hook that lifts it (so the check of every later message costs nothing more).
            self._fast_max = min(max_message_size, first_message_limit - _ONE_HEADER)
            self.on_message = self._first_message
        self.peer = peer
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._need_preamble = expect_preamble
        self._lengths: list[int] | None = None  # of the message being received
        self._frames: list[Any] = []
        # The large frame being received in place: a view of its buffer (as much as is
        # reserved so far), the buffer, the frame's length and how much has arrived.
        self._direct: memoryview | None = None
        self._backing: Any = None
        self._direct_size = 0
        self._filled = 0
        # The longest large frame received so far: one no longer gets its buffer whole.
        self._credit = 0
        self._paused = False
        #: Resolves frames sent by reference and takes control records (see
        #: :class:`FrameReferences`); ``None``: neither is accepted.
        self.references: FrameReferences | None = None
        # Of the message being received: the index and length of each frame sent by
        # reference (their length in self._lengths is REFERENCE_SIZE).
        self._by_reference: dict[int, int] | None = None

    @property
    def max_message_size(self) -> int:
        """The largest message accepted after the first, in bytes (frame lengths summed)."""
        return self._max_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._max_size = value
        if self._first_limit is None:
            self._fast_max = value
        else:
            self._fast_max = min(value, self._first_limit - _ONE_HEADER)

    @property
    def reserved_bytes(self) -> int:
        """Bytes of buffer memory the decoder has allocated for data not yet delivered:
        its receive buffer, and the buffer of the large frame being received."""
        direct = self._direct
        return len(self._buf) + (0 if direct is None else direct.nbytes)

    def detach(self) -> None:
        """Drop the *on_message* callback; messages decoded later are discarded.

        The callback is usually a method of the object that holds the decoder
        (a protocol): detaching it when the connection is gone breaks that
        reference cycle, so that both are freed without the garbage collector.
        """
        self.on_message = self._deliver = _discard

    def _first_message(self, frames: list[Any]) -> None:
        """Deliver the first message, then apply ``max_message_size`` to the next ones."""
        self._first_limit = None
        self._fast_max = self._max_size
        self.on_message = self._deliver
        self._deliver(frames)

    @property
    def expecting_preamble(self) -> bool:
        """Whether the peer's preamble has yet to arrive."""
        return self._need_preamble

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` was called, and :meth:`resume` not since."""
        return self._paused

    def pause(self) -> None:
        """Deliver no further message until :meth:`resume`.

        Called from *on_message*, the message being delivered is the last for
        now. Bytes received meanwhile are kept as they are, undecoded (a
        transport asked to pause reading may still deliver what it holds).
        """
        self._paused = True

    def resume(self) -> None:
        """Deliver the messages received while paused, then the next ones as they arrive.

        *on_message* may pause the decoder again. Raises what
        :meth:`buffer_updated` raises.
        """
        if self._paused:
            self._paused = False
            if self._direct is None:
                self._parse()

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        direct = self._direct
        if direct is not None:
            filled = self._filled
            if filled == direct.nbytes:
                direct = self._grow()
            return direct[filled : filled + _MAX_READ]
        if self._end == len(self._buf):
            self._compact()
        return self._view[self._end :]

    def _compact(self) -> None:
        """Make room after the received bytes: move the unparsed ones to the front, or
        grow the buffer (double it) when they fill it."""
        pending = self._end - self._start
        size = len(self._buf)
        # A full buffer means the peer sends faster than we parse: grow it, up to a
        # limit, so that each recv_into takes more at once. Past the limit it grows
        # only for a header or a frame that does not fit, as its bytes arrive.
        if pending == size or size < _MAX_BUFFER:
            # A new buffer: slices handed out earlier may still pin the old one.
            new = bytearray(2 * size)
            new[:pending] = self._view[self._start : self._end]
            self._buf, self._view = new, memoryview(new)
        else:
            self._view[:pending] = self._view[self._start : self._end]
        self._start, self._end = 0, pending

    def _grow(self) -> memoryview:
        """The large frame's buffer is full: grow it (fourfold, up to the frame's length)."""
        direct = self._direct
        assert direct is not None
        old = direct.nbytes
        capacity = min(self._direct_size, old * _GROWTH)
        backing = self._backing
        if type(backing) is bytearray:
            new: Any = bytearray(capacity)
            new[:old] = direct
        else:
            # A mapping grows in place, or moves without a copy (mremap), unless a view
            # of it is still held somewhere (or the OS cannot remap); then it is copied.
            try:
                direct.release()
                backing.resize(capacity)
                new = backing
            except (BufferError, OSError, SystemError):  # SystemError: no mremap
                new = _allocate(capacity, mapped=True)
                new[:old] = memoryview(backing)[:old]
            _advise_huge_pages(new)
        self._backing = new
        direct = self._direct = memoryview(new)
        return direct

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._filled += nbytes
            if self._filled == self._direct_size:
                self._frames.append(self._direct)
                self._direct = self._backing = None
                self._credit = max(self._credit, self._direct_size)
                self._parse()
            return
        self._end += nbytes
        self._parse()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            buf = self.get_buffer(view.nbytes)
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            del buf
            view = view[n:]
            self.buffer_updated(n)

    def _too_large(self, size: int, first: str = "") -> MessageTooLargeError:
        """The error for a message of *size* bytes; *first*: what the first message's
        header announced that takes it past its limit."""
        if first:
            limit = self._first_limit
            assert limit is not None
            return MessageTooLargeError(
                f"peer {self.peer} announced a first message (the comm handshake) of "
                f"{first}; a first message may have at most {limit} bytes",
                size=size,
                limit=limit,
            )
        return MessageTooLargeError(
            f"peer {self.peer} sent a message of {size} bytes, more than "
            f"max_message_size of {self._max_size} bytes",
            size=size,
            limit=self._max_size,
        )

    def _references_of(self, lengths: list[int]) -> dict[int, int]:
        """The frames of a header's *lengths* sent by reference, by index, with their
        lengths; *lengths* then says :data:`REFERENCE_SIZE` for them.

        Raises:
            ProtocolError: the body is by reference, or the first message (the
                handshake) has a frame by reference.
        """
        if lengths[0] >= BY_REFERENCE or self._first_limit is not None:
            where = "its message body" if lengths[0] >= BY_REFERENCE else "its first message"
            raise ProtocolError(f"peer {self.peer} sent {where} by reference")
        found = {}
        for index, length in enumerate(lengths):
            if length >= BY_REFERENCE:
                found[index] = length - BY_REFERENCE
                lengths[index] = REFERENCE_SIZE
        return found

    def _parse(self) -> None:
        buf = self._buf
        while not self._paused:
            start, avail = self._start, self._end - self._start
            if self._need_preamble:
                if avail < PREAMBLE_SIZE:
                    # Fail early on a wrong first byte; keep at most 8 bytes otherwise.
                    if avail and buf[start : start + avail] != PREAMBLE[:avail]:
                        check_preamble(bytes(buf[start : start + avail]).ljust(8, b"\0"), self.peer)
                    return
                check_preamble(buf[start : start + PREAMBLE_SIZE], self.peer)
                self._need_preamble = False
                self._start += PREAMBLE_SIZE
                continue
            lengths = self._lengths
            if lengths is None:
                if avail < 4:
                    return
                (count,) = _U32.unpack_from(buf, start)
                if count == 1 and avail >= 12:  # fast path: a small one-frame message
                    size = _ONE_FRAME.unpack_from(buf, start)[1]
                    if size < _DIRECT and avail >= 12 + size and size <= self._fast_max:
                        self._start = start + 12 + size
                        self.message_size = size
                        self.on_message([self._view[start + 12 : self._start].tobytes()])
                        buf = self._buf
                        continue
                if count == 0 and self.references is not None:
                    if avail < CONTROL_SIZE:
                        return
                    kind = _U32.unpack_from(buf, start + 4)[0]
                    payload = bytes(buf[start + 8 : start + CONTROL_SIZE])
                    self._start = start + CONTROL_SIZE
                    self.references.control(kind, payload)
                    buf = self._buf
                    continue
                if not 1 <= count <= MAX_FRAMES:
                    raise ProtocolError(
                        f"peer {self.peer} sent a message header with {count} frames; "
                        f"the protocol allows 1 to {MAX_FRAMES}"
                    )
                header = 4 + 8 * count
                first_limit = self._first_limit
                if first_limit is not None and header > first_limit:
                    raise self._too_large(
                        header, f"{count} frames, whose header alone takes {header} bytes"
                    )
                if avail < header:
                    return
                lengths = list(struct.unpack_from(f"<{count}Q", buf, start + 4))
                by_reference = None
                if self.references is not None and max(lengths) >= BY_REFERENCE:
                    by_reference = self._references_of(lengths)
                    total = sum(lengths) - REFERENCE_SIZE * len(by_reference)
                    total += sum(by_reference.values())
                else:
                    total = sum(lengths)
                if first_limit is not None and header + total > first_limit:
                    size = header + total
                    raise self._too_large(size, f"{size} bytes, header included")
                if total > self._max_size:
                    raise self._too_large(total)
                self._start += header
                self._lengths = lengths
                self._by_reference = by_reference
                self._frames = []
                continue
            index = len(self._frames)
            if index == len(lengths):
                frames, self._frames, self._lengths = self._frames, [], None
                by_reference, self._by_reference = self._by_reference, None
                self.message_size = sum(lengths)
                if by_reference is not None:
                    self.message_size += sum(by_reference.values())
                    self.message_size -= REFERENCE_SIZE * len(by_reference)
                self.on_message(frames)
                continue
            size = lengths[index]
            if self._by_reference is not None and index in self._by_reference:
                if avail < REFERENCE_SIZE:
                    return
                assert self.references is not None
                reference = bytes(buf[start : start + REFERENCE_SIZE])
                self._start += REFERENCE_SIZE
                self._frames.append(self.references.resolve(reference, self._by_reference[index]))
                buf = self._buf
                continue
            if size < _DIRECT:
                if avail < size:
                    return  # get_buffer() makes room as the frame's bytes arrive
                self._frames.append(self._view[start : start + size].tobytes())
                self._start += size
                continue
            # A large frame: copy what we already hold, receive the rest in place.
            have = min(avail, size)
            # Longer than any frame before: start small (see _FIRST_CAPACITY).
            seen = size <= self._credit
            capacity = size if seen else min(size, max(_FIRST_CAPACITY, have))
            backing = _allocate(capacity, mapped=size >= _MAPPED_FROM)
            dest = memoryview(backing)
            dest[:have] = self._view[start : start + have]
            self._start += have
            if have == size:
                self._frames.append(dest)
                self._credit = max(self._credit, size)
                continue
            self._direct, self._backing = dest, backing
            self._direct_size, self._filled = size, have
            self._start = self._end = 0
            return
