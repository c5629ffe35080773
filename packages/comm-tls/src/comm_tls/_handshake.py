"""The listener's side of the TLS handshake: seeing why it fails, and telling the client.

A tls listener accepts plain TCP connections and upgrades each one with
:meth:`asyncio.loop.start_tls`, so that a failed handshake reaches code that
knows the peer's address (with ``create_server(ssl=...)`` it would vanish in
the event loop). Three helpers make both ends of a failure hear why:

* :class:`ServerSSLObject` (installed as the server context's
  ``sslobject_class``): when OpenSSL rejects the client (no certificate, an
  unknown CA, ...) it queues a TLS alert saying so, but asyncio and uvloop
  close the connection without sending it. During a listener's handshake this
  class reports "want read" instead, so the event loop sends the alert, and
  raises the real error on the next call (the client closes, or sends more).
* :class:`Interposer` sits between the raw transport and the event loop's TLS
  protocol during the handshake: it tells :class:`ServerSSLObject` which
  handshake it serves, and spots clients that do not speak TLS at all (a
  ``tcp://`` comm client, an HTTP client, garbage), to which it sends a TLS
  alert, which comm's ``check_preamble`` recognizes, before it hangs up.
  It also delivers the bytes that the raw transport read before ``start_tls``
  took over (Python 3.10 and uvloop start reading after ``connection_made``
  even if it paused reading).
* :class:`PendingProtocol` stands in for the comm's protocol until the
  listener hands the TLS transport over, keeping the bytes that arrive with
  the end of the handshake.

Everything here is exercised by the tests of failed handshakes on asyncio and
uvloop, on every supported Python.
"""

from __future__ import annotations

import asyncio
import ssl
from contextvars import ContextVar
from typing import Any, cast

__all__ = [
    "TLS_ALERT_PROTOCOL_VERSION",
    "HandshakeWatch",
    "Interposer",
    "PendingProtocol",
    "ServerSSLObject",
    "feed",
    "interpose",
    "remove_interposer",
]

#: A TLS record: fatal alert "protocol_version", sent to clients that do not speak TLS.
TLS_ALERT_PROTOCOL_VERSION = b"\x15\x03\x03\x00\x02\x02\x46"
_HANDSHAKE_RECORD = 0x16

_WATCH: ContextVar[HandshakeWatch | None] = ContextVar("comm_tls_handshake", default=None)


class HandshakeWatch:
    """What one listener-side handshake learned, shared with its :class:`ServerSSLObject`."""

    __slots__ = ("error", "head", "transport")

    def __init__(self, transport: asyncio.BaseTransport | None) -> None:
        self.transport = transport
        #: The first bytes the client sent.
        self.head = b""
        #: The error OpenSSL raised, kept while the alert goes out.
        self.error: ssl.SSLError | None = None

    @property
    def speaks_tls(self) -> bool:
        return not self.head or self.head[0] == _HANDSHAKE_RECORD


class ServerSSLObject(ssl.SSLObject):
    """An :class:`ssl.SSLObject` that, in a comm listener's handshake, sends the alert first.

    Outside a comm listener's handshake it behaves exactly as its base class,
    so installing it on a context that other code also uses changes nothing there.
    """

    def do_handshake(self) -> None:
        """As :meth:`ssl.SSLObject.do_handshake`; in a comm listener's handshake, a failure
        first raises :class:`ssl.SSLWantReadError` (so that the alert is sent), then the
        :class:`ssl.SSLError` itself on the next call."""
        watch = _WATCH.get()
        if watch is None:
            super().do_handshake()
            return
        if watch.error is not None:
            raise watch.error
        try:
            super().do_handshake()
        except (
            ssl.SSLWantReadError,
            ssl.SSLWantWriteError,
            ssl.SSLSyscallError,
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
        ):
            raise  # not a verdict on the client: the event loop handles these
        except ssl.SSLError as exc:
            watch.error = exc
            if "ALERT" in (exc.reason or ""):
                raise  # the client's own alert: nothing to answer
            # OpenSSL queued an alert that says why; the event loop sends queued bytes
            # on "want read", and the error above is raised on the next call.
            raise ssl.SSLWantReadError(
                ssl.SSL_ERROR_WANT_READ, "handshake failed; sending the alert first"
            ) from exc


