"""A base for asyncio transports over a non-blocking stream socket, for transport authors.

asyncio's own socket transports are not meant to be subclassed, and a
transport that drives its socket itself (comm-tcp's, which sends from the
caller's memory and connects its protocol at once; comm-tls's, which lets
OpenSSL read and write the socket directly) needs the same bookkeeping around
what it does: flow control towards the protocol, the protocol's callbacks
around the connection's end, and the facts of ``get_extra_info()``.
:class:`StreamTransportBase` holds that bookkeeping; a subclass adds reading,
writing and closing.

:class:`~comm_core.stream.StreamComm` knows it: over such a transport a
dialing comm reads the listener's greeting as soon as its handshake asks for
it (:meth:`StreamTransportBase.read_now`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from typing import Any, ClassVar, Generic, TypeVar

__all__ = ["StreamTransportBase"]

logger = logging.getLogger("comm_core.transport")

#: The protocol of a transport whose connection is lost.
_DETACHED = asyncio.BaseProtocol()
#: The socket type of a :class:`StreamTransportBase`.
_S = TypeVar("_S", bound=socket.socket)


class StreamTransportBase(asyncio.Transport, Generic[_S]):
    """The bookkeeping an asyncio transport over a non-blocking stream socket needs.

    It takes ownership of *sock* (a :class:`socket.socket`, or a subclass such
    as :class:`ssl.SSLSocket`: the type parameter). *extra* adds to the facts
    :meth:`get_extra_info` gives (``socket``, and what a subclass passes in
    *extra*); a subclass computes facts on demand by overriding
    :meth:`_missing_extra_info`.

    It provides the state every such transport keeps (``_loop``, ``_sock``,
    ``_fd``, ``_protocol``, ``_buffered``, ``_queued``: bytes queued to send,
    ``_writer``, ``_closing``, ``_lost``), flow control towards the protocol
    (:meth:`set_write_buffer_limits`, ``_maybe_pause()`` / ``_maybe_resume()``
    after the queue grew / shrank), the write callback's registration
    (``_update_writer()``), the protocol's ``connection_lost()``
    (``_call_connection_lost()``, which then detaches the protocol), and a
    :class:`ResourceWarning` for a transport dropped unclosed.

    A subclass defines reading, writing and closing: ``write()``,
    ``writelines()``, ``close()``, ``abort()``, the reading half of the
    interface, ``can_write_eof()`` / ``write_eof()``, and ``_write_ready()``,
    the callback for a writable socket. It keeps ``_queued`` up to date, sets
    ``_closing`` and ``_lost`` (with the socket closed, ``_sock`` is ``None``)
    and schedules ``_call_connection_lost()`` once. Its :attr:`_logger` and
    :attr:`_what` name it in log lines and warnings.
    """

    #: Where failures of the protocol's callbacks are logged (a subclass names its own).
    _logger: ClassVar[logging.Logger] = logger
    #: What the transport is called in the warning about one dropped unclosed.
    _what: ClassVar[str] = "transport"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: _S,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._sock: _S | None = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._info: dict[str, Any] = {"socket": sock}
        if extra:
            self._info.update(extra)
        self._queued = 0  # bytes queued to send
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._protocol_paused = False  # pause_writing() was called on the protocol
        self._writer = False  # our write callback is registered with the loop
        self._closing = False  # close() or abort() was called, or the connection failed
        self._lost = False  # the socket is closed; connection_lost() is scheduled

    # -- writing ----------------------------------------------------------------------------

    def _write_ready(self) -> None:
        """The socket is writable (registered by :meth:`_update_writer`)."""
        raise NotImplementedError

    def _update_writer(self, want: bool) -> None:
        want = want and not self._lost
        if want and not self._writer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer = True
        elif not want and self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False

    def _maybe_pause(self) -> None:
        if self._queued > self._high and not self._protocol_paused:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                self._logger.exception("protocol.pause_writing() failed")

    def _maybe_resume(self) -> None:
        if self._protocol_paused and self._queued <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                self._logger.exception("protocol.resume_writing() failed")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()
        self._maybe_resume()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._queued

    # -- closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def _finish(self, exc: BaseException | None) -> None:
        """Stop for good: unregister, drop what is queued, then :meth:`_release`."""
        raise NotImplementedError

    def _fatal(self, exc: BaseException, what: str) -> None:
        """*what* failed with *exc*: log it (an OS error at debug level), then end."""
        if isinstance(exc, OSError):
            self._logger.debug("%r: %s: %r", self, what, exc)
        else:
            self._logger.error("%r: %s", self, what, exc_info=exc)
        self._closing = True
        self._finish(exc)

    def _release(self, exc: BaseException | None) -> None:
        """Close the socket and tell the protocol, on the loop's next iteration, that
        the connection is lost (unless the loop is closed: nobody is left to tell)."""
        self._queued = 0
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if not self._loop.is_closed():
            self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(
                exc if isinstance(exc, Exception) or exc is None else None
            )
        finally:
            # The protocol holds this transport: without the cycle both are freed at once.
            self._protocol = _DETACHED
            self._buffered = False

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            warnings.warn(f"unclosed {self._what} {self!r}", ResourceWarning, stacklevel=1)
            sock.close()

    # -- reading ---------------------------------------------------------------------------

    def read_now(self) -> None:
        """Read what the socket holds now, as the loop would once it is readable.

        For a protocol that expects data to be there already (a dialing comm's
        handshake read finds the listener's greeting there, usually): it gets it
        without waiting for the next loop iteration. Does nothing while reading
        is paused or the transport closing. The base does nothing; a subclass
        that can read at once overrides it.
        """

    # -- the rest of the transport interface --------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = self._info
        if name in info:
            return info[name]
        return self._missing_extra_info(name, default)

    def _missing_extra_info(self, name: str, default: Any) -> Any:
        """What :meth:`get_extra_info` gives for a *name* not in the facts so far.

        *default* here; a subclass looks up facts that are costly or rarely
        needed (and may add them to ``_info``).
        """
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        peer = self._info.get("peername")
        return f"<{type(self).__name__} fd={self._fd} {state} peer={peer}>"
