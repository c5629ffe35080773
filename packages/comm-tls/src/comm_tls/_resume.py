"""TLS session resumption for the client contexts that :class:`comm_tls.Security` builds.

A full TLS handshake with mutual TLS costs each side a certificate chain
verification, which OpenSSL 3 makes expensive (milliseconds). A client that
reconnects to a listener it already talked to can instead present the session
ticket the listener gave it last time (TLS 1.3 resumption): the listener
recognizes its own ticket, both sides skip the certificates, and the
connection is set up in about half the time.

comm-tls's own transport (:mod:`comm_tls._transport`) wraps the socket itself,
so the connector takes the ticket with :func:`take` and sets it on the socket
before the handshake. asyncio's TLS layer, the fallback, offers no way to pass
a session to a connection:

* :class:`ResumingSSLObject` is installed as the client context's
  ``sslobject_class``. When the connector dials, it names the destination in a
  context variable (:func:`resuming`); the object's first ``do_handshake`` takes
  the ticket kept for it, if any, and offers it.
* Once the connection carries data (the server's preamble), the ticket the
  server sent after the handshake has been processed: :func:`remember` keeps it
  for the next connection to the same destination.

Each ticket is used once (RFC 8446 advises clients against reusing one); each
connection brings a fresh one. The cache is per :class:`comm_tls.Security`,
bounded, and keyed by the name checked against the certificate and the
address and port dialled, so a ticket is only offered where it was issued.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextvars import ContextVar

__all__ = ["ResumingSSLObject", "SessionCache", "offer", "remember", "resuming"]


class SessionCache:
    """The latest ticket per destination; the least recently used go first when full."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._sessions: OrderedDict[Hashable, ssl.SSLSession] = OrderedDict()
        self._lock = threading.Lock()  # a Security may serve several event loops

    def __len__(self) -> int:
        return len(self._sessions)

    def take(self, key: Hashable) -> ssl.SSLSession | None:
        """Remove and return the ticket for *key*, if one is kept."""
        with self._lock:
            return self._sessions.pop(key, None)

    def put(self, key: Hashable, session: ssl.SSLSession) -> None:
        with self._lock:
            self._sessions[key] = session
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._size:
                self._sessions.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()


_Slot = tuple[SessionCache, Hashable]
_DIALING: ContextVar[_Slot | None] = ContextVar("comm_tls_dialing", default=None)


@contextlib.contextmanager
def resuming(cache: SessionCache | None, key: Hashable) -> Iterator[None]:
    """Within the block, TLS connections made with a resuming context use *cache* at *key*."""
    if cache is None:
        yield
        return
    token = _DIALING.set((cache, key))
    try:
        yield
    finally:
        _DIALING.reset(token)


class ResumingSSLObject(ssl.SSLObject):
    """An :class:`ssl.SSLObject` that offers the ticket kept for the destination it dials."""

    _comm_slot: _Slot | None = None
    _comm_started = False

    def do_handshake(self) -> None:
        """As :meth:`ssl.SSLObject.do_handshake`; the first call offers a kept ticket."""
        if not self._comm_started:
            self._comm_started = True
            slot = self._comm_slot = _DIALING.get()
            if slot is not None:
                session = slot[0].take(slot[1])
                if session is not None:
                    with contextlib.suppress(ValueError, ssl.SSLError):
                        # ValueError: a ticket of another context; then: a full handshake.
                        self.session = session
        super().do_handshake()


def offer(sock: ssl.SSLSocket, cache: SessionCache | None, key: Hashable) -> _Slot | None:
    """Before its handshake, give *sock* the ticket kept for *key*, if any.

    Returns the slot to pass to :func:`remember` once the connection is established
    (``None`` without a cache).
    """
    if cache is None:
        return None
    session = cache.take(key)
    if session is not None:
        with contextlib.suppress(ValueError, ssl.SSLError):
            # ValueError: a ticket of another context; then: a full handshake.
            sock.session = session
    return (cache, key)


def remember(ssl_object: object, slot: _Slot | None = None) -> None:
    """Keep the ticket of an established client connection for the next one (if it has one).

    *ssl_object* is a :class:`ResumingSSLObject` (asyncio's TLS layer), or an
    :class:`ssl.SSLSocket` with the *slot* that :func:`offer` returned.
    """
    if isinstance(ssl_object, ResumingSSLObject):
        slot = ssl_object._comm_slot
    elif not isinstance(ssl_object, ssl.SSLSocket):
        return
    if slot is None:
        return
    session = ssl_object.session
    if session is not None and session.has_ticket:
        slot[0].put(slot[1], session)
