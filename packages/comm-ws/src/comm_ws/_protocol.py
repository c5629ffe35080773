"""The WebSocket connection: the HTTP upgrade, then RFC 6455 frames, over an asyncio transport.

:class:`WSProtocol` is an :class:`asyncio.BufferedProtocol` for one
connection, from its first byte to its last, over any asyncio transport
(asyncio's own socket or TLS transports, uvloop's):

* the upgrade: the client sends its request and checks the response, the
  server checks the request and answers it (both in :mod:`comm_ws._upgrade`),
  each head bounded by :data:`~comm_ws._upgrade.MAX_HEAD` bytes and, on the
  listener, by the handshake's deadline; a listener's comm handshake leaves
  with its answer;
* then frames, parsed here: one binary WebSocket message per comm message.
  A payload of more than :data:`DIRECT` bytes that is not in the read buffer
  already is received in place, into a buffer that becomes the message
  (nothing copied after the kernel's copy); it starts small unless the peer
  sent as large before, and grows with what arrives. A frame's length is checked against the limit
  before anything is allocated for it; control frames must be short and
  whole; a message in fragments may have at most :data:`MAX_FRAGMENTS` of
  them and the limit's bytes in all; text frames, reserved bits and unknown
  opcodes break the protocol.
* masking: a client masks what it sends, with a fresh random key per
  message; a server unmasks what it receives as it arrives, in slices that
  are still in the CPU's cache; both with websockets' C ``apply_mask``.
* flow control both ways: reading pauses while the messages received and
  not yet read take more than ``read_high_water`` bytes; :meth:`send` waits
  while the transport holds more than ``write_high_water`` bytes unsent, and
  sends a large message in slices, each once the one before has left.
* keepalive: every ``ping_interval`` seconds without a byte from the peer, a
  ping; a peer that then stays silent ``ping_timeout`` seconds more is dead.
  A side whose reading is paused (its reader is slow) cannot hear pongs: it
  does not judge the peer, and sends an unsolicited pong instead, so that
  the peer knows it lives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

from comm_core import (
    CommClosedError,
    ConnectError,
    FatalCommClosedError,
    MessageTooLargeError,
    ProtocolError,
)
from comm_core.stream import format_sockaddr
from comm_ws._upgrade import (
    MAX_HEAD,
    SUBPROTOCOL,
    TLS_ALERT,
    ClientUpgrade,
    ServerUpgrade,
    head_end,
    not_http,
    refusal,
)

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build of websockets without its C extension
    from websockets.utils import apply_mask

__all__ = ["MAX_FRAGMENTS", "SUBPROTOCOL", "WSProtocol"]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
_DATA = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
_CONTROL = frozenset({OP_CLOSE, OP_PING, OP_PONG})

#: Close codes (RFC 6455, section 7.4.1).
NORMAL, GOING_AWAY, PROTOCOL_ERROR, UNSUPPORTED, INVALID_DATA, TOO_BIG = (
    1000, 1001, 1002, 1003, 1007, 1009,
)  # fmt: skip
_CLOSE_NAMES: Final = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1010: "mandatory extension",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
}

#: The read buffer: frame headers, control frames and small payloads are cut from it. It
#: starts at INITIAL bytes (cheap to make, per connection) and grows to SCRATCH when full.
SCRATCH: Final = 256 * 1024
INITIAL: Final = 16 * 1024
#: A payload longer than this that is not in the read buffer yet is received in place
#: (into a buffer that grows with what arrives): what a frame header alone makes a reader
#: reserve stays small.
DIRECT: Final = 4 * 1024
#: What a message waiting unread costs besides its bytes, counted against read_high_water
#: (CPython's objects that hold it, as comm_core.stream.held_bytes counts them).
HELD: Final = 160
#: The most frames one message may come in (its bytes are bounded by the size limit).
MAX_FRAGMENTS: Final = 1024
#: Messages of this size or more are sent in slices of SLICE bytes (see WSProtocol.send).
LARGE: Final = 1024 * 1024
SLICE: Final = 256 * 1024
#: A payload received in place goes to a buffer of at most FIRST_CAPACITY bytes (or what
#: arrived with its header), unless the peer sent one as long before; the buffer grows
#: GROWTH times each time it is full. Buffers of MAPPED_FROM bytes or more are anonymous
#: mappings (they grow in place), with transparent huge pages from HUGE_FROM bytes.
FIRST_CAPACITY: Final = 32 * 1024
GROWTH: Final = 4
MAPPED_FROM: Final = 1024 * 1024
HUGE_FROM: Final = 4 * 1024 * 1024
#: A masked payload received in place is received RECV_SLICE bytes at a time at most (each
#: unmasked while in the cache), and unmasked in slices of UNMASK bytes.
RECV_SLICE: Final = 256 * 1024
UNMASK: Final = 64 * 1024
#: Seconds a client holds its comm handshake while it waits for the listener's first
#: message (a comm listener sends its handshake with its upgrade response); then it goes
#: out anyway, for a peer that waits to be spoken to.
HOLD_HANDSHAKE: Final = 0.05
#: Messages shorter than this are sent as one joined buffer (one system call).
_JOIN: Final = 64 * 1024
#: Seconds close() waits for what is queued to leave before it aborts.
CLOSE_TIMEOUT: Final = 5.0
#: asyncio's socket transports gather writelines() with sendmsg() from Python 3.12 on;
#: before, writelines() joins (copies) its buffers.
_GATHERS: Final = sys.version_info >= (3, 12)

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")

UPGRADING, OPEN, CLOSING, CLOSED = "upgrading", "open", "closing", "closed"


def frame_header(opcode: int, size: int, mask: bytes | None) -> bytes:
    """The header of a final frame of *opcode* with *size* payload bytes (masked if *mask*)."""
    first = 0x80 | opcode
    bit = 0x80 if mask is not None else 0
    if size < 126:
        header = bytes((first, bit | size))
    elif size < 65536:
        header = _H16.pack(first, bit | 126, size)
    else:
        header = _H64.pack(first, bit | 127, size)
    return header if mask is None else header + mask


def _allocate(size: int) -> Any:
    """A zeroed buffer of *size* bytes: an anonymous private mapping from MAPPED_FROM bytes
    on (zero pages, touched once by recv, huge pages from HUGE_FROM), else a bytearray."""
    if size < MAPPED_FROM or sys.platform == "win32":
        return bytearray(size)
    import mmap

    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    _advise(buffer)
    return buffer


def _advise(buffer: Any) -> None:
    if len(buffer) >= HUGE_FROM:
        import mmap

        # Transparent huge pages, where the OS has them: one page fault per 2 MiB.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            buffer.madvise(mmap.MADV_HUGEPAGE)


def _grown(buffer: Any, filled: int, length: int) -> Any:
    """*buffer*, full with *filled* bytes of a payload of *length*, made GROWTH times
    longer (at most *length*): resized in place where it can be, else copied."""
    capacity = min(length, max(len(buffer) * GROWTH, FIRST_CAPACITY))
    if type(buffer) is not bytearray:
        try:
            buffer.resize(capacity)
        except (BufferError, OSError, ValueError, SystemError):
            pass
        else:
            _advise(buffer)
            return buffer
    new = _allocate(capacity)
    new[:filled] = memoryview(buffer)[:filled]
    return new


class _KeyPool:
    """Masking keys read from the OS's random source 1024 at a time, for every connection of
    the process (reading them per connection cost more than the rest of its set-up); a
    forked child reads its own."""

    keys = b""
    at = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: setattr(_KeyPool, "at", len(_KeyPool.keys)))


def _mask_key() -> bytes:
    """A fresh masking key: 4 bytes of the OS's random source, never handed out twice."""
    at = _KeyPool.at
    keys = _KeyPool.keys
    if at >= len(keys):
        keys = _KeyPool.keys = os.urandom(4096)
        at = 0
    _KeyPool.at = at + 4
    return keys[at : at + 4]


