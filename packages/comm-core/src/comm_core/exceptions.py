"""The one error hierarchy of comm.

Every error that comm raises on purpose is a :class:`CommError`. Errors that
callers traditionally catch as :class:`OSError`, :class:`ValueError` or
:class:`TimeoutError` are also instances of those, so existing ``except``
clauses keep working::

    CommError
    ├── CommClosedError (+ OSError)          the comm is closed, or closed while in use
    │   └── FatalCommClosedError              closed for a reason a retry cannot fix
    ├── ConnectError (+ OSError)              could not establish a connection
    │   ├── ConnectTimeoutError (+ TimeoutError)
    │   └── HostNotFoundError                 the host name does not resolve (never retried)
    ├── ProtocolError                         the peer sent something that breaks the protocol
    │   ├── MessageTooLargeError              a message above ``max_message_size``
    │   └── HandshakeError (+ OSError)        the comm handshake failed, or met no comm endpoint
    │       ├── HandshakeTimeoutError (+ TimeoutError)
    │       └── IncompatibleProtocolError     the peer speaks another protocol version
    ├── SerializationError                    a value could not be (de)serialized
    ├── AddressError (+ ValueError)           a malformed address
    │   └── UnknownSchemeError                no installed backend serves the scheme
    ├── BackendError                          a backend or plugin is broken or misused
    │   ├── BackendConflictError              two distributions claim one scheme
    │   └── PluginError                       a plugin failed to load or to validate
    └── EncryptionRequiredError (+ ValueError) an unencrypted backend was refused

Foreign exceptions (``ConnectionResetError``, ``ssl.SSLError``,
``msgpack.ExtraData``, ...) are translated where they arise, with ``raise ...
from exc``, so the original stays available as ``__cause__``.

Retries: :func:`comm_core.connect` retries :class:`ConnectError` and plain
:class:`CommClosedError` until its time budget is spent. It never retries
:class:`FatalCommClosedError`, :class:`HostNotFoundError`, :class:`AddressError`,
:class:`BackendError` or :class:`HandshakeError`.

Every failure of :func:`comm_core.connect` to establish a comm is an
:class:`OSError`: :class:`ConnectTimeoutError` once its budget is spent,
:class:`FatalCommClosedError` for a failure no retry fixes, and
:class:`HandshakeError` when the peer is not a comm endpoint or its handshake
is refused, and :class:`HostNotFoundError` at once when the host name does
not resolve. What it raises for the caller's own mistakes (:class:`AddressError`,
:class:`BackendError`, :class:`EncryptionRequiredError`, :class:`ValueError`
for unusable ``handshake_overrides``) is not.
"""

from __future__ import annotations

__all__ = [
    "AddressError",
    "BackendConflictError",
    "BackendError",
    "CommClosedError",
    "CommError",
    "ConnectError",
    "ConnectTimeoutError",
    "EncryptionRequiredError",
    "FatalCommClosedError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "HostNotFoundError",
    "IncompatibleProtocolError",
    "MessageTooLargeError",
    "PluginError",
    "ProtocolError",
    "SerializationError",
    "UnknownSchemeError",
]


class CommError(Exception):
    """Base class of every error comm raises on purpose."""


class CommClosedError(CommError, OSError):
    """The comm is closed: by us, by the peer, or because the connection broke.

    Raised by :meth:`Comm.read <comm_core.Comm.read>` and :meth:`Comm.write
    <comm_core.Comm.write>` once the comm is closed, and by a pending read when
    the peer goes away.
    """


class FatalCommClosedError(CommClosedError):
    """The comm closed for a reason that retrying cannot fix (never retried)."""


class ConnectError(CommError, OSError):
    """A connection could not be established (refused, reset, unreachable, ...).

    :func:`comm_core.connect` retries these until its time budget is spent.
    """


class ConnectTimeoutError(ConnectError, TimeoutError):
    """:func:`comm_core.connect` spent its whole time budget without success.

    Attributes:
        address: the address that was dialled.
        elapsed: seconds spent.
        attempts: how many connection attempts were made.
    """

    def __init__(
        self, message: str, *, address: str = "", elapsed: float = 0.0, attempts: int = 0
    ) -> None:
        super().__init__(message)
        self.address = address
        self.elapsed = elapsed
        self.attempts = attempts


class HostNotFoundError(ConnectError):
    """The host name of the address does not resolve: the resolver answered that no such
    name exists, or that it has no address (``EAI_NONAME``, ``EAI_NODATA``, ``EAI_FAIL``).

    :func:`comm_core.connect` raises it at once, without retrying: waiting
    would not make a mistyped name resolve. A temporary failure of the
    resolver (``EAI_AGAIN``: no answer from the DNS server) is a plain
    :class:`ConnectError` instead, retried until the time budget is spent. A
    caller that expects the name to appear later (a service registered in DNS
    as it starts) catches this error and calls ``connect()`` again.

    Attributes:
        host: the host name that does not resolve.
    """

    def __init__(self, message: str, *, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class ProtocolError(CommError):
    """The peer sent bytes or values that break comm's protocol.

    The comm on which this is raised is closed, since its stream position is
    no longer known.
    """


class MessageTooLargeError(ProtocolError):
    """A message is larger than the ``max_message_size`` in force.

    Attributes:
        size: the size of the offending message in bytes.
        limit: the limit in force.
    """

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class SerializationError(CommError):
    """A value could not be serialized for writing, or deserialized after reading.

    Unlike a :class:`ProtocolError`, it leaves the comm usable: a failed write
    sent nothing, and a failed read consumed exactly one whole message.
    """


class HandshakeError(ProtocolError, OSError):
    """The comm handshake that follows every new connection failed.

    Raised by :func:`comm_core.connect` (never retried) when the peer is not a
    comm endpoint (the message says what it looks like instead: TLS, HTTP,
    ...), or its handshake is malformed, too large, or holds values this side
    refuses; a listener drops such a peer with a log line. It is an
    :class:`OSError`, as every failure of ``connect()`` to establish a comm is.
    """


class HandshakeTimeoutError(HandshakeError, TimeoutError):
    """The peer did not complete the comm handshake in time."""


class IncompatibleProtocolError(HandshakeError):
    """The peer speaks a version of the comm protocol that this side cannot."""


class AddressError(CommError, ValueError):
    """An address is malformed; the message quotes it and says what is wrong."""


class UnknownSchemeError(AddressError):
    """No installed backend serves an address's scheme.

    Attributes:
        scheme: the scheme that was asked for.
        known: the schemes that are installed.
    """

    def __init__(self, message: str, *, scheme: str = "", known: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.scheme = scheme
        self.known = known


class BackendError(CommError):
    """A backend or a backend plugin is broken or misused."""


class BackendConflictError(BackendError):
    """Two distributions (or plugins) register a backend for the same scheme."""


class PluginError(BackendError):
    """A plugin is broken: its entry point fails to import or names no plugin, or its hooks fail.

    Raised by every lookup while an installed plugin is broken (see
    :meth:`comm_core.Registry.broken`): an entry point whose module fails to
    import, that names something with no ``@comm_core.hookimpl`` function (a
    backend class or factory, say), a hook that does not exist, or a
    ``comm_register_backends()`` that fails. The message names the
    distribution and the entry point.
    """


class EncryptionRequiredError(CommError, ValueError):
    """Encryption is required, but the address's backend does not encrypt."""
