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

On the server side, :func:`forbid` turns resumption off for
``Security(resume_sessions=False)``; see its docstring for how.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar

__all__ = [
    "ResumingSSLObject",
    "SessionCache",
    "forbid",
    "forbidden",
    "offer",
    "remember",
    "resuming",
]


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


# -- the server side: resumption turned off ---------------------------------------------

#: Server contexts on which no connection may resume a session.
_FORBIDDEN: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()

# OpenSSL's SSL_CTX_ctrl commands and the cache mode that turns the session cache off
# (ssl.h; unchanged since OpenSSL 0.9).
_SET_SESS_CACHE_MODE = 44
_GET_SESS_CACHE_MODE = 45
_SESS_CACHE_OFF = 0


def forbid(context: ssl.SSLContext) -> bool:
    """Turn session resumption off on the server *context*: every handshake is a full one.

    TLS 1.3 resumes only with tickets: ``num_tickets = 0`` issues none. TLS 1.2
    resumes with a ticket (RFC 5077), which ``OP_NO_TICKET`` stops issuing, or
    with a session ID that the context's session cache remembers (OpenSSL keeps
    the sessions of full handshakes there by default), which Python's
    :mod:`ssl` has no setting for: :func:`_session_cache_off` turns it off with
    OpenSSL's own call. Come what may, a comm listener drops a connection that
    resumed a session on a context given here (:func:`forbidden`).

    Returns whether the session cache is off; ``False`` where this Python's
    OpenSSL cannot be reached (then a TLS 1.2 client that offers a session ID
    is dropped after its handshake instead of getting a full one).
    """
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    _FORBIDDEN.add(context)
    return _session_cache_off(context)


def forbidden(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bool:
    """Whether the established server-side *ssl_object* resumed a session that its context
    does not allow (see :func:`forbid`)."""
    return bool(ssl_object.session_reused) and ssl_object.context in _FORBIDDEN


@functools.cache
def _openssl() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """``SSL_CTX_get_options`` and ``SSL_CTX_ctrl`` of the OpenSSL that :mod:`ssl` runs on.

    ``None`` if they cannot be reached (not CPython; ``_ssl`` linked so that its
    OpenSSL does not export them, as on Windows) or belong to another OpenSSL
    version than :mod:`ssl`'s.
    """
    # The layout _ssl_ctx() reads is that of CPython 3.10 to 3.14: elsewhere, the
    # listener's check after the handshake (forbidden()) has to do.
    if sys.implementation.name != "cpython" or not (3, 10) <= sys.version_info < (3, 15):
        return None
    try:
        import _ssl
        import ctypes

        # dlopen() of the loaded module finds the OpenSSL it is linked to; None: the
        # program itself, where a built-in _ssl lives.
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        version = lib.OpenSSL_version_num
        version.argtypes = []
        version.restype = ctypes.c_ulong
        if version() != ssl.OPENSSL_VERSION_NUMBER:
            return None
        get_options = lib.SSL_CTX_get_options
        get_options.argtypes = [ctypes.c_void_p]
        # uint64_t from OpenSSL 3.0 on, unsigned long before.
        wide = ssl.OPENSSL_VERSION_INFO >= (3,)
        get_options.restype = ctypes.c_uint64 if wide else ctypes.c_ulong
        ctrl = lib.SSL_CTX_ctrl
        ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        ctrl.restype = ctypes.c_long
    except (ImportError, OSError, AttributeError):
        return None
    return get_options, ctrl


def _ssl_ctx(context: ssl.SSLContext) -> int | None:
    """The address of *context*'s ``SSL_CTX``: CPython's context object holds it right after
    the object header (``PySSLContext``: ``PyObject_HEAD``, then ``SSL_CTX *ctx``)."""
    import ctypes

    address: int | None = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    return address


def _session_cache_off(context: ssl.SSLContext) -> bool:
    """Turn off *context*'s session cache (``SSL_CTX_set_session_cache_mode(ctx,
    SSL_SESS_CACHE_OFF)``): a TLS 1.2 server then gives no session ID, and finds none.

    Each step is checked before the next (the same OpenSSL as :mod:`ssl`; the
    address found answers with the context's own options; the mode reads back
    as set); ``False`` if one fails.
    """
    functions = _openssl()
    if functions is None or not isinstance(context, ssl.SSLContext):
        return False
    get_options, ctrl = functions
    address = _ssl_ctx(context)
    if not address or get_options(address) != int(context.options):
        return False
    ctrl(address, _SET_SESS_CACHE_MODE, _SESS_CACHE_OFF, None)
    return ctrl(address, _GET_SESS_CACHE_MODE, 0, None) == _SESS_CACHE_OFF