class Interposer:
    """Forwards the raw transport's events to the TLS protocol, naming the handshake.

    Installed only for the handshake; the listener removes it afterwards. It
    first delivers *early*: bytes the raw transport read before ``start_tls``
    took over (uvloop starts reading right after ``connection_made``, even if
    that paused reading).
    """

    def __init__(self, inner: Any, watch: HandshakeWatch, early: bytes, buffered: bool) -> None:
        self.inner = inner
        self.watch = watch
        self.early = early
        self.buffered = buffered
        self._buffer: Any = None

    def _note(self, data: Any) -> None:
        """Look at the client's first bytes: a peer that is not speaking TLS gets an alert."""
        watch = self.watch
        if watch.head or not len(data):
            return
        watch.head = bytes(data[:8])
        if not watch.speaks_tls:
            # OpenSSL answers a peer that does not look like TLS with silence: say it.
            # (uvloop's transports do not derive from asyncio's classes.)
            transport = cast("asyncio.WriteTransport", watch.transport)
            transport.write(TLS_ALERT_PROTOCOL_VERSION)
            # Then hang up (close() sends the alert first) rather than hold the
            # connection until the handshake timeout: such a peer never sends TLS.
            # Soon, not now: the bytes at hand still go to the TLS protocol first.
            asyncio.get_running_loop().call_soon(transport.close)

    def _forward(self, name: str, *args: Any) -> Any:
        token = _WATCH.set(self.watch)
        try:
            return getattr(self.inner, name)(*args)
        finally:
            _WATCH.reset(token)

    def flush_early(self) -> None:
        """Deliver the bytes read before the hand-over, once the TLS protocol is connected."""
        early, self.early = self.early, b""
        if not early:
            return
        self._note(early)
        if not self.buffered:
            self._forward("data_received", early)
            return
        view = memoryview(early)
        while view.nbytes:
            buf = memoryview(self.inner.get_buffer(view.nbytes))
            n = min(buf.nbytes, view.nbytes)
            buf[:n] = view[:n]
            self._forward("buffer_updated", n)
            view = view[n:]

    # Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.flush_early()
        self._note(data)
        self._forward("data_received", data)

    # BufferedProtocol

    def get_buffer(self, sizehint: int) -> Any:
        self.flush_early()  # before the TLS protocol hands out its buffer for newer bytes
        self._buffer = self.inner.get_buffer(sizehint)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._note(memoryview(self._buffer)[:nbytes])
        self._buffer = None
        self._forward("buffer_updated", nbytes)

    # both

    def eof_received(self) -> bool | None:
        self.flush_early()
        result: bool | None = self._forward("eof_received")
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._forward("connection_lost", exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _BufferedInterposer(Interposer, asyncio.BufferedProtocol):
    pass


class _PlainInterposer(Interposer, asyncio.Protocol):
    pass


def interpose(transport: asyncio.BaseTransport, watch: HandshakeWatch, early: bytes) -> None:
    """Put an :class:`Interposer` in front of the TLS protocol that ``start_tls`` installed.

    Scheduled (``call_soon``) just before ``start_tls`` is awaited, it runs after
    ``start_tls`` has set its protocol and before the TLS protocol is connected;
    *early* bytes are delivered once it is (or before any newer byte).
    """
    inner = transport.get_protocol()
    if isinstance(inner, Interposer) or transport.is_closing():
        return
    # The test transports use to choose between the two interfaces (uvloop's TLS
    # protocol derives from neither asyncio class).
    buffered = hasattr(inner, "get_buffer") and not isinstance(inner, asyncio.Protocol)
    cls = _BufferedInterposer if buffered else _PlainInterposer
    wrapper = cls(inner, watch, early, buffered)
    transport.set_protocol(wrapper)
    if early:
        asyncio.get_running_loop().call_soon(wrapper.flush_early)


def remove_interposer(transport: asyncio.BaseTransport) -> None:
    """Let the TLS protocol receive the raw transport's events directly again."""
    protocol = transport.get_protocol()
    if isinstance(protocol, Interposer):
        transport.set_protocol(protocol.inner)


class PendingProtocol(asyncio.Protocol):
    """The TLS transport's protocol from the end of the handshake until the hand-over.

    Bytes that arrive meanwhile are kept for :func:`feed`; once :attr:`target`
    is set, late callbacks are forwarded to it.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = False  # EOF or connection lost before the hand-over
        self.target: asyncio.BufferedProtocol | None = None

    def data_received(self, data: bytes) -> None:
        if self.target is not None:
            feed(self.target, data)
        else:
            self.data.append(bytes(data))

    def eof_received(self) -> bool | None:
        if self.target is not None:
            return self.target.eof_received()
        self.ended = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None:
            self.target.connection_lost(exc)
        else:
            self.ended = True


def feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Deliver *data* to *protocol* as its transport would."""
    view = memoryview(data)
    while view.nbytes:
        buf = memoryview(protocol.get_buffer(view.nbytes))
        n = min(buf.nbytes, view.nbytes)
        buf[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]
