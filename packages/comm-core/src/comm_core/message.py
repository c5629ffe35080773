"""A comm over a transport that carries whole messages: WebSocket, QUIC streams, ZeroMQ...

A stream transport (tcp, tls) delivers bytes, which :mod:`comm_core.stream`
cuts into messages. A message transport delivers whole messages itself, and
:class:`MessageComm` does everything else once for all of them: it encodes
each message with the serializer families a write allows, in comm's wire
format (:mod:`comm_core.protocol`: a frame header, the msgpack body, the
out-of-band frames), refuses what exceeds ``max_message_size`` on both ends,
limits a connection's first message (the handshake) to 64 KiB, decodes within
the bounds every comm applies to what a peer sends, and keeps the contract of
:class:`~comm_core.Comm`: one reader at a time, writes that never interleave,
:class:`~comm_core.CommClosedError` once the comm is closed, for every read
and write after. A transport implements five things::

    class WSComm(MessageComm):
        async def send_message(self, buffers, size):
            await self._ws.send(b"".join(buffers))   # one binary message

        async def receive_message(self):
            try:
                return await self._ws.recv()
            except ConnectionClosedOK:
                return None                         # the peer closed
            except ConnectionClosed as exc:
                raise CommClosedError(f"{self.peer_address}: {exc}") from exc

        async def close(self): ...
        def abort(self): ...
        def closed(self): ...

plus :attr:`~comm_core.Comm.local_address` and
:attr:`~comm_core.Comm.peer_address`. A message has no preamble: the
transport's own handshake (a WebSocket subprotocol, an ALPN name) says that
the peer speaks comm.
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Collection, Sequence
from typing import Any

from comm_core._families import REGISTERED_FAMILIES
from comm_core._options import Options
from comm_core.abc import Comm, OnError
from comm_core.exceptions import CommClosedError, MessageTooLargeError, ProtocolError
from comm_core.protocol import MAX_FIRST_MESSAGE, Decoder, Encoders, split_message

__all__ = ["MessageComm"]


class MessageComm(Comm):
    """A comm whose transport sends and receives whole messages.

    Subclasses implement :meth:`send_message` and :meth:`receive_message`,
    and :meth:`~comm_core.Comm.close`, :meth:`~comm_core.Comm.abort`,
    :meth:`~comm_core.Comm.closed`, :attr:`~comm_core.Comm.local_address` and
    :attr:`~comm_core.Comm.peer_address`; :meth:`read` and :meth:`write` are
    done here.

    Args:
        deserialize: deserialize custom payloads on read.
        max_message_size: the largest message sent or accepted, in bytes;
            default: that of *options*. A transport that has a limit of its own
            (a WebSocket library's maximum message size) should set it a
            little above this one plus the frame header, so that this one
            decides and the error is comm's.
        first_message_limit: a lower limit for the first message received,
            the comm handshake (64 KiB); ``None``: none.
        options: the settings to work with (limits, serializer families), as
            ``connect()`` or ``listen()`` hand them to a transport; default:
            those in force.
    """

    def __init__(
        self,
        *,
        deserialize: bool = True,
        max_message_size: int | None = None,
        first_message_limit: int | None = MAX_FIRST_MESSAGE,
        options: Options | None = None,
    ) -> None:
        super().__init__(deserialize=deserialize)
        if options is None:
            options = Options()
        #: The settings this comm works with.
        self.options = options
        if max_message_size is None:
            max_message_size = options.max_message_size
        self._first_message_limit = first_message_limit
        families = REGISTERED_FAMILIES if options.families is None else options.families
        self._encoders = Encoders(families, max_message_size, options.max_message_depth)
        self._max_message_size = max_message_size
        self._decoder = Decoder(
            families,
            deserialize=deserialize,
            max_depth=options.max_message_depth,
            max_expansion=options.max_message_expansion,
        )
        self._reading = False
        self._write_lock = asyncio.Lock()
        #: Why the comm ended, if not by this side: what later reads and writes raise.
        self._ended: CommClosedError | None = None

    @property
    def max_message_size(self) -> int:
        """The largest message sent or accepted, in bytes."""
        return self._max_message_size

    @max_message_size.setter
    def max_message_size(self, size: int) -> None:
        self._max_message_size = size
        self._encoders.set_max_size(size)

    # -- what a transport implements ----------------------------------------------------

    @abstractmethod
    async def send_message(self, buffers: Sequence[Any], size: int) -> None:
        """Send one message made of *buffers* as one message of the transport.

        *buffers* are bytes-like objects (the first holds the frame header and
        the body; the others, if any, are out-of-band buffers of the caller's,
        not copied), *size* bytes in all. Send them as one transport message,
        in order: joined (``b"".join(buffers)``), or as the fragments of one
        message where the library can send those without copying. Wait while
        the transport holds too much unsent (backpressure): a peer that does
        not read must make writes wait, not memory grow.

        Raises:
            CommClosedError: the connection is closed or broke (chain the
                library's error as its cause).
        """

    @abstractmethod
    async def receive_message(self) -> Any:
        """Return the next message the transport received, as a bytes-like object.

        Return ``None`` once the peer has closed the connection cleanly and
        every message it sent before has been returned.

        Raises:
            CommClosedError: the connection broke or this side closed it
                (chain the library's error as its cause).
            ProtocolError: the peer sent something the transport cannot hand
                over as one binary message (a text message, say).
        """

    # -- the comm --------------------------------------------------------------------------

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        if self._reading:
            raise RuntimeError(f"{self!r}: read() called while another read() is waiting")
        if self._ended is not None:
            raise self._ended_error()
        if self.closed():
            raise CommClosedError(f"{self!r} is closed")
        self._reading = True
        try:
            data = await self.receive_message()
        except asyncio.CancelledError:
            self.abort()  # where the next message starts is no longer known
            raise
        except CommClosedError as exc:
            self._end(exc)
            raise
        except ProtocolError as exc:
            raise self._broken(exc) from exc
        finally:
            self._reading = False
        if data is None:
            closed = CommClosedError(f"comm with {self.peer_address} was closed by the peer")
            raise self._end(closed)
        first, self._first_message_limit = self._first_message_limit, None
        try:
            frames = split_message(
                data,
                max_message_size=self.max_message_size,
                first_message_limit=first,
                peer=self.peer_address,
            )
            return self._decoder.decode(frames, deserializers)
        except ProtocolError as exc:
            raise self._broken(exc) from exc

    async def write(
        self,
        msg: Any,
        serializers: Collection[str] | None = None,
        on_error: OnError = "raise",
    ) -> int:
        if self._ended is not None:
            raise self._ended_error()
        if self.closed():
            raise CommClosedError(f"{self!r} is closed")
        buffers, size = self._encoders.get(serializers, on_error).encode(msg)
        # One message at a time: a transport's send may wait (backpressure), and two
        # messages must not be sent into each other.
        async with self._write_lock:
            if self._ended is not None:
                raise self._ended_error()
            try:
                await self.send_message(buffers, size)
            except asyncio.CancelledError:
                self.abort()  # part of the message may have gone
                raise
            except CommClosedError as exc:
                self._end(exc)
                raise
        return size

    # -- ending ----------------------------------------------------------------------------

    def _end(self, error: CommClosedError) -> CommClosedError:
        """The comm is over for the reason *error* gives: later reads and writes raise it."""
        if self._ended is None:
            self._ended = error
        self.abort()
        return error

    def _broken(self, exc: ProtocolError) -> ProtocolError:
        """The peer broke the protocol: abort, and say so to every later read and write."""
        error: ProtocolError
        if isinstance(exc, MessageTooLargeError):  # it names the peer already
            error = MessageTooLargeError(str(exc), size=exc.size, limit=exc.limit)
        else:
            error = ProtocolError(
                f"{self.peer_address} sent a message that breaks the protocol: {exc}"
            )
        self._end(CommClosedError(f"comm with {self.peer_address} was closed: {error}"))
        return error

    def _ended_error(self) -> CommClosedError:
        assert self._ended is not None
        error = CommClosedError(str(self._ended))
        error.__cause__ = self._ended.__cause__
        return error
