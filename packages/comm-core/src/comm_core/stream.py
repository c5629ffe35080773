"""A comm over any asyncio stream transport, speaking :mod:`comm_core.protocol`.

:class:`StreamComm` is at once the :class:`~comm_core.Comm` users hold and the
:class:`asyncio.BufferedProtocol` the event loop feeds, so a message costs one
``recv_into`` and no intermediate copies. comm-tcp and comm-tls build on it,
and so can third-party stream transports (Unix sockets, pipes, ...)::

    comm = StreamComm(scheme="unix")
    await loop.create_unix_connection(lambda: comm, path)

Writes made during one event loop iteration go out together in one system
call; large buffers are sent without copying. ``write()`` waits while more
than ``write_high_water`` bytes are queued for the peer, and reading pauses
while the messages waiting unread take more than ``read_high_water`` bytes of
memory (their frames' bytes, plus what each message and frame costs besides:
see :func:`held_bytes`), so memory stays bounded whatever the peer's speed and
however small its messages.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import weakref
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any, cast

from comm_core._addressing import unparse_address
from comm_core._families import REGISTERED_FAMILIES
from comm_core._options import Options
from comm_core._ratelimit import LogLimiter
from comm_core.abc import Comm, CommHandler, Listener, OnError
from comm_core.exceptions import CommClosedError, CommError, ProtocolError
from comm_core.protocol import (
    BY_REFERENCE,
    MAX_FIRST_MESSAGE,
    PREAMBLE,
    Decoder,
    Encoder,
    Encoders,
    FrameDecoder,
    FrameReferences,
    control_record,
)
from comm_core.session import ServerSession
from comm_core.transport import StreamTransportBase

__all__ = ["StreamAcceptor", "StreamComm", "StreamProtocol", "format_sockaddr", "held_bytes"]

logger = logging.getLogger("comm_core.stream")

_WRITELINES_ZERO_COPY = sys.version_info >= (3, 12)
#: Large buffers go to a transport that copies (Python < 3.12) in slices this big.
_SLICE = 1024 * 1024
_LARGE = 1024 * 1024  # buffers at least this long are written apart from small ones
#: What a message waiting unread costs besides its frames' bytes: its list of frames
#: and its place in the queue (a list of one frame takes 64 bytes, its array of items
#: 16 and the queue 8, on CPython 3.10 to 3.13, with pymalloc's rounding) ...
_MESSAGE_COST = 96
#: ... and what each frame costs besides its bytes: a ``bytes`` object's header (33
#: bytes, 48 once rounded) and its place in the list.
_FRAME_COST = 64
#: Until the comm's first message (the handshake) has been read, reading pauses once
#: this many bytes wait unread: a peer not yet known cannot make us hold more.
_FIRST_READ_LIMIT = MAX_FIRST_MESSAGE
#: How long a dialing comm holds its preamble and handshake while it waits for the
#: listener's (comm listeners speak first); then they go out anyway, for a peer that
#: waits to be spoken to (and is then found not to be a comm endpoint, at once).
_HOLD_HANDSHAKE = 0.05


def held_bytes(frames: list[Any]) -> int:
    """The memory counted against ``read_high_water`` for a message of *frames* waiting
    unread: its frames' bytes, plus 96 bytes for the message and 64 for each frame
    (CPython's objects that hold them)."""
    if len(frames) == 1:
        return len(frames[0]) + (_MESSAGE_COST + _FRAME_COST)
    return sum(map(len, frames)) + _MESSAGE_COST + _FRAME_COST * len(frames)


def format_sockaddr(scheme: str, sockaddr: Any) -> str:
    """Turn a socket address (``getsockname()`` form) into a comm URI."""
    if type(sockaddr) is tuple and len(sockaddr) >= 2:
        host = sockaddr[0]
        if ":" in host:
            return f"{scheme}://[{host}]:{sockaddr[1]}"
        return f"{scheme}://{host}:{sockaddr[1]}"
    if isinstance(sockaddr, bytes):
        sockaddr = sockaddr.decode(errors="replace")
    return unparse_address(scheme, str(sockaddr or ""))


class StreamProtocol(asyncio.BufferedProtocol):
    """The state of a :class:`StreamComm` and the event loop's side of it: framing,
    queues, flow control, and the write policy.

    The comm is a facade over a few methods of its protocol: :meth:`next_message`
    (what ``read()`` awaits, then decodes), :meth:`write_message` (what
    ``write()`` does with a message and the encoder it chose),
    :meth:`queue_handshake`, :meth:`close` and :meth:`abort`. Everything else
    here is the transport's side (asyncio's protocol callbacks) or state that
    only these methods change; the attributes are public for transports and
    tests to read.

    It holds no reference to its comm once the comm is established, so the
    transport (which holds the protocol) does not keep the comm alive.
    """

    #: The largest message written to the transport in one piece. ``None``: any size,
    #: and large buffers whole on Python 3.12+ (zero-copy), in 1 MiB slices before.
    #: Transports that copy anyway and take an ``int`` size (TLS: OpenSSL) set a cap
    #: below 2 GiB; their large buffers always go in slices of at most 1 MiB.
    max_write_chunk: int | None = None
    #: Whether the transport sends large buffers from the caller's memory, keeping a
    #: reference while it cannot send them at once, rather than copying the rest.
    #: ``None``: as asyncio's socket transport does, on Python 3.12+. A transport that
    #: does (comm-tcp's and comm-tls's own) gets large buffers whole, or in
    #: ``max_write_chunk`` slices handed over at once, and the small messages written
    #: in one loop iteration in one ``writelines()`` call.
    zero_copy_writes: bool | None = None
    #: For a comm a listener accepted: the event loop time by which everything before
    #: its user's handler (a transport's own handshake, such as TLS's, the preamble and
    #: the comm handshake) must be done. Set by :class:`StreamAcceptor`.
    deadline: float | None = None
    #: Called with the protocol when its connection is lost, once; set by
    #: :class:`StreamAcceptor` until the comm is done with its handshake.
    on_lost: Callable[[StreamProtocol], None] | None = None
    #: Whether this side's handshake message may wait to leave with the first write
    #: (see :meth:`queue_handshake`): a dialer's may, since a comm listener sends its
    #: own without waiting for it. ``False`` where the listener reads the dialer's
    #: first (a same-host path behind a token), at both ends: this side's then leaves
    #: at the end of the loop iteration.
    peer_speaks_first: bool = True

    def __init__(
        self,
        comm: StreamComm,
        *,
        max_message_size: int,
        write_high_water: int,
        read_high_water: int,
        on_established: Callable[[StreamComm], None] | None,
    ) -> None:
        self.scheme = comm.scheme
        self.max_message_size = max_message_size
        self.write_high_water = write_high_water
        self.read_high_water = read_high_water
        # Held only until the peer's preamble arrives, for on_established.
        self._pending_comm: StreamComm | None = comm if on_established is not None else None
        self._on_established = on_established
        self.loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.local = f"{self.scheme}://"
        self.peer = f"{self.scheme}://"
        self.decoder = FrameDecoder(
            self.on_message,
            max_message_size=max_message_size,
            first_message_limit=MAX_FIRST_MESSAGE,  # the handshake: reserve little for it
        )
        self.established = False
        #: The frames of each message received and not read yet.
        self.ready: deque[list[Any]] = deque()
        #: What they hold (see held_bytes()).
        self.ready_bytes = 0
        #: Reading pauses when ready_bytes exceeds this: read_high_water, or less until
        #: the first message has been read.
        self.read_limit = min(read_high_water, _FIRST_READ_LIMIT)
        self.reading_paused = False
        self.waiter: asyncio.Future[list[Any]] | None = None
        self.out: list[Any] = []
        self.out_size = 0
        #: Bytes a listener sends right after the preamble, before hearing from the
        #: peer (comm-core's handshake message); see StreamAcceptor.
        self.greeting: bytes | None = None
        #: What send_greeting() left for connection_made() to send (``b""``: nothing).
        self.greeting_rest: bytes | None = None
        #: Makes :attr:`greeting` when the connection is made, if it is made for each
        #: comm then (see StreamAcceptor.accept).
        self.greet_when_made: Callable[[], None] | None = None
        # The preamble waits in self.out for the first write (or read, or close),
        # so that it leaves with it in one system call.
        self.preamble_pending = False
        # Set by queue_handshake(): the next read does not flush at once ...
        self.hold_handshake = False
        # ... but arms this timer, which flushes if the peer's handshake is late.
        self.hold: asyncio.TimerHandle | None = None
        self.flush_handle: asyncio.Handle | None = None
        # True once a write went out since the last read or flush: later writes gather.
        self.burst = False
        self.write_paused = False
        # Writers waiting for the transport to drain (several if writes run concurrently).
        self.drain_waiters: list[asyncio.Future[None]] = []
        # Set while a write hands a message to the transport in pieces and waits in
        # between: other writes wait for it, so that no message is cut into.
        self.piecewise: asyncio.Future[None] | None = None
        #: Sends large out-of-band frames by reference (shared memory), for a transport
        #: that can: see :class:`~comm_core.protocol.FrameReferences`. ``None``: never.
        self.references: FrameReferences | None = None
        # Control records that wait for the message being handed over piecewise.
        self.controls: list[bytes] = []
        self.closing = False  # close() or abort() was called on this side
        self.peer_gone = False  # EOF, connection lost, or a protocol error
        self.error: BaseException | None = None  # why the comm ended, if not by us
        self.lost: asyncio.Future[None] | None = None
        #: Logs the drop of a connection that broke the protocol before its preamble
        #: was accepted, as ``logger.log`` does; a listener sets a rate-limited one
        #: (peers cause those lines). ``None``: one warning each.
        self.log_drop: Callable[..., None] | None = None
        # The transport asks the decoder for its buffer directly: one call less for
        # every read from the socket.
        self.get_buffer = self.decoder.get_buffer  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.local} -> {self.peer}>"

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(transport, asyncio.Transport): uvloop's transports do not
        # derive from asyncio's classes, yet have the same methods.
        self.transport = cast("asyncio.Transport", transport)
        self.loop = asyncio.get_running_loop()
        self.lost = self.loop.create_future()
        if self.closing:  # aborted before its transport came (a listener dropped it)
            self.greet_when_made = None
            self.transport.abort()
            return
        self.local = format_sockaddr(self.scheme, transport.get_extra_info("sockname"))
        self.peer = format_sockaddr(self.scheme, transport.get_extra_info("peername"))
        self.decoder.peer = self.peer
        self.transport.set_write_buffer_limits(high=self.write_high_water)
        late = self.greet_when_made
        if late is not None:
            self.greet_when_made = None
            late()  # sets self.greeting
        if self.greeting is not None:
            self.transport.write(PREAMBLE + self.greeting)
            self.greeting = None
        elif self.greeting_rest is not None:  # send_greeting() sent the preamble
            if self.greeting_rest:
                self.transport.write(self.greeting_rest)
            self.greeting_rest = None
        else:
            self.out.append(PREAMBLE)
            self.out_size += len(PREAMBLE)
            self.preamble_pending = True

    def greet(self, greeting: bytes) -> None:
        """Send *greeting* (this side's encoded handshake message) right after the
        preamble, as soon as the connection is made (see :meth:`StreamComm.greet`)."""
        self.greeting = greeting

    def send_greeting(self, sock: socket.socket) -> None:
        """Send the preamble and :attr:`greeting` on *sock* before a transport has it.

        For a listener that holds the accepted socket before it makes the
        transport: the greeting then leaves one event loop iteration before
        ``connection_made()`` would send it. A fresh connection's send buffer
        takes it all; whatever it does not take, ``connection_made()`` sends.
        Does nothing if there is no greeting, or if the socket fails (the
        transport reports that).
        """
        greeting = self.greeting
        if greeting is None:
            return
        data = PREAMBLE + greeting
        try:
            sent = sock.send(data)
        except OSError:  # would block, or the connection failed: leave it to the transport
            return
        self.greeting = None
        self.greeting_rest = data[sent:]

    def greeted(self, data: bytes, sent: int) -> None:
        """The listener sent the first *sent* bytes of *data* on the socket already.

        *data* must be what this comm would send first (see
        :meth:`StreamAcceptor.greeting`); ``connection_made()`` sends the rest.

        Raises:
            RuntimeError: *data* is not this comm's greeting (the listener must
                then close the connection, which carries bytes not its comm's).
        """
        greeting = self.greeting
        if (
            greeting is None
            or len(data) != len(PREAMBLE) + len(greeting)
            or not data.startswith(PREAMBLE)
            or not data.endswith(greeting)
        ):
            raise RuntimeError("the listener sent a greeting that is not this comm's")
        self.greeting = None
        self.greeting_rest = data[sent:]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            if self.ready and not self.established:
                # The peer's first message (its handshake) came whole before what broke
                # the protocol, in the same read: its comm goes to the handler as usual,
                # whose read then raises the error, as it would had the rest come in a
                # later read (a dialer sends its handshake with its first message).
                self._establish()
            self.fail(exc)
            return
        if not self.established and not self.decoder.expecting_preamble:
            self._establish()

    def _establish(self) -> None:
        self.established = True
        comm, self._pending_comm = self._pending_comm, None
        if self._on_established is not None and comm is not None:
            self._on_established(comm)

    def on_message(self, frames: list[Any]) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            self.read_limit = self.read_high_water  # the first message is read
            waiter.set_result(frames)
            if self.hold is not None:
                # After the reader's wake-up: the flush it schedules must run after the
                # reader's next step (which may write, taking the handshake along).
                self._handshake_read()
            return
        self.ready.append(frames)
        self.ready_bytes += held_bytes(frames)
        if self.ready_bytes > self.read_limit and not self.reading_paused:
            self.pause_reading()

    def pause_reading(self) -> None:
        """Take no more messages from the peer until :meth:`resume_reading`.

        The decoder delivers no further message (what arrives meanwhile stays
        undecoded in its buffer), and the transport stops reading, so the peer's
        writes soon wait on TCP's flow control.
        """
        self.reading_paused = True
        self.decoder.pause()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Take messages again: first those already received, then from the transport
        (unless they take the comm past its limit again)."""
        self.reading_paused = False
        try:
            self.decoder.resume()
        except ProtocolError as exc:
            self.fail(exc)
            return
        if not self.reading_paused and self.transport is not None and not self.peer_gone:
            self.transport.resume_reading()

    def eof_received(self) -> bool | None:
        self.peer_gone = True
        self.wake_reader()
        return False  # close our side too

    # -- reading: what StreamComm.read() asks --------------------------------------------------

    def is_closed(self) -> bool:
        """Whether the comm is closed, by this side or the peer, or not connected (yet)."""
        return self.closing or self.peer_gone or self.transport is None

    def message_waiting(self) -> bool:
        """Whether a message was received and not read yet."""
        return bool(self.ready)

    def next_message(self) -> list[Any] | asyncio.Future[list[Any]]:
        """The frames of the next message, or a future they will be the result of.

        Takes a message received already (resuming reading if that brings the
        messages waiting below half of ``read_high_water``); else flushes what
        the peer may be waiting for (the preamble, or, once the handshake is
        read, this side's handshake) and returns a future for the next
        message. Cancelling the future is the caller's to handle: it must
        :meth:`abort`, since its place in the stream is lost.

        Raises:
            CommClosedError: nothing is left to read (the comm is closed, the
                peer closed it, or it is not connected).
            ProtocolError: the peer broke the protocol.
            RuntimeError: another read is waiting.
        """
        self.burst = False
        ready = self.ready
        if self.hold_handshake and not ready:
            self._read_greeting_now()
        if ready:
            frames = ready.popleft()
            self.ready_bytes -= held_bytes(frames)
            self.read_limit = self.read_high_water  # the first message is read
            if self.reading_paused and self.ready_bytes <= self.read_limit // 2:
                self.resume_reading()
            return frames
        loop = self.loop
        if self.closing or self.peer_gone or loop is None:
            if loop is None and not self.closing:
                raise CommClosedError(f"comm {self.local} -> {self.peer} is not connected")
            raise self.read_error()
        if self.waiter is not None:
            raise RuntimeError(
                f"comm {self.local} -> {self.peer}: read() called while another read() is waiting"
            )
        if self.preamble_pending:
            if self.hold_handshake:  # see queue_handshake()
                self.hold_handshake = False
                self.hold = loop.call_later(_HOLD_HANDSHAKE, self._hold_expired)
            else:
                self.flush()  # the peer may be waiting for it before it says anything
        waiter = self.waiter = loop.create_future()
        return waiter

    def undecodable(self, exc: ProtocolError) -> ProtocolError:
        """A message read could not be decoded (*exc*): abort, and return the error to
        raise, which names the peer (the decoder does not know whose message it was)."""
        error = ProtocolError(f"{self.peer} sent a message that breaks the protocol: {exc}")
        self.error = error
        self.abort()
        return error

    def _hold_expired(self) -> None:
        """The peer's handshake is late: send what the handshake held back after all."""
        self.hold = None
        self.flush()

    def _handshake_read(self) -> None:
        """The peer's handshake came while this side's was held back (see
        :meth:`queue_handshake`): what it held leaves with a write made in this loop
        iteration, or else at its end (a listener drops a dialer that stays silent
        past its handshake timeout)."""
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.cancel()
        if self.preamble_pending and self.flush_handle is None and self.loop is not None:
            self.flush_handle = self.loop.call_soon(self.flush)

    def _read_greeting_now(self) -> None:
        """Take the listener's greeting from the socket now, if it is there already.

        The handshake read of a dialing comm usually finds it there (the
        listener sends it on accepting). A transport derived from
        :class:`~comm_core.transport.StreamTransportBase` reads at once what the
        socket holds (its ``read_now()``), which saves the comm a wait for the
        event loop's next iteration.
        """
        transport = self.transport
        if not isinstance(transport, StreamTransportBase):
            return
        transport.read_now()
        if self.ready:
            self.hold_handshake = False
            if self.preamble_pending and self.flush_handle is None:
                # As when the greeting came during the handshake: what the handshake
                # held leaves with a write made in this loop iteration, or at its end.
                assert self.loop is not None
                self.flush_handle = self.loop.call_soon(self.flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer_gone = True
        self._pending_comm = None
        on_lost = self.on_lost
        if on_lost is not None:
            self.on_lost = None
            on_lost(self)
        if self.decoder.paused and not self.closing and self.error is None:
            # What the peer sent before it went can still be read: decode what the
            # paused decoder holds (reading_paused stays set, so it is not paused again).
            try:
                self.decoder.resume()
            except ProtocolError as error:
                self.error = error
        self.decoder.detach()  # it holds self.on_message: a cycle
        if exc is not None and self.error is None and not self.closing:
            self.error = exc
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.out.clear()
        self.wake_reader()
        self.wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.wake_writer()

    # -- state changes --------------------------------------------------------------------

    def closed_error(self) -> CommClosedError:
        """The error for an operation on a closed comm, saying who closed it and why."""
        if self.closing:
            return CommClosedError(f"comm {self.local} -> {self.peer} was closed by this side")
        error = self.error
        if isinstance(error, ProtocolError):
            return CommClosedError(f"comm with {self.peer} was closed: {error}")
        if error is not None:
            return CommClosedError(
                f"connection to {self.peer} was lost: {type(error).__name__}: {error}"
            )
        return CommClosedError(f"comm with {self.peer} was closed by the peer")

    def read_error(self) -> BaseException:
        """What a read raises once nothing is left to read."""
        if isinstance(self.error, ProtocolError) and not self.closing:
            return self.error
        exc = self.closed_error()
        exc.__cause__ = self.error
        return exc

    def wake_reader(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.cancel()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_exception(self.read_error())

    def wake_writer(self) -> None:
        if self.drain_waiters:
            waiters, self.drain_waiters = self.drain_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def fail(self, exc: ProtocolError) -> None:
        """The peer broke the protocol: drop the connection, keep the reason for readers."""
        if self.error is None:
            self.error = exc
        if not self.established:
            log_drop = self.log_drop
            if log_drop is None:
                logger.warning("dropped a connection from %s: %s", self.peer, exc)
            else:
                log_drop(logging.WARNING, "dropped a connection from %s: %s", self.peer, exc)
        else:
            logger.info("closing comm with %s: %s", self.peer, exc)
        if self.transport is not None:
            self.transport.abort()
        self.peer_gone = True
        self.wake_reader()

    def abort(self) -> None:
        self.closing = True
        self._pending_comm = None
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        # Not once the connection is lost: asyncio's transports may then raise
        # AttributeError (after a close() that had to flush first).
        if self.transport is not None and not (self.lost is not None and self.lost.done()):
            self.transport.abort()
        self.wake_reader()
        self.wake_writer()

    # -- writing: what StreamComm.write() asks -------------------------------------------------

    def write_message(self, encoder: Encoder, msg: Any) -> int | Coroutine[Any, Any, int]:
        """Encode *msg* with *encoder* and hand it to the transport; its size in bytes.

        Returns the size if the message is with the transport and nothing is
        left to wait for, else a coroutine that the caller awaits for it: it
        finishes handing the message over, then waits while the transport
        holds more than ``write_high_water`` bytes. Cancelling that coroutine
        leaves the stream's position unknown: the caller must :meth:`abort`.

        The write policy: a small message written after a read (request and
        response) leaves at once, with no callback; messages that follow
        without a read in between gather and leave together, in one system
        call, at the end of the loop iteration (or once ``write_high_water``
        bytes gathered); the first message takes the preamble along. A message
        of several buffers, or one above :attr:`max_write_chunk`, goes out
        piecewise, large buffers without a copy, and other writes wait for it.

        Raises:
            CommClosedError: the comm is closed or not connected (checked before
                encoding). A transport that hit a fatal error is closing before
                ``connection_lost()`` runs (on a later loop iteration) and drops
                what it is given: this raises then too, or a writer that never
                has to wait would write into the void for ever.
            SerializationError, MessageTooLargeError: as *encoder* raises them;
                nothing was sent.
        """
        transport = self.transport
        if self.closing or self.peer_gone or transport is None or transport.is_closing():
            if transport is None and not self.closing:
                raise CommClosedError(f"comm {self.local} -> {self.peer} is not connected")
            raise self.closed_error() from self.error
        buffers, nbytes = encoder.encode(msg)
        cap = self.max_write_chunk
        if self.piecewise is not None or len(buffers) != 1 or (cap is not None and nbytes > cap):
            references = self.references
            if references is not None and len(buffers) > 1 and references.writing:
                threshold = references.threshold
                if any(memoryview(buf).nbytes >= threshold for buf in buffers[1:]):
                    return self._write_by_reference(references, buffers, nbytes)
            return self._write_piecewise(buffers, nbytes)
        # As _send(), inline: this is the path of nearly every message.
        out = self.out
        if not self.burst and not out:
            self.burst = True
            transport.write(buffers[0])
        elif self.preamble_pending:
            out.append(buffers[0])
            self.flush_now()
            self.burst = True
        else:
            out.append(buffers[0])
            self.out_size += nbytes
            if self.flush_handle is None:
                assert self.loop is not None
                self.flush_handle = self.loop.call_soon(self.flush)
            elif self.out_size >= self.write_high_water:
                self.flush_now()
        if self.write_paused:
            # The whole message is with the transport: if the comm closes while this
            # waits, the write is still done (close() sends it).
            return self._drained(nbytes)
        return nbytes

    def _send(self, transport: asyncio.Transport, data: Any, nbytes: int) -> None:
        """Hand one small message to *transport* now, or gather it (see :meth:`write_message`)."""
        out = self.out
        if not self.burst and not out:
            self.burst = True
            transport.write(data)
        elif self.preamble_pending:  # the first write: the preamble leaves with it
            out.append(data)
            self.flush_now()
            self.burst = True
        else:
            out.append(data)
            self.out_size += nbytes
            if self.flush_handle is None:
                assert self.loop is not None
                self.flush_handle = self.loop.call_soon(self.flush)
            elif self.out_size >= self.write_high_water:
                self.flush_now()

    async def _drained(self, nbytes: int) -> int:
        await self.drain(whole=True)
        return nbytes

    async def _write_piecewise(self, buffers: list[Any], nbytes: int) -> int:
        """:meth:`write_message` for a message that is not one small buffer, or that must
        wait for another write's to be handed over."""
        while self.piecewise is not None:  # another write is handing over a large message
            await asyncio.shield(self.piecewise)
            if self.closing or self.peer_gone:
                raise self.closed_error() from self.error
        cap = self.max_write_chunk
        if len(buffers) == 1 and (cap is None or nbytes <= cap):
            transport = self.transport
            assert transport is not None
            self._send(transport, buffers[0], nbytes)
        else:
            await self.write_buffers(buffers)
        if self.write_paused:
            await self.drain(whole=True)
        return nbytes

    async def _write_by_reference(
        self, references: FrameReferences, buffers: list[Any], nbytes: int
    ) -> int:
        """:meth:`write_message` for a message whose large out-of-band frames may go by
        reference: each is offered to *references* (which may wait for room), in
        order, while other writes wait; then the message goes out as any other."""
        while self.piecewise is not None:
            await asyncio.shield(self.piecewise)
        if self.closing or self.peer_gone:
            raise self.closed_error() from self.error
        assert self.loop is not None
        piecewise = self.piecewise = self.loop.create_future()
        try:
            threshold = references.threshold
            header: bytearray | None = None
            out = [buffers[0]]
            for index in range(1, len(buffers)):
                view = memoryview(buffers[index])
                size = view.nbytes
                if size >= threshold:
                    if view.ndim != 1 or view.itemsize != 1:
                        view = view.cast("B")
                    reference = await references.place(view)
                    if self.closing or self.peer_gone:
                        raise self.closed_error() from self.error
                    if reference is not None:
                        if header is None:
                            header = bytearray(buffers[0])
                        struct.pack_into("<Q", header, 4 + 8 * index, size | BY_REFERENCE)
                        out.append(reference)
                        continue
                out.append(buffers[index])
            if header is not None:
                out[0] = header
        finally:
            self.piecewise = None
            piecewise.set_result(None)
            self._send_controls()
        return await self._write_piecewise(out, nbytes)

    def send_control(self, kind: int, payload: bytes) -> None:
        """Send a control record (see :class:`~comm_core.protocol.FrameReferences`) between
        messages: now, or after the message being handed over. Dropped once the comm
        is closed. For transports; never call it from a transport's own write path.

        Raises:
            ValueError: as :func:`~comm_core.protocol.control_record`.
        """
        record = control_record(kind, payload)
        if self.closing or self.peer_gone or self.transport is None:
            return
        self.controls.append(record)
        if self.piecewise is None:
            self._send_controls()

    def _send_controls(self) -> None:
        controls = self.controls
        transport = self.transport
        if not controls or transport is None or self.closing or self.peer_gone:
            controls.clear()
            return
        if self.piecewise is not None:
            return
        data = controls[0] if len(controls) == 1 else b"".join(controls)
        controls.clear()
        self._send(transport, data, len(data))

    def queue_handshake(self, buffers: list[Any], nbytes: int) -> bool:
        """Queue this side's encoded handshake message behind the preamble, to leave
        with the first write; ``False`` if it cannot be (the preamble left already, or
        the comm is closed): the caller writes it as any message. ``True`` without
        queueing anything if the peer broke the protocol already.

        A comm listener sends its preamble and handshake without waiting for the
        dialer's, so the dialer's can wait for its first message (or read, or
        close) and leave with it in one segment: the listener then wakes once
        for both, not twice. They are held for at most ``_HOLD_HANDSHAKE``
        seconds while the handshake waits for the listener's (for a peer that
        waits to be spoken to), and only until the end of the loop iteration in
        which the handshake completes.
        """
        if self.peer_gone and not self.closing and isinstance(self.error, ProtocolError):
            # The listener broke the protocol already (an oversized greeting, say):
            # nothing to send. The handshake's read raises that error, a HandshakeError
            # for connect(), where a write would raise CommClosedError, which
            # connect() retries.
            return True
        if not self.preamble_pending or self.closing or self.peer_gone or self.transport is None:
            return False
        self.out.extend(buffers)
        self.out_size += nbytes
        if not self.ready and self.peer_speaks_first:
            self.hold_handshake = True  # next_message() sees to the rest
        elif self.flush_handle is None:  # the listener's is here: the read will not wait
            assert self.loop is not None
            self.flush_handle = self.loop.call_soon(self.flush)
        return True

    def flush_now(self) -> None:
        """:meth:`flush`, and drop the flush scheduled for the end of the iteration, if any."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        self.flush()

    def flush(self) -> None:
        """Hand what writes gathered during this loop iteration to the transport."""
        self.flush_handle = None
        self.burst = False
        self.preamble_pending = False
        out = self.out
        if not out or self.transport is None:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        elif self.zero_copy_writes or (self.zero_copy_writes is None and _WRITELINES_ZERO_COPY):
            transport = self.transport
            transport.writelines(out)
            if not self.write_paused and transport.get_write_buffer_size() > self.write_high_water:
                # asyncio's socket transport (3.12, 3.13) does not pause its protocol
                # in writelines() as it does in write(); setting the limits checks.
                transport.set_write_buffer_limits(high=self.write_high_water)
        else:
            self.transport.write(b"".join(out))
        self.out = []
        self.out_size = 0

    async def drain(self, whole: bool = False) -> None:
        """Wait while the transport holds more than its high-water mark.

        Raises :class:`CommClosedError` once the connection is gone (what was
        still queued is lost with it), or at once if this side closes while
        the message being written is not *whole* with the transport (its rest
        will never be sent). A *whole* one waits on while ``close()`` flushes,
        so that what ``write()`` says holds (see ``Comm.write``): a write that
        raises did not deliver its message; one that returns handed all of it
        to the transport.
        """
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush()
        while self.write_paused:
            if self.peer_gone or (self.closing and not whole):
                raise self.closed_error() from self.error
            assert self.loop is not None
            waiter = self.loop.create_future()
            self.drain_waiters.append(waiter)
            await waiter
        if self.peer_gone and not self.closing and not whole:
            raise self.closed_error() from self.error

    async def write_buffers(self, buffers: list[Any]) -> None:
        """Write a message with out-of-band frames, large ones without copying.

        Other writes wait until the whole message is with the transport
        (:attr:`piecewise`), since this one may wait for the transport between
        its frames.
        """
        transport = self.transport
        assert transport is not None
        assert self.loop is not None
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        cap = self.max_write_chunk
        self.piecewise = self.loop.create_future()
        last = len(buffers) - 1
        try:
            for index, buf in enumerate(buffers):
                size = memoryview(buf).nbytes
                if size < _LARGE:
                    self.out.append(buf)
                    continue
                self.flush()
                zero_copy = self.zero_copy_writes
                if zero_copy is None:
                    zero_copy = _WRITELINES_ZERO_COPY and cap is None
                if zero_copy:
                    if cap is None or size <= cap:
                        transport.write(buf)
                    else:
                        view = memoryview(buf).cast("B")
                        for offset in range(0, size, cap):
                            transport.write(view[offset : offset + cap])
                    if self.write_paused:
                        await self.drain(whole=index == last)
                    continue
                step = _SLICE if cap is None else min(cap, _SLICE)
                await self._write_sliced(transport, memoryview(buf), step, index == last)
            self.flush()
        finally:
            piecewise, self.piecewise = self.piecewise, None
            piecewise.set_result(None)
            if self.controls:
                self._send_controls()

    def close(self, timeout: float, wait: bool) -> Coroutine[Any, Any, None] | None:
        """Send what was written, then close; ``None`` if nothing is left to wait for,
        else a coroutine to await until the transport is done (at most *timeout*
        seconds, then it aborts).

        Everything is with the kernel (which delivers it before the FIN) unless
        the transport still holds some, or *wait* (a transport whose close runs
        an exchange of its own, as TLS's close_notify, so that no socket outlives
        a loop closed after it). Idempotent.
        """
        if self.closing:
            return None
        self.closing = True
        transport = self.transport
        if transport is None:
            return None
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        if not self.peer_gone:
            self.flush()
        try:
            pending = transport.get_write_buffer_size()
        except AttributeError:  # Python 3.10's TLS transport, once its connection is gone
            pending = 0
        transport.close()
        self.wake_reader()
        self.wake_writer()
        lost = self.lost
        if lost is None or lost.done() or not (pending or wait):
            return None
        return self._closed(transport, lost, timeout)

    async def _closed(
        self, transport: asyncio.Transport, lost: asyncio.Future[None], timeout: float
    ) -> None:
        """Wait until the transport has flushed, but not for ever on a peer that does
        not read."""
        assert self.loop is not None
        timer = self.loop.call_later(timeout, transport.abort)
        try:
            await lost
        except asyncio.CancelledError:
            transport.abort()
            raise
        finally:
            timer.cancel()

    async def _write_sliced(
        self, transport: asyncio.Transport, view: memoryview, step: int, last: bool
    ) -> None:
        """Write a large buffer through a transport that copies what it cannot send at once.

        asyncio's socket transport before Python 3.12 sends from the caller's
        buffer only while its own is empty, and copies the rest; TLS transports
        encrypt into buffers of their own. So slices go out one at a time, each
        once the transport's buffer is empty: the kernel takes most of each
        straight from *view* (or from the TLS layer's buffer), only a slice's
        remainder is copied, and the buffers in between stay small. *last*: this
        is the message's last buffer (so its last slice completes the message).
        """
        high = self.write_high_water
        transport.set_write_buffer_limits(high=1)  # pause until the buffer is empty
        try:
            size = view.nbytes
            for offset in range(0, size, step):
                transport.write(view[offset : offset + step])
                if self.write_paused:
                    await self.drain(whole=last and offset + step >= size)
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high)


class StreamComm(Comm):
    """A comm over an asyncio stream transport, speaking the comm wire protocol.

    Create it, then let the event loop connect :attr:`protocol` to a transport
    (``loop.create_connection(lambda: comm.protocol, ...)``, or a server's
    protocol factory).

    Args:
        scheme: the URI scheme used for :attr:`local_address` and :attr:`peer_address`.
        deserialize: deserialize custom payloads on read.
        max_message_size: the largest message sent or accepted; default:
            *options*' ``max_message_size``.
        write_high_water: ``write()`` waits while more bytes than this are queued.
        read_high_water: reading from the transport pauses while the messages
            waiting unread in the comm hold more than this many bytes of memory
            (see :func:`held_bytes`), and resumes once they hold half as much.
            Until the first message (the handshake) has been read, it pauses
            above 64 KiB already.
        on_established: called with the comm once the peer's preamble is valid
            (listeners use it to start the handshake only for real comm peers).
        options: the settings the comm works with (its size and decoding
            limits, its serializer families), as ``connect()`` or ``listen()``
            resolved them for its connector or listener; default: the settings
            now in force (:class:`~comm_core.Options`).
    """

    protocol_class: type[StreamProtocol] = StreamProtocol
    #: Seconds ``close()`` waits for queued data to reach the peer before aborting.
    close_timeout: float = 10.0
    #: Whether ``close()`` always waits (up to :attr:`close_timeout`) for the transport to
    #: finish, not only while data is queued: for transports whose close runs an exchange
    #: of its own (TLS's close_notify), so that no socket outlives a loop closed after it.
    close_waits_for_transport: bool = False

    def __init__(
        self,
        *,
        scheme: str,
        deserialize: bool = True,
        max_message_size: int | None = None,
        write_high_water: int = 4 * 1024 * 1024,
        read_high_water: int = 64 * 1024 * 1024,
        on_established: Callable[[StreamComm], None] | None = None,
        options: Options | None = None,
    ) -> None:
        super().__init__(deserialize=deserialize)
        self.scheme = scheme
        if options is None:
            options = Options()
        #: The settings this comm works with.
        self.options = options
        if max_message_size is None:
            max_message_size = options.max_message_size
        self.max_message_size = max_message_size
        #: The asyncio protocol to connect to a transport.
        self.protocol = self.protocol_class(
            self,
            max_message_size=max_message_size,
            write_high_water=write_high_water,
            read_high_water=read_high_water,
            on_established=on_established,
        )
        #: The serializer families values of other types may use: those of *options*,
        #: else the registry's.
        self.families = REGISTERED_FAMILIES if options.families is None else options.families
        self._encoders = Encoders(self.families, max_message_size, options.max_message_depth)
        self._encoder: Encoder | None = None  # for writes with the default families
        self._decoder = Decoder(
            self.families,
            deserialize=deserialize,
            max_depth=options.max_message_depth,
            max_expansion=options.max_message_expansion,
        )

    @property
    def transport(self) -> asyncio.Transport | None:
        """The transport, once connected."""
        return self.protocol.transport

    @property
    def local_address(self) -> str:
        return self.protocol.local

    @property
    def peer_address(self) -> str:
        return self.protocol.peer

    @property
    def extra_info(self) -> Mapping[str, Any]:
        transport = self.protocol.transport
        if transport is None:
            return {}
        return {
            "sockname": transport.get_extra_info("sockname"),
            "peername": transport.get_extra_info("peername"),
            "max_message_size": self.max_message_size,
        }

    def closed(self) -> bool:
        return self.protocol.is_closed()

    def message_waiting(self) -> bool:
        """Whether a message waits unread: :meth:`read` returns it at once."""
        return self.protocol.message_waiting()

    def greet(self, info: Mapping[str, Any], encoded: bytes | None = None) -> bytes | None:
        """Send *info*, this side's handshake message, right after the preamble, as soon
        as the connection is made, without waiting for the peer's.

        For a listener's comm (see :class:`StreamAcceptor`), before its transport
        is connected: the peer then has the message one round trip sooner, and
        the handshake only reads the peer's (:attr:`~comm_core.Comm.early_handshake`).
        *encoded* is *info*'s encoding if known (the same for every comm of a
        listener); else it is encoded here. Returns the encoding, or ``None``
        if *info* cannot be encoded (then nothing is sent early, and the
        handshake reports the problem).
        """
        if encoded is None:
            try:
                buffers, _ = self._encoder_for(None, "raise").encode(info)
            except CommError:
                return None
            encoded = b"".join(buffers)
        self.protocol.greet(encoded)
        self.set_early_handshake(info)
        return encoded

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        frames = self.protocol.next_message()
        if type(frames) is not list:  # a future: wait for the message
            try:
                frames = await frames  # type: ignore[misc]
            except BaseException as exc:
                # The future holds the error, whose traceback holds this frame: drop
                # it, so that they are not a reference cycle.
                del frames
                if isinstance(exc, asyncio.CancelledError):
                    self.abort()  # its place in the stream is lost
                raise
        try:
            return self._decoder.decode(frames, deserializers)
        except ProtocolError as exc:
            raise self.protocol.undecodable(exc) from exc

    async def send_handshake(self, info: Mapping[str, Any]) -> None:
        """Queue the handshake behind the preamble, to leave with the first write (see
        :meth:`StreamProtocol.queue_handshake`); write it if the preamble left already."""
        buffers, nbytes = self._encoder_for(None, "raise").encode(info)
        if not self.protocol.queue_handshake(buffers, nbytes):
            await self.write(info)

    def _encoder_for(self, serializers: Collection[str] | None, on_error: OnError) -> Encoder:
        encoders = self._encoders
        encoders.set_max_size(self.max_message_size)
        encoder = encoders.get(serializers, on_error)
        if serializers is None and on_error == "raise":
            self._encoder = encoder
        return encoder

    async def write(
        self,
        msg: Any,
        serializers: Collection[str] | None = None,
        on_error: OnError = "raise",
    ) -> int:
        encoder = self._encoder
        if encoder is None or serializers is not None or on_error != "raise":
            encoder = self._encoder_for(serializers, on_error)
        sent = self.protocol.write_message(encoder, msg)
        if type(sent) is int:
            return sent
        try:
            return await sent  # type: ignore[misc,no-any-return]
        except asyncio.CancelledError:
            self.abort()  # part of the message may be with the transport
            raise

    async def close(self) -> None:
        pending = self.protocol.close(self.close_timeout, self.close_waits_for_transport)
        if pending is not None:
            await pending

    def abort(self) -> None:
        self.protocol.abort()


#: How long a connection may take to answer a listener's greeting before it may be
#: dropped for max_pending_handshakes (see StreamAcceptor._make_room).
_GRACE = 0.25
#: How many of the oldest pending connections are looked at to find one to drop.
_SCAN = 32


def _progressing(protocol: StreamProtocol) -> bool:
    """Whether the peer of a pending connection shows signs of completing its handshake:
    its handshake message waits to be read, or bytes from it wait in the socket."""
    if protocol.ready:
        return True
    transport = protocol.transport
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        import fcntl
        import termios

        unread = bytearray(4)
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, unread)
    except (ImportError, OSError, ValueError, AttributeError):
        return False  # no way to know: treat it as silent
    return unread != bytearray(4)


class _LateGreeting:
    """Greets a comm with its session's greeting once its connection is made.

    Holds the comm weakly: its protocol holds this until then.
    """

    __slots__ = ("comm", "session")

    def __init__(self, session: ServerSession, comm: StreamComm) -> None:
        self.session = session
        self.comm = weakref.ref(comm)

    def __call__(self) -> None:
        comm = self.comm()
        if comm is not None:
            comm.greet(self.session.greeting(comm))


class StreamAcceptor:
    """What a stream listener does with each connection it accepts.

    Every stream transport's listener needs the same bookkeeping, so it lives
    here: a listener creates one acceptor, passes :meth:`established` as the
    ``on_established`` of each comm it makes for an accepted connection, and
    registers that comm with :meth:`accept`::

        def _protocol_factory(self):
            comm = StreamComm(scheme="unix", on_established=self.acceptor.established)
            return self.acceptor.accept(comm).protocol

    Each connection has :attr:`~comm_core.Listener.handshake_timeout` from the
    moment it is accepted to send the comm preamble and complete the comm
    handshake, both together (and whatever the transport runs first, such as
    TLS's handshake: :attr:`StreamProtocol.deadline` says until when). One
    that sends no preamble in time is dropped, with a log line naming it.
    Once the preamble arrives, the listener's ``handle_comm`` runs in a task
    of its own (the acceptor keeps it referenced).

    At most :attr:`~comm_core.Listener.max_pending_handshakes` connections
    are kept before their handshake is done: accepting one more drops the
    oldest that had :attr:`grace` seconds to answer its greeting and shows no
    sign of doing so, or refuses the new one if none may go (before greeting
    it, if the listener asks :meth:`admit` first), so that peers that connect
    and stay silent can neither take every file descriptor nor keep others
    out for long, and a good client is never cut off once it could believe
    its comm up. :meth:`close`, called from ``Listener.stop()``, drops none of
    them: each keeps its deadline and, once its handshake is done, is handed
    to ``handle_comm`` as usual (a stopped listener serves what it accepted).
    """

    def __init__(self, listener: Listener, handle_comm: CommHandler) -> None:
        self.listener = listener
        self.handle_comm = handle_comm
        #: *handle_comm* if it is the :class:`~comm_core.session.ServerSession` that
        #: :func:`comm_core.listen` passes: its comms then send its greeting with their
        #: preamble, and stay pending until its handshake is over. Another handler's
        #: comm is done once its preamble came.
        self.session = handle_comm if isinstance(handle_comm, ServerSession) else None
        #: Whether the listener stopped accepting (:meth:`close`); what it accepted
        #: before is still served.
        self.closed = False
        # The protocol of every comm accepted and not yet done with its handshake, with its
        # deadline (loop time), oldest first. (The protocols, not the comms: a protocol
        # does not keep its comm alive.) One timer serves them all: it fires at the first
        # deadline and is armed again for the next (a timer per connection would be made
        # and cancelled again for almost every connection).
        self._pending: dict[StreamProtocol, float] = {}
        # Those of them past their preamble, in the handshake run by the session's serve().
        self._handshaking: dict[StreamProtocol, asyncio.Task[None]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped_silent = LogLimiter(
            logger, "connections dropped for sending no comm preamble in time"
        )
        self._dropped_broken = LogLimiter(
            logger, "connections dropped for breaking the protocol before their handshake"
        )
        self._dropped_oldest = LogLimiter(
            logger, "connections dropped to keep within max_pending_handshakes", burst=1
        )
        # The handshake message every comm of this listener sends, its encoding, and
        # the preamble with it: the same for all while their class adds nothing to it
        # (handshake_options).
        self._greeting: tuple[Mapping[str, Any], bytes, bytes] | None = None
        #: Seconds a connection has to answer the greeting before it may be dropped to
        #: keep within max_pending_handshakes (at most a quarter of the handshake timeout).
        self.grace = _GRACE

    @property
    def pending(self) -> int:
        """How many connections are accepted and not yet done with their handshake."""
        return len(self._pending)

    def accept(self, comm: StreamComm) -> StreamComm:
        """Start *comm*'s deadline for the preamble and handshake; return *comm*.

        If the listener was made by :func:`comm_core.listen`, *comm*'s
        handshake message is encoded here and sent with the preamble as soon
        as the connection is made, without waiting for the peer's (as the
        protocol allows); the peer then has it one round trip sooner. If more
        than ``max_pending_handshakes`` connections are then not done with
        their handshake, the oldest of them is dropped.
        """
        cached = self._greeting
        protocol = comm.protocol
        session = self.session
        if session is None:
            pass  # no comm handshake of comm-core's
        elif not session.greets_early:
            # The handshake sends this side's message, once the peer's came: at once.
            protocol.peer_speaks_first = False
        elif not session.greets_alike:
            # Entries made for this comm alone: once its connection is up (after a
            # TLS handshake, say), just before the greeting leaves.
            protocol.greet_when_made = _LateGreeting(session, comm)
        elif cached is not None and type(comm).handshake_options is Comm.handshake_options:
            comm.greet(cached[0], cached[1])
        else:
            info = session.greeting(comm)
            greeting = comm.greet(info)  # None: unsendable overrides, the handshake says so
            # The same for every comm unless the comm's class adds to it.
            if greeting is not None and type(comm).handshake_options is Comm.handshake_options:
                self._greeting = (info, greeting, PREAMBLE + greeting)
        loop = asyncio.get_running_loop()
        deadline = protocol.deadline = loop.time() + self.listener.handshake_timeout
        protocol.on_lost = self.discard
        protocol.log_drop = self._dropped_broken.log
        pending = self._pending
        pending[protocol] = deadline
        if self._sweep is None:
            self._sweep = loop.call_at(deadline, self._expire)
        if len(pending) > self.listener.max_pending_handshakes:
            self._make_room(protocol, loop.time())
        return comm

    def greeting(self) -> bytes | None:
        """What every new comm of this listener sends first (the preamble and its
        handshake message), once known (after the first); else ``None``.

        A listener that holds an accepted socket may send it before it makes the
        comm, which then must be told with :meth:`StreamProtocol.greeted`: the
        peer, which waits for it, has it sooner.
        """
        cached = self._greeting
        return None if cached is None else cached[2]

    def discard(self, protocol: StreamProtocol) -> None:
        """Forget the connection of *protocol*, which ended before its handshake was done.

        Called when the connection is lost (:attr:`StreamProtocol.on_lost`); a
        listener that runs a handshake of its own on the connection first
        (comm-tls) calls it when that fails.
        """
        protocol.on_lost = None
        pending = self._pending
        if pending.pop(protocol, None) is not None:
            self._handshaking.pop(protocol, None)
            if not pending and self._sweep is not None:
                # Nothing left to expire: no timer in the loop's queue (the loop checks
                # the clock on every iteration while one is there).
                self._sweep.cancel()
                self._sweep = None

    def admit(self, peer: Any = None) -> bool:
        """Make room for one more connection before it is accepted and greeted.

        For a listener that holds each accepted socket before it makes its comm
        (comm-tcp's): if ``max_pending_handshakes`` connections are pending, the
        oldest that may go is dropped (see :meth:`accept`); if none may, the
        new one should be closed at once, without a greeting, and this returns
        ``False`` (its dialer sees the connection close during the handshake,
        and ``connect()`` tries again). *peer* (a socket address) is for the log.
        """
        pending = self._pending
        limit = self.listener.max_pending_handshakes
        if len(pending) < limit:
            return True
        now = asyncio.get_running_loop().time()
        while len(pending) >= limit:
            if not self._drop_one(now, None):
                where = self.listener.listen_address
                self._refused(format_sockaddr(where.partition("://")[0], peer), limit)
                return False
        return True

    def _make_room(self, newest: StreamProtocol, now: float) -> None:
        """Drop connections until no more than ``max_pending_handshakes`` are pending.

        The oldest go first, but only those that had time to complete their
        handshake (:attr:`grace`) and show no sign of doing so: nothing unread
        from the peer, no handshake message waiting. A peer that has been
        greeted may believe its comm is up as soon as it reads the greeting,
        so a connection whose answer may still be on its way is kept. If no
        connection can go, the new one (*newest*, not greeted yet) is refused
        at once; its dialer sees the connection close during the handshake,
        and ``connect()`` tries again.
        """
        pending = self._pending
        limit = self.listener.max_pending_handshakes
        while len(pending) > limit:
            if not self._drop_one(now, newest):
                del pending[newest]
                newest.on_lost = None
                self._refused(newest.peer, limit)
                newest.abort()
                return

    def _drop_one(self, now: float, newest: StreamProtocol | None) -> bool:
        """Drop the oldest pending connection that may go; ``False`` if none may."""
        pending = self._pending
        timeout = self.listener.handshake_timeout
        grace = min(self.grace, timeout / 4)
        victim = None
        for scanned, (protocol, deadline) in enumerate(pending.items()):
            if protocol is newest or scanned >= _SCAN:
                break
            age = now - (deadline - timeout)
            if protocol.closing or protocol.peer_gone:
                victim = protocol  # gone already: only to forget
                break
            if age < grace:
                break  # it, and every one after it, may still be answering
            if not _progressing(protocol):
                victim = protocol
                break
        if victim is None:
            return False
        del pending[victim]
        victim.on_lost = None
        task = self._handshaking.pop(victim, None)
        if task is not None:
            task.cancel()  # in its handshake (which then logs nothing)
        if not (victim.closing or victim.peer_gone):
            self._dropped_oldest.log(
                logging.WARNING,
                "%s keeps at most %d connections before their comm handshake is done "
                "(max_pending_handshakes): dropped the oldest, from %s, %.2fs after it "
                "connected",
                self.listener.listen_address,
                self.listener.max_pending_handshakes,
                victim.peer,
                age,
            )
            victim.abort()
        return True

    def _refused(self, peer: str, limit: int) -> None:
        self._dropped_oldest.log(
            logging.WARNING,
            "%s keeps at most %d connections before their comm handshake is done "
            "(max_pending_handshakes), and none of them can go yet: refused a new one "
            "from %s",
            self.listener.listen_address,
            limit,
            peer,
        )

    def _expire(self) -> None:
        """Drop the connections whose deadline has passed; arm the timer for the next one.

        A comm in its handshake is left to the handshake's own timer, set for the
        same deadline.
        """
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self.listener.handshake_timeout
        pending = self._pending
        handshaking = self._handshaking
        expired = []
        for protocol, deadline in pending.items():
            if deadline > now:
                # Deadlines come in order while the timeout stays the same; should it
                # change, a later comm's deadline waits for this one's (never longer
                # than the old timeout).
                self._sweep = loop.call_at(deadline, self._expire)
                break
            if protocol not in handshaking:
                expired.append(protocol)
        for protocol in expired:
            del pending[protocol]
            protocol.on_lost = None
            if not (protocol.closing or protocol.peer_gone):
                self._dropped_silent.log(
                    logging.INFO,
                    "%s dropped a connection from %s that sent no comm preamble within %gs",
                    self.listener.listen_address,
                    protocol.peer,
                    timeout,
                )
            protocol.abort()

    def established(self, comm: StreamComm) -> None:
        """The peer of *comm* sent a valid preamble: run the handler on it (also after
        :meth:`close`: see there)."""
        protocol = comm.protocol
        loop = asyncio.get_running_loop()
        session = self.session
        if session is None:
            self.discard(protocol)
            task = loop.create_task(self.handle_comm(comm))
        else:
            deadline = self._pending.get(protocol)
            if deadline is None:  # never accepted here
                deadline = loop.time() + self.listener.handshake_timeout
            task = loop.create_task(session.serve(comm, deadline, self._handshake_over))
            if protocol in self._pending:
                self._handshaking[protocol] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handshake_over(self, comm: Comm) -> None:
        """*comm*'s handshake is over, done or failed: it no longer counts as pending."""
        if isinstance(comm, StreamComm):
            self.discard(comm.protocol)

    def close(self) -> None:
        """The listener stopped accepting (``Listener.stop()``). Idempotent.

        Connections accepted before are kept, not aborted (issue 18): a dialer's
        ``connect()`` returns once it has read the listener's greeting, and its
        own preamble and handshake may still be on their way, so aborting them
        would kill comms that ``connect()`` returned. Each keeps the deadline it
        got on accepting (the sweep timer stays armed for them), and is handed to
        ``handle_comm`` once its preamble arrives, as before the listener stopped.
        """
        self.closed = True