def _rotated(mask: bytes, offset: int) -> bytes:
    shift = offset & 3
    return mask if not shift else mask[shift:] + mask[:shift]


def _bytes_view(buffer: Any) -> Any:
    if type(buffer) is bytes:
        return buffer
    view = memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class WSProtocol(asyncio.BufferedProtocol):
    """One WebSocket connection carrying comm messages: see the module's docstring.

    Args:
        scheme: ``"ws"`` or ``"wss"``, for addresses.
        upgrade: a :class:`~comm_ws._upgrade.ClientUpgrade` (this side dials)
            or a :class:`~comm_ws._upgrade.ServerUpgrade` (it accepted).
        max_size: the largest message accepted, in bytes (comm's
            ``max_message_size`` plus the most a message's frame header takes).
        first_limit: the largest first message accepted (the comm handshake).
        read_high_water: reading pauses while more than this many bytes of
            messages wait to be read.
        write_high_water: :meth:`send` waits while the transport holds more.
        ping_interval, ping_timeout: keepalive, in seconds (``None``: none).
        on_open: (listener) called once the upgrade is done, before its
            response goes out; messages it sends leave with the response.
        on_failed: (listener) called with the reason if the upgrade fails.
    """

    def __init__(
        self,
        *,
        scheme: str,
        upgrade: ClientUpgrade | ServerUpgrade,
        max_size: int,
        first_limit: int | None,
        read_high_water: int = 64 * 1024 * 1024,
        write_high_water: int = 4 * 1024 * 1024,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        on_open: Callable[[WSProtocol], None] | None = None,
        on_failed: Callable[[WSProtocol, str], None] | None = None,
    ) -> None:
        self.scheme = scheme
        self.upgrade = upgrade
        self.client = isinstance(upgrade, ClientUpgrade)
        self.max_size = max_size
        self.first_limit = first_limit
        self.read_high_water = read_high_water
        self.write_high_water = write_high_water
        self.ping_interval = ping_interval or None
        self.ping_timeout = ping_timeout or ping_interval or None
        self.on_open = on_open
        self.on_failed = on_failed
        self.state = UPGRADING
        self._request_sent = 0  # bytes of the upgrade request a connector sent itself
        self._unsent = b""  # the rest of an answer a listener sent before the transport
        #: Set by a listener that refuses the connection before its transport comes.
        self.refused = False
        #: Set by a listener: when (the loop's clock) a connection still upgrading is dropped.
        self.deadline: float | None = None
        self.transport: asyncio.Transport | None = None
        self.local = f"{scheme}://"
        self.peer = f"{scheme}://"
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The client's upgrade: done once the server switched protocols, or failed.
        self.opened: asyncio.Future[None] | None = None
        # reading
        self._buf = bytearray(INITIAL)
        self._start = 0
        self._end = 0
        self._target: Any = None  # a payload received in place (a bytearray or an mmap)
        self._target_len = 0  # its length (the buffer may be shorter for now)
        self._filled = 0
        self._largest = 0  # the longest payload the peer sent
        self._target_mask: bytes | None = None
        self._target_opcode = 0
        self._target_fin = True
        self._fragments: bytearray | None = None  # a message in fragments, so far
        self._fragment_count = 0
        self._first = first_limit is not None
        self._received = False  # a message came (the first one may still be queued)
        self._queue: collections.deque[Any] = collections.deque()
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        # what ends reading: a clean close (None), or an error, once the queue is read
        self._ended = False
        self._error: Exception | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        # writing
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._held: list[Any] | None = None  # written with the upgrade's response
        self._corked: asyncio.Handle | None = None  # sends what cork() held
        self._cork_first = False  # the next message written is the one cork() holds
        self._holding = False  # cork() waits for the peer's first message (a client)
        self._close_sent = False
        self._closed_here = False  # close() or abort() was called
        self._sending = False  # a large message's frame is going out in slices
        self._after: list[bytes] = []  # control frames that wait for it
        self._reported = False  # a read was told that the connection ended
        self._lost: asyncio.Future[None] | None = None
        # keepalive
        self._heard = False
        self._pinged = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # -- the transport's callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes
        self.transport = transport = cast("asyncio.Transport", transport)
        if self.refused:  # by the listener, before its transport came
            self.state = CLOSING
            transport.abort()
            return
        loop = self._loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self.local = format_sockaddr(self.scheme, transport.get_extra_info("sockname"))
        self.peer = format_sockaddr(self.scheme, transport.get_extra_info("peername"))
        transport.set_write_buffer_limits(high=self.write_high_water)
        if self.deadline is not None and self.state is UPGRADING:
            self._deadline = loop.call_at(self.deadline, self.expire)
        if self._unsent:
            transport.write(self._unsent)  # the rest of an answer sent before (preload)
            self._unsent = b""
        if not self.client and self._end > self._start:
            self._process()  # bytes read before the transport came (preload)
        if self.client:
            self.opened = loop.create_future()
            assert isinstance(self.upgrade, ClientUpgrade)
            rest = self.upgrade.request[self._request_sent :]
            if rest:
                transport.write(rest)

    def cork(self) -> None:
        """Hold the next message written (the comm handshake) until another is written,
        or the end of this loop iteration, then send them in one write: a client's comm
        handshake leaves with its first message.

        A client that has not heard from the listener yet holds it until the
        listener's first message (its comm handshake) has come and its reader
        has run, for at most :data:`HOLD_HANDSHAKE` seconds: what the reader
        decides on reading it (such as aborting, to take a same-host path instead)
        happens before anything of this side's comm has left.
        """
        if self._held is None and self._loop is not None and self.state is OPEN:
            self._held = []
            self._cork_first = True
            if self.client and not self._received and not self._ended:
                self._holding = True
                self._corked = self._loop.call_later(HOLD_HANDSHAKE, self._uncork)
            else:
                self._corked = self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        held, self._held = self._held, None
        self._cork_first = self._holding = False
        if self._corked is not None:
            self._corked.cancel()
            self._corked = None
        if held and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(held))

    def upgrade_request(self) -> bytes:
        """The client's upgrade request, for a connector that sends it before the
        transport is made (see :meth:`request_sent`)."""
        assert isinstance(self.upgrade, ClientUpgrade)
        return self.upgrade.request

    def request_sent(self, nbytes: int) -> None:
        """The connector sent the first *nbytes* of the request itself; the rest goes
        once the transport is made."""
        self._request_sent = nbytes

    def get_buffer(self, sizehint: int) -> Any:
        target = self._target
        if target is not None:
            filled = self._filled
            if filled == len(target):
                target = self._target = _grown(target, filled, self._target_len)
            if self._target_mask is not None:
                # A masked payload is received a slice at a time, and unmasked while it
                # is still in the CPU's cache.
                return memoryview(target)[filled : min(self._target_len, filled + RECV_SLICE)]
            return memoryview(target)[filled : self._target_len]
        if self._end == len(self._buf):
            self._compact()
            if self._end == len(self._buf):
                self._grow(SCRATCH)
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._heard = True
        target = self._target
        if target is not None:
            start = self._filled
            end = self._filled = start + nbytes
            mask = self._target_mask
            if mask is not None:
                # In slices: each unmasked copy is small (in the cache, on the heap).
                view = memoryview(target)
                pos = start
                while pos < end:
                    stop = min(pos + UNMASK, end)
                    view[pos:stop] = apply_mask(view[pos:stop], _rotated(mask, pos))
                    pos = stop
                del view
            if end == self._target_len:
                self._target = None
                self._largest = max(self._largest, end)
                self._frame(self._target_opcode, self._target_fin, target)
            return
        self._end += nbytes
        self._process()

    def _process(self) -> None:
        """Handle what the read buffer holds: the upgrade's head, then frames."""
        try:
            if self.state is UPGRADING:
                self._upgrade()
            if self.state is OPEN or self.state is CLOSING:
                self._parse()
        except ProtocolError as exc:
            self._fail(exc)

    def preload(self, data: bytes, sock: Any) -> None:
        """(Listener) *data*, read from the accepted *sock* before it has a transport: if it
        holds a whole upgrade request that is accepted, answer it now on *sock* (the
        listener's comm handshake with it), before asyncio makes the transport; anything
        else is handled once the transport comes."""
        self._loop = asyncio.get_running_loop()
        if len(data) > len(self._buf):
            self._grow(max(len(data), SCRATCH))
        self._buf[: len(data)] = data
        self._end = len(data)
        end = head_end(self._buf, min(self._end, MAX_HEAD + 4))
        if end < 0 or not_http(bytes(data[:8]), "client") is not None:
            return
        assert isinstance(self.upgrade, ServerUpgrade)
        response, refused = self.upgrade.respond(bytes(self._buf[:end]))
        if refused is not None:
            return  # answered once the transport comes, as any refusal
        self.local = format_sockaddr(self.scheme, sock.getsockname())
        self.peer = format_sockaddr(self.scheme, sock.getpeername())
        self._start = end
        self._held = [response]
        self._open()
        if self.on_open is not None:
            self.on_open(self)
        held, self._held = self._held, None
        if held is None or self.state is not OPEN:
            return
        answer = b"".join(held)
        try:
            sent = sock.send(answer)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self._unsent = answer[sent:]

    def eof_received(self) -> bool | None:
        return False  # close the transport: WebSocket has no half-close

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = CLOSED
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # Python 3.10's TLS transport is not marked closed when its connection is
            # lost, and warns when collected; closing it now does nothing else.
            transport.close()
        self._stop_timers()
        if previous is UPGRADING and self.opened is not None and not self.opened.done():
            reason = f"the connection was lost: {exc}" if exc else "the listener closed it"
            error = ConnectError(f"WebSocket upgrade at {self.peer} failed: {reason}")
            error.__cause__ = exc  # a TLS alert (the listener refused this side), say
            self.opened.set_exception(error)
        if not self._ended:
            self._ended = True
            if self._error is None:
                detail = f": {exc}" if exc else " (no WebSocket close)"
                self._error = CommClosedError(f"connection to {self.peer} was lost{detail}")
        self._wake()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- the upgrade ---------------------------------------------------------------------------

    def _upgrade(self) -> None:
        buf = self._buf
        got = bytes(buf[: min(self._end, 8)])
        what = "listener" if self.client else "client"
        strange = not_http(got, what)
        if strange is not None:
            self._upgrade_failed(strange, got)
            return
        end = head_end(buf, min(self._end, MAX_HEAD + 4))
        if end < 0:
            if self._end > MAX_HEAD:
                self._upgrade_failed(f"its HTTP head is longer than {MAX_HEAD} bytes", got)
            return
        if end > MAX_HEAD:
            self._upgrade_failed(f"its HTTP head is longer than {MAX_HEAD} bytes", got)
            return
        head = bytes(buf[:end])
        self._start = end
        if self.client:
            self._client_upgrade(head)
        else:
            self._server_upgrade(head)

    def _client_upgrade(self, head: bytes) -> None:
        assert isinstance(self.upgrade, ClientUpgrade)
        opened = self.opened
        assert opened is not None
        try:
            self.upgrade.check(head, bytes(self._buf[self._start : self._end]))
        except Exception as exc:
            self.state = CLOSED
            if not opened.done():
                opened.set_exception(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        self._open()
        if not opened.done():
            opened.set_result(None)

    def _server_upgrade(self, head: bytes) -> None:
        assert isinstance(self.upgrade, ServerUpgrade)
        response, refused = self.upgrade.respond(head)
        transport = self.transport
        assert transport is not None
        if refused is not None:
            self.state = CLOSING
            transport.write(response)
            transport.close()
            if self.on_failed is not None:
                self.on_failed(self, refused)
            return
        self._held = [response]
        self._open()
        if self.on_open is not None:
            self.on_open(self)
        held, self._held = self._held, None
        if held is not None and self.state is OPEN:
            transport.write(b"".join(held))

    def _upgrade_failed(self, reason: str, head: bytes) -> None:
        transport = self.transport
        if self.client:
            opened = self.opened
            assert opened is not None
            assert isinstance(self.upgrade, ClientUpgrade)
            self.state = CLOSED
            if not opened.done():
                opened.set_exception(
                    FatalCommClosedError(
                        f"WebSocket upgrade at {self.upgrade.address} failed: {reason}"
                    )
                )
            if transport is not None:
                transport.abort()
            return
        self.state = CLOSING
        if transport is not None:
            if head[:1] == b"\x16":
                transport.write(TLS_ALERT)  # a TLS client learns at once that no TLS is here
            else:
                text = f"This is a comm {self.scheme}:// listener; {reason}.\n"
                transport.write(refusal(400, "Bad Request", text))
            transport.close()
        if self.on_failed is not None:
            self.on_failed(self, reason)

    def _open(self) -> None:
        self.state = OPEN
        self._compact()
        if self.ping_interval is not None and self._loop is not None:
            self._timer = self._loop.call_later(self.ping_interval, self._tick)

    def expire(self) -> None:
        """The listener's deadline for the upgrade passed: drop a connection still in it."""
        if self.state is UPGRADING:
            self.abort()

    # -- reading frames --------------------------------------------------------------------------

    def _grow(self, size: int) -> None:
        # A new buffer, not a resized one: the transport may still hold a view of the old.
        old = self._buf
        if len(old) < size:
            new = bytearray(size)
            new[: self._end] = memoryview(old)[: self._end]
            self._buf = new

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
            buf = self._buf
            if end > start:
                buf[: end - start] = buf[start:end]
            self._start, self._end = 0, end - start

    def _parse(self) -> None:
        buf = self._buf
        client = self.client
        while self._target is None and self.state is not CLOSED:
            start = self._start
            avail = self._end - start
            if avail < 2:
                break
            first = buf[start]
            second = buf[start + 1]
            if first == 0x82 and self._fragments is None and self.state is OPEN:
                # The common case, a whole small binary message: no checks can fail (it
                # is below every limit), no allocation but the message's.
                if client:
                    end = start + 2 + second
                    if second < 126 and end <= self._end:
                        self._start = end
                        self._deliver(bytes(memoryview(buf)[start + 2 : end]))
                        continue
                elif 0x80 <= second < 0x80 + 126:
                    end = start + 6 + second - 0x80
                    if end <= self._end:
                        self._start = end
                        view = memoryview(buf)
                        key = buf[start + 2 : start + 6]
                        self._deliver(apply_mask(view[start + 6 : end], key))
                        del view
                        continue
            length = second & 0x7F
            masked = second & 0x80
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)
            if avail < size:
                break
            opcode = first & 0x0F
            fin = bool(first & 0x80)
            if first & 0x70:
                raise ProtocolError(
                    f"peer {self.peer} sent a WebSocket frame with reserved bits set (an "
                    "extension that was not negotiated)"
                )
            if bool(masked) == client:
                raise ProtocolError(
                    f"peer {self.peer} sent a{'' if masked else 'n un'}masked WebSocket frame; "
                    f"a {'server' if client else 'client'} must "
                    f"{'not ' if client else ''}mask its frames"
                )
            offset = start + 2
            if length == 126:
                (length,) = _U16.unpack_from(buf, offset)
                offset += 2
            elif length == 127:
                (length,) = _U64.unpack_from(buf, offset)
                offset += 8
                if length >> 63:
                    raise ProtocolError(
                        f"peer {self.peer} sent a frame length with its top bit set"
                    )
            mask = bytes(buf[offset : offset + 4]) if masked else None
            offset += 4 if masked else 0
            self._check_frame(opcode, fin, length)
            if avail - size >= length:
                end = offset + length
                view = memoryview(buf)[offset:end]
                payload = apply_mask(view, mask) if mask is not None else bytes(view)
                del view
                self._start = end
                self._frame(opcode, fin, payload)
                continue
            if length > DIRECT and opcode in _DATA:
                # Received in place, into a buffer that becomes the message. It starts
                # small unless the peer sent as much before, and grows with what arrives:
                # a header alone reserves little.
                here = avail - size
                if length <= self._largest:
                    capacity = length
                else:
                    capacity = min(length, max(FIRST_CAPACITY, here))
                target = _allocate(capacity)
                self._target_len = length
                if here:
                    view = memoryview(buf)[offset : offset + here]
                    target[:here] = apply_mask(view, mask) if mask is not None else view
                    del view
                self._start = self._end = 0
                self._target = target
                self._filled = here
                self._target_mask = mask
                self._target_opcode = opcode
                self._target_fin = fin
                break
            if start + size + length > len(buf):
                self._compact()
                if size + length > len(buf):
                    self._grow(SCRATCH)
            break
        if self._start == self._end:
            self._start = self._end = 0

    def _check_frame(self, opcode: int, fin: bool, length: int) -> None:
        if opcode in _CONTROL:
            if not fin or length > 125:
                raise ProtocolError(
                    f"peer {self.peer} sent a WebSocket control frame that is "
                    f"{'fragmented' if not fin else f'{length} bytes long (at most 125)'}"
                )
            return
        if opcode not in _DATA:
            raise ProtocolError(
                f"peer {self.peer} sent a WebSocket frame of unknown opcode {opcode}"
            )
        if opcode == OP_TEXT:
            raise ProtocolError(
                f"peer {self.peer} sent a WebSocket text message; comm's messages are binary "
                f"(subprotocol {SUBPROTOCOL})"
            )
        so_far = 0
        if opcode == OP_CONT:
            if self._fragments is None:
                raise ProtocolError(
                    f"peer {self.peer} sent a WebSocket continuation frame outside a message"
                )
            so_far = len(self._fragments)
            if self._fragment_count >= MAX_FRAGMENTS:
                raise ProtocolError(
                    f"peer {self.peer} sent a WebSocket message in more than {MAX_FRAGMENTS} "
                    "fragments"
                )
        elif self._fragments is not None:
            raise ProtocolError(
                f"peer {self.peer} began a WebSocket message before finishing the previous one"
            )
        total = so_far + length
        if self._first:
            limit = self.first_limit
            assert limit is not None
            if total > limit:
                raise MessageTooLargeError(
                    f"peer {self.peer} sent a first message of at least {total} bytes, more "
                    f"than the limit of a first message (the comm handshake) of {limit} bytes",
                    size=total,
                    limit=limit,
                )
        elif total > self.max_size:
            raise MessageTooLargeError(
                f"peer {self.peer} sent a WebSocket message of at least {total} bytes, more "
                f"than this side accepts ({self.max_size} bytes: max_message_size and the "
                "largest frame header)",
                size=total,
                limit=self.max_size,
            )

    def _frame(self, opcode: int, fin: bool, payload: Any) -> None:
        if opcode in (OP_BINARY, OP_CONT):
            if fin and self._fragments is None:
                self._deliver(payload)
                return
            if self._fragments is None:
                self._fragments = bytearray(payload)
                self._fragment_count = 1
            else:
                self._fragments += payload
                self._fragment_count += 1
            if fin:
                message, self._fragments = self._fragments, None
                self._fragment_count = 0
                self._deliver(message)
            return
        if opcode == OP_PING:
            if self.state is OPEN:
                self._send_control(OP_PONG, bytes(payload))
        elif opcode == OP_CLOSE:
            self._closed_by_peer(bytes(payload))
        # OP_PONG: hearing it was the point (see buffer_updated)

    def _deliver(self, message: Any) -> None:
        self._first = False
        if self.state is not OPEN:
            return  # after our close, the peer's messages are not read
        self._received = True
        self._queue.append(message)
        self._queued += len(message) + HELD
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._holding:
            # The listener's handshake came while this side's was held (see cork()): it
            # leaves after the reader's wake-up, scheduled just now.
            self._holding = False
            if self._corked is not None:
                self._corked.cancel()
            assert self._loop is not None
            self._corked = self._loop.call_soon(self._uncork)
        if self._queued > self.read_high_water and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _closed_by_peer(self, payload: bytes) -> None:
        code: int | None = None
        reason = ""
        if len(payload) >= 2:
            (code,) = _U16.unpack_from(payload)
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                reason = repr(payload[2:])
        elif payload:
            raise ProtocolError(f"peer {self.peer} sent a WebSocket close frame of one byte")
        self.close_code, self.close_reason = code, reason
        if not self._ended:
            self._ended = True
            if code not in (None, NORMAL, GOING_AWAY):
                name = _CLOSE_NAMES.get(code, "")
                said = f"code {code}" + (f" ({name})" if name else "")
                if reason:
                    said += f": {reason!r}"
                self._error = CommClosedError(
                    f"{self.peer} closed the WebSocket connection with {said}"
                )
        self._wake()
        if self.state is OPEN:
            self._send_control(OP_CLOSE, _U16.pack(code if code is not None else NORMAL))
        self.state = CLOSING
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: say why in a close frame, stop reading, end."""
        if not self._ended:
            self._ended = True
            self._error = exc
        self._wake()
        if self.state is OPEN:
            code = TOO_BIG if isinstance(exc, MessageTooLargeError) else PROTOCOL_ERROR
            text = str(exc).encode()[:120]
            self._send_control(OP_CLOSE, _U16.pack(code) + text)
        self.state = CLOSING
        self._target = None
        if self.transport is not None:
            self.transport.close()

    # -- what the comm calls -----------------------------------------------------------------

    def message_waiting(self) -> bool:
        return bool(self._queue)

    def broken(self) -> bool:
        """Whether the peer broke the protocol (the next read, once the queue is read,
        raises why)."""
        return isinstance(self._error, ProtocolError)

    async def first_message(self, deadline: float) -> None:
        """Wait until a message is here, the connection ended, or the loop's clock is at
        *deadline*, whichever comes first."""
        if self._queue or self._ended or self._loop is None:
            return
        loop = self._loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_at(deadline, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def left_silently(self) -> bool:
        """Whether the connection ended before the peer sent any message, without breaking
        the protocol and without this side closing it: a peer that went away (a dialer
        that took another path, once it read the listener's greeting)."""
        return (
            self._ended
            and not self._received
            and not self._closed_here
            and not isinstance(self._error, ProtocolError)
        )

    async def receive(self) -> Any:
        """The next message, ``None`` once the peer closed cleanly and all were read.

        Raises:
            CommClosedError: the connection ended otherwise (the reason says how).
            ProtocolError: the peer broke the WebSocket protocol.
        """
        while True:
            queue = self._queue
            if queue:
                message = queue.popleft()
                self._queued -= len(message) + HELD
                if self._reading_paused and self._queued <= self.read_high_water // 4:
                    self._reading_paused = False
                    if self.transport is not None and self.state is not CLOSED:
                        self.transport.resume_reading()
                return message
            if self._ended:
                self._reported = True
                error = self._error
                if error is None:
                    return None
                raise _again(error)
            assert self._loop is not None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def write_message(self, buffers: Sequence[Any], size: int) -> None:
        """Send one binary message made of *buffers* (*size* bytes), without waiting.

        Raises:
            CommClosedError: the connection is closing or closed.
        """
        if self.state is not OPEN:
            raise self.closed_error()
        if self.client:
            mask = self._mask()
            if len(buffers) == 1 and size < _JOIN and self._held is None:
                # The common case: one small buffer, one write.
                header = frame_header(OP_BINARY, size, mask)
                assert self.transport is not None
                self.transport.write(header + apply_mask(buffers[0], mask))
                return
            parts: list[Any] = [frame_header(OP_BINARY, size, mask)]
            offset = 0
            for buffer in buffers:
                view = _bytes_view(buffer)
                parts.append(apply_mask(view, _rotated(mask, offset)))
                offset += len(view) if type(view) is bytes else view.nbytes
        else:
            parts = [frame_header(OP_BINARY, size, None), *buffers]
        self._write(parts, size)

    def _write(self, parts: list[Any], size: int) -> None:
        held = self._held
        if held is not None:
            held.extend(parts)
            if self._cork_first:
                self._cork_first = False  # the handshake: held
            elif self._corked is not None:
                self._uncork()  # the handshake leaves with this first message, now
            return
        transport = self.transport
        assert transport is not None
        if size < _JOIN or len(parts) == 1:
            transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        elif _GATHERS:
            transport.writelines(parts)
        else:
            small: list[Any] = []
            for part in parts:
                if len(memoryview(part)) < _JOIN:
                    small.append(part)
                    continue
                if small:
                    transport.write(b"".join(small))
                    small = []
                transport.write(part)
            if small:
                transport.write(b"".join(small))

    async def send(self, buffers: Sequence[Any], size: int) -> None:
        """Send one message; wait while the transport holds too much (backpressure).

        A large message goes out in slices of :data:`SLICE` bytes, each handed to
        the transport once it has room: a client masks each slice just before (a copy
        that stays in the CPU's cache, never one of the whole message), and no
        transport copies more than a slice of what it could not send at once.

        Raises:
            CommClosedError: the connection is closing or closed.
        """
        if size < LARGE or (not self.client and _GATHERS):
            self.write_message(buffers, size)
            if self._write_paused or self.state is CLOSED:
                await self._drained()
            return
        if self.state is not OPEN:
            raise self.closed_error()
        transport = self.transport
        assert transport is not None
        if self._held is not None:
            self._uncork()  # what is held goes first
        mask = self._mask() if self.client else None
        self._sending = True
        # Each slice waits until the transport sent all before it: asyncio's transports
        # copy what the socket does not take at once, so a slice then goes straight to
        # the kernel, and at most one slice is copied.
        transport.set_write_buffer_limits(high=SLICE, low=0)
        try:
            transport.write(frame_header(OP_BINARY, size, mask))
            offset = 0
            for buffer in buffers:
                view = memoryview(_bytes_view(buffer))
                total = view.nbytes
                pos = 0
                while pos < total:
                    end = min(pos + SLICE, total)
                    piece: Any = view[pos:end]
                    if mask is not None:
                        piece = apply_mask(piece, _rotated(mask, offset))
                    elif end - pos < _JOIN:
                        piece = bytes(piece)
                    transport.write(piece)
                    offset += end - pos
                    pos = end
                    if self._write_paused:
                        await self._drained()
                    if self.state is not OPEN:
                        raise self.closed_error()
        finally:
            self._sending = False
            if self.state is OPEN:
                transport.set_write_buffer_limits(high=self.write_high_water)
            held, self._after = self._after, []
            for frame in held:
                if not transport.is_closing():
                    transport.write(frame)

    async def _drained(self) -> None:
        """Wait while the transport holds more than ``write_high_water`` bytes.

        Raises:
            CommClosedError: the connection is closed.
        """
        while self._write_paused and self.state is OPEN:
            assert self._loop is not None
            drain = self._drain
            if drain is None:
                drain = self._drain = self._loop.create_future()
            await drain
        if self.state is CLOSED:
            raise self.closed_error()

    def _mask(self) -> bytes:
        """A fresh masking key (see :func:`_mask_key`)."""
        return _mask_key()

    def _send_control(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self._close_sent:
            return
        if opcode == OP_CLOSE:
            self._close_sent = True
        if self.client:
            mask = self._mask()
            frame = frame_header(opcode, len(payload), mask) + apply_mask(payload, mask)
        else:
            frame = frame_header(opcode, len(payload), None) + payload
        if self._held is not None:
            self._held.append(frame)
        elif self._sending:
            self._after.append(frame)  # not inside the payload of the frame being sent
        else:
            self.transport.write(frame)

    def closed_error(self) -> CommClosedError:
        """What a write on a closed connection raises."""
        error = self._error
        if isinstance(error, CommClosedError):
            return CommClosedError(str(error))
        return CommClosedError(f"the WebSocket connection with {self.peer} is closed")

    async def close(self) -> None:
        """Say goodbye (a close frame, code 1000), then close; wait while the transport
        sends what is queued (at most :data:`CLOSE_TIMEOUT` seconds) and, over TLS, while
        it closes."""
        self._closed_here = True
        if self.state is OPEN:
            self._send_control(OP_CLOSE, _U16.pack(NORMAL))
            if self._held is not None:
                self._uncork()  # what cork() held (a comm handshake) goes before the close
            self.state = CLOSING
            if not self._ended:
                self._ended = True
                self._error = CommClosedError(f"the comm with {self.peer} was closed")
            self._wake()
        elif self.state is UPGRADING:
            self.abort()
            return
        self._stop_timers()
        transport = self.transport
        if transport is None:
            self.abort()
            return
        try:
            pending = transport.get_write_buffer_size()
        except AttributeError:  # Python 3.10's TLS transport, once its connection is gone
            pending = 0
        tls = transport.get_extra_info("ssl_object") is not None
        transport.close()
        lost = self._lost
        # With nothing queued, the close frame is with the kernel, which delivers it before
        # the FIN: nothing to wait for, unless TLS closes with an exchange of its own (so
        # that no socket outlives a loop closed after it).
        if lost is not None and not lost.done() and (pending or tls):
            assert self._loop is not None
            timer = self._loop.call_later(CLOSE_TIMEOUT, self.abort)
            try:
                await asyncio.shield(lost)  # a cancelled close() leaves the closing alone
            finally:
                timer.cancel()

    def abort(self) -> None:
        """Close at once, dropping what is queued."""
        self._closed_here = True
        if not self._ended:
            self._ended = True
            self._error = CommClosedError(f"the comm with {self.peer} was aborted")
        self._wake()
        self._stop_timers()
        corked, self._corked = self._corked, None
        if corked is not None:  # what cork() held is dropped too
            corked.cancel()
            self._held = None
        if self.state is not CLOSED:
            self.state = CLOSING if self.transport is not None else CLOSED
            if self.transport is not None:
                self.transport.abort()
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(
                CommClosedError(f"the WebSocket connection with {self.peer} was aborted")
            )
            self.opened.exception()  # retrieved: nobody may wait for it any more

    def is_closed(self) -> bool:
        """Whether this side closed, or the connection ended and every message was read."""
        return self._closed_here or (self._ended and not self._queue and self._reported)

    # -- keepalive ---------------------------------------------------------------------------

    def set_deadline(self, when: float) -> None:
        """Drop the connection if its upgrade is not done at *when* (the loop's clock)."""
        assert self._loop is not None
        self._deadline = self._loop.call_at(when, self.expire)

    def _stop_timers(self) -> None:
        for timer in (self._timer, self._deadline):
            if timer is not None:
                timer.cancel()
        self._timer = self._deadline = None

    def _tick(self) -> None:
        self._timer = None
        if self.state is not OPEN or self._loop is None or self.ping_interval is None:
            return
        if self._heard:
            self._heard = False
            self._pinged = False
            self._timer = self._loop.call_later(self.ping_interval, self._tick)
            return
        if self._reading_paused:
            # Our reader is slow: pongs would wait unread, so the peer is not judged; tell
            # it that this side lives.
            self._send_control(OP_PONG, b"")
            self._pinged = False
            self._timer = self._loop.call_later(self.ping_interval, self._tick)
            return
        if self._pinged:
            timeout = self.ping_timeout
            if not self._ended:
                self._ended = True
                self._error = CommClosedError(
                    f"{self.peer} did not answer a WebSocket ping within {timeout:g}s "
                    f"(keepalive: ping_interval={self.ping_interval:g}s): the connection "
                    "is considered dead"
                )
            self.abort()
            return
        self._send_control(OP_PING, b"comm")
        self._pinged = True
        self._timer = self._loop.call_later(self.ping_timeout or self.ping_interval, self._tick)


def _again(error: Exception) -> Exception:
    """A fresh copy of *error* to raise again (an exception raised twice grows its traceback)."""
    if isinstance(error, MessageTooLargeError):
        return MessageTooLargeError(str(error), size=error.size, limit=error.limit)
    copy = type(error)(str(error))
    copy.__cause__ = error.__cause__
    return copy
