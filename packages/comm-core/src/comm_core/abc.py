"""The contracts a transport implements: :class:`Comm`, :class:`Listener`,
:class:`Connector` and :class:`Backend`.

A transport (a *backend*) provides one :class:`Backend` subclass per URI
scheme. comm-core finds it through the ``comm_core.backends`` entry point
group (see :mod:`comm_core.hookspecs`), asks it for a :class:`Connector` to
dial and a :class:`Listener` to accept, and runs the comm handshake itself, so
a backend only moves messages.

What every implementation must raise is written in each method's docstring;
the conformance kit (:mod:`comm_core.testing`) checks it.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Generator, Mapping
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol

from comm_core._addressing import parse_address, parse_host_port
from comm_core._config import get_setting
from comm_core.exceptions import AddressError, CommClosedError, FatalCommClosedError

if TYPE_CHECKING:
    from typing_extensions import Self

    from comm_core._options import Options

__all__ = [
    "Backend",
    "Capability",
    "Comm",
    "CommHandler",
    "Connector",
    "Listener",
    "ListenerSession",
    "OnError",
]

#: What :meth:`Comm.write` does with a value it cannot serialize.
OnError = Literal["raise", "message"]

#: The callable a :class:`Listener` calls once for every new comm it accepts.
CommHandler = Callable[["Comm"], Coroutine[Any, Any, None]]

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

# Every comm alive, and every listener started and not yet stopped, so that the
# conformance kit can find leaks.
_live_comms: weakref.WeakSet[Comm] = weakref.WeakSet()
_live_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


def _track_start(
    start: Callable[[Listener], Coroutine[Any, Any, None]],
) -> Callable[[Listener], Coroutine[Any, Any, None]]:
    """Wrap a listener class's ``start()`` to note the listeners that started."""

    @functools.wraps(start)
    async def tracked(self: Listener) -> None:
        session = self.session
        if session is not None and not self._running:
            await session.starting(self)  # the same-host paths it offers, if any
        try:
            await start(self)
        except BaseException:
            if session is not None and not self._running:
                session.stopped(self)
            raise
        if not self._stopped_by_base:
            self._running = True
            _live_listeners.add(self)

    tracked._comm_tracked = True  # type: ignore[attr-defined]
    return tracked


class ListenerSession(Protocol):
    """What a :class:`Listener` knows of the session that serves its comms.

    :class:`comm_core.session.ServerSession` is the one :func:`comm_core.listen`
    attaches; this is only the part the listener's base class uses.
    """

    @property
    def options(self) -> Options:
        """The settings of the listener and of the comms it accepts."""

    async def starting(self, listener: Listener) -> None:
        """*listener* is about to start (called by the base class's ``start()``)."""

    def stopped(self, listener: Listener) -> None:
        """*listener* stopped (called by the base class's ``stop()``); never raises."""


class Capability:
    """Names of the capabilities a :class:`Backend` may declare in ``capabilities``.

    Backends may declare names of their own; these are the ones comm-core reads.
    """

    #: Bytes on the wire are encrypted and the peer can be authenticated.
    ENCRYPTED: Final = "encrypted"
    #: Messages never leave the process (counts as safe where encryption is required).
    IN_PROCESS: Final = "in-process"


class Comm(ABC):
    """One end of an established, message-oriented connection.

    A comm carries whole messages in order. It allows one reader and one writer
    at a time: concurrent ``read()`` calls (or concurrent ``write()`` calls) are
    a programming error. Use it as an async context manager to close it on
    exit, and iterate it to read until the peer closes::

        async with await comm_core.connect("tcp://127.0.0.1:8786") as comm:
            await comm.write({"op": "ping"})
            async for msg in comm:
                ...

    Implementations call ``super().__init__()`` and implement :meth:`read`,
    :meth:`write`, :meth:`close`, :meth:`abort`, :meth:`closed`,
    :attr:`local_address` and :attr:`peer_address`. A read or write that is
    cancelled or fails midway must :meth:`abort` the comm, since its position
    in the stream is then unknown.
    """

    def __init__(self, *, deserialize: bool = True) -> None:
        #: Whether custom payloads are deserialized on read (see the wire protocol).
        self.deserialize = deserialize
        #: A free-form label shown in ``repr()``, for logs.
        self.name: str | None = None
        self._local_info: Mapping[str, Any] = _EMPTY
        self._peer_info: Mapping[str, Any] = _EMPTY
        self._early_handshake: Mapping[str, Any] | None = None
        _live_comms.add(self)

    # -- the transport's part -------------------------------------------------------

    @abstractmethod
    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        """Return the next message.

        Args:
            deserializers: the serializer families this read accepts for custom
                payloads; ``None`` accepts the comm's defaults (never pickle).

        Raises:
            CommClosedError: the comm is closed, or the peer closed it and every
                message it sent before closing has been read.
            ProtocolError: the peer sent something that breaks the protocol; the
                comm is aborted.
        """

    @abstractmethod
    async def write(
        self,
        msg: Any,
        serializers: Collection[str] | None = None,
        on_error: OnError = "raise",
    ) -> int:
        """Send *msg* and return the number of bytes handed to the transport.

        Transports that do not serialize (inproc) return 0. ``write`` may wait
        while too much data is queued for the peer (backpressure).

        What the outcome says about delivery (each message is delivered at most
        once; comm never sends one twice):

        * A write that **returns** handed the whole message to the transport.
          The peer reads it unless the connection breaks first or this side
          aborts; ``close()``, even one called while the write waited, sends
          it before closing.
        * A write that **raises** :class:`CommClosedError` did not deliver its
          message: the peer never reads it, so sending it again on a new comm
          cannot duplicate it. (A stream comm whose connection ends while a
          write waits with the message still queued raises for that reason.)

        Only a reply from the peer proves that a message arrived.

        Args:
            msg: the message.
            serializers: the serializer families allowed for custom types.
            on_error: ``"raise"`` raises :class:`SerializationError` for a value
                that cannot be serialized, before anything is sent, and leaves
                the comm usable; ``"message"`` sends a description of the failure
                in that value's place.

        Raises:
            CommClosedError: the comm is closed, or closed during the write
                before the message could leave; the peer never reads it.
            SerializationError: with ``on_error="raise"``, a value could not be
                serialized; nothing was sent.
            MessageTooLargeError: the message exceeds the size limit; nothing
                was sent.
        """

    @abstractmethod
    async def close(self) -> None:
        """Flush what was written, then close. Idempotent; never raises.

        Messages whose ``write()`` returned, or is waiting with the whole
        message handed over, are sent before the connection closes (within a
        transport's close timeout, on a peer that does not read).
        """

    @abstractmethod
    def abort(self) -> None:
        """Close at once without flushing. Idempotent; never raises."""

    @abstractmethod
    def closed(self) -> bool:
        """Whether the comm is closed, by this side or (as far as known) by the peer."""

    @property
    @abstractmethod
    def local_address(self) -> str:
        """This end's address, as a URI."""

    @property
    @abstractmethod
    def peer_address(self) -> str:
        """The other end's address, as a URI."""

    @property
    def extra_info(self) -> Mapping[str, Any]:
        """Transport-specific facts, such as socket names or the TLS cipher."""
        return _EMPTY

    @property
    def same_host(self) -> bool:
        """Whether both ends are on the same machine (best effort)."""
        try:
            local = parse_host_port(parse_address(self.local_address)[1], default_port=0)[0]
            peer = parse_host_port(parse_address(self.peer_address)[1], default_port=0)[0]
        except AddressError:
            return False
        return local == peer

    def handshake_options(self) -> Mapping[str, Any]:
        """Entries this transport adds to the handshake it sends; override to add some."""
        return _EMPTY

    # -- the handshake: what comm-core's session layer asks of a transport ------------

    @property
    def early_handshake(self) -> Mapping[str, Any] | None:
        """This side's handshake message, if the transport sent it ahead of the handshake.

        ``None`` (the default): the handshake sends it, with
        :meth:`send_handshake`. A transport that sends it early (a listener's
        stream comms send :meth:`ServerSession.greeting
        <comm_core.session.ServerSession.greeting>` with their preamble, before
        hearing from the peer) records it with :meth:`set_early_handshake`; the
        handshake then only reads the peer's.
        """
        return self._early_handshake

    def set_early_handshake(self, info: Mapping[str, Any]) -> None:
        """Record that *info*, this side's handshake message, was sent (or is queued
        to be sent first) ahead of the handshake: see :attr:`early_handshake`.

        For transports; *info* is kept as it is, not copied.
        """
        self._early_handshake = info

    def message_waiting(self) -> bool:
        """Whether :meth:`read` would return a message now, without waiting.

        The handshake reads such a message without arming a timer. The default
        says no; comm-core's stream comms know better.
        """
        return False

    async def send_handshake(self, info: Mapping[str, Any]) -> None:
        """Send this side's handshake message *info*, as the handshake begins.

        The default writes it. A transport may do better: comm-core's stream
        comms queue it behind their preamble, so that it leaves with the first
        message the user writes (a comm listener speaks first, so a dialer need
        not). Raises what :meth:`write` raises.
        """
        await self.write(info)

    # -- what comm-core provides ----------------------------------------------------

    @property
    def handshake_info(self) -> Mapping[str, Any]:
        """What the peer announced in the comm handshake (empty before it)."""
        return self._peer_info

    @property
    def local_handshake_info(self) -> Mapping[str, Any]:
        """What this side announced in the comm handshake (empty before it)."""
        return self._local_info

    def _set_handshake(self, local: Mapping[str, Any], peer: Mapping[str, Any]) -> None:
        self._local_info = MappingProxyType(dict(local))
        self._peer_info = MappingProxyType(dict(peer))

    def __repr__(self) -> str:
        try:
            where = f"local={self.local_address} peer={self.peer_address}"
            state = "closed" if self.closed() else "open"
        except Exception:  # a half-built comm must still have a repr
            where, state = "", "unknown"
        name = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{name} {where} {state}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.read()
        except FatalCommClosedError:
            raise
        except CommClosedError:
            raise StopAsyncIteration from None

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        try:
            if self.closed():
                return
            description = repr(self)
        except Exception:
            return
        _warn(
            f"{description} was garbage-collected while open and has been aborted; "
            "close comms with 'await comm.close()' or 'async with comm'",
            ResourceWarning,
            source=self,
        )
        self.abort()


class Listener(ABC):
    """Accepts connections on an address and hands each new comm to a handler.

    Create one with :func:`comm_core.listen`, which returns it unstarted. Start
    it with ``await listener.start()``, ``await listener`` or ``async with``.

    Implementations receive the handler from :meth:`Backend.get_listener` and
    call it once per accepted comm, in a task of its own: the handler runs the
    comm handshake, then the user's code. From :func:`comm_core.listen` the
    handler is a :class:`~comm_core.session.ServerSession`, which offers more
    to a listener that wants it (the greeting its comms may send early, the
    handshake deadline, the options of its comms). Implementations call
    ``super().stop()`` from :meth:`stop`.
    """

    #: The session that serves this listener's comms, set by
    #: :meth:`ServerSession.attach <comm_core.session.ServerSession.attach>`
    #: (:func:`comm_core.listen` calls it); ``None`` for a listener made otherwise.
    session: ListenerSession | None = None
    _stopped_by_base = False  # Listener.stop() ran
    _running = False  # started, and not stopped since

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Note every listener that starts (until it stops), whatever the backend, so that
        # the conformance kit can report listeners a test left running.
        start = cls.__dict__.get("start")
        if start is not None and not getattr(start, "_comm_tracked", False):
            cls.start = _track_start(start)  # type: ignore[method-assign,assignment]

    @abstractmethod
    async def start(self) -> None:
        """Start accepting. Idempotent: a started listener ignores another call.

        Raises:
            ConnectError: the address cannot be bound (in use, not local, ...),
                with the address and the OS's reason.
            AddressError: the listen address is malformed.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop accepting new connections, at once (a stopped listener's address is free).

        A stopped listener still serves the connections it accepted before:
        each keeps the deadline of its handshake, counted from its accept, and
        is handed to the handler once its handshake is done, or dropped when
        the deadline passes. So a comm that :func:`comm_core.connect` returned
        is never lost to ``stop()``, even though its dialer sends its own
        handshake only with its first write. Comms already handed to the
        handler stay open. ``stop()`` waits for nothing. Idempotent; never
        raises. Implementations stop accepting, then call ``super().stop()``;
        they must not abort connections they accepted.
        """
        # Deliberately no abort of the comms in their handshake here (issue 18): the
        # handshake's own deadline bounds them, and their dialers may already hold a
        # comm that connect() returned.
        self._stopped_by_base = True
        self._running = False
        _live_listeners.discard(self)
        if self.session is not None:
            self.session.stopped(self)

    @property
    def handshake_timeout(self) -> float:
        """Seconds a new peer has to complete the comm handshake.

        The ``handshake_timeout`` given to :func:`comm_core.listen`, else the
        ``handshake_timeout`` setting in force when ``listen()`` was called (a
        listener made otherwise reads the setting each time). Stream listeners
        (tcp, tls) count it from the moment they accept a connection: the
        preamble, the comm handshake and whatever the transport runs first
        (TLS's handshake) must all be done by then, not each in its own time.
        """
        session = self.session
        if session is None:
            return float(get_setting("handshake_timeout"))
        return session.options.handshake_timeout

    @property
    def max_pending_handshakes(self) -> int:
        """Most connections this listener keeps before their comm handshake is done.

        The ``max_pending_handshakes`` given to :func:`comm_core.listen`, else
        the setting in force when ``listen()`` was called (a listener made
        otherwise reads the setting each time). Stream listeners (tcp, tls)
        drop the oldest silent such connection when one more arrives, or
        refuse the new one if none may go yet (see
        :class:`comm_core.stream.StreamAcceptor`).
        """
        session = self.session
        if session is None:
            return int(get_setting("max_pending_handshakes"))
        return session.options.max_pending_handshakes

    @property
    @abstractmethod
    def listen_address(self) -> str:
        """The address listened on, as a URI; may name a wildcard host (``tcp://0.0.0.0:8786``)."""

    @property
    @abstractmethod
    def contact_address(self) -> str:
        """A concrete address a peer can dial to reach this listener, as a URI."""

    @property
    def extra_info(self) -> Mapping[str, Any]:
        """Transport-specific facts, such as the bound sockets."""
        return _EMPTY

    def __repr__(self) -> str:
        try:
            where = self.contact_address
        except Exception:  # not started yet
            where = "(not started)"
        return f"<{type(self).__name__} {where}>"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __await__(self) -> Generator[Any, None, Self]:
        async def start() -> Self:
            await self.start()
            return self

        return start().__await__()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self._running:
            return
        try:
            description = repr(self)
        except Exception:
            description = f"<{type(self).__name__}>"
        _warn(
            f"{description} was garbage-collected while running (started, never stopped); "
            "stop listeners with 'listener.stop()' or 'async with listener'",
            ResourceWarning,
            source=self,
        )


class Connector(ABC):
    """Dials a backend's locations. Stateless; one per backend is enough."""

    @abstractmethod
    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        """Open a comm to *address*, a location of this backend's scheme (without ``scheme://``).

        No handshake: :func:`comm_core.connect` runs it. Implementations ignore
        ``connection_args`` they do not use, and clean up if cancelled.

        :func:`comm_core.connect` passes *options*, the settings it resolved
        (its own arguments over the settings in force): a connector hands them
        to the comm it makes (:class:`~comm_core.stream.StreamComm` takes
        ``options=``) and uses their timeouts for work of its own, such as a
        TLS handshake. ``None`` (a caller other than ``connect()``): the
        settings in force, ``Options()``. A connector that declares no
        ``options`` parameter receives it among ``connection_args``.

        Raises:
            ConnectError: the attempt failed in a way a retry may fix (refused,
                reset, unreachable, nobody listening); retried by ``connect()``.
            FatalCommClosedError: the attempt failed in a way no retry fixes
                (a rejected certificate, ...).
            AddressError: the location is malformed or cannot be dialled (a
                wildcard host, a missing port).
        """


class Backend(ABC):
    """A transport for one URI scheme; the unit that plugins register.

    Subclasses set :attr:`scheme` and may declare :attr:`capabilities`. The
    registry creates one instance per scheme, with no arguments, on first use.
    """

    #: The URI scheme this backend serves, such as ``"tcp"``.
    scheme: ClassVar[str]
    #: What the backend guarantees, from :class:`Capability` or names of its own.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @property
    def encrypted(self) -> bool:
        """Whether this backend declares :attr:`Capability.ENCRYPTED`."""
        return Capability.ENCRYPTED in self.capabilities

    @abstractmethod
    def get_connector(self) -> Connector:
        """Return the :class:`Connector` that dials this scheme's locations."""

    @abstractmethod
    def get_listener(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        **connection_args: Any,
    ) -> Listener:
        """Return an unstarted :class:`Listener` on location *loc*.

        *handle_comm* must be awaited once for each accepted comm, in a task of
        its own. Unused ``connection_args`` are ignored.

        From :func:`comm_core.listen`, *handle_comm* is a
        :class:`~comm_core.session.ServerSession`: a listener that wants them
        takes from it the options of its comms
        (:func:`~comm_core.session.options_of`), the greeting they may send
        before hearing from the peer, and the handshake deadline (a stream
        listener gets all of it from :class:`~comm_core.stream.StreamAcceptor`).
        A listener that only awaits ``handle_comm(comm)`` works too.

        Raises:
            AddressError: *loc* is malformed for this scheme.
        """

    @abstractmethod
    def get_address_host(self, loc: str) -> str:
        """Return the host part of *loc*, for grouping comms by machine.

        Raises:
            AddressError: *loc* is malformed.
        """

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        """Return ``(host, port)`` of *loc*.

        Raises:
            AddressError: *loc* is malformed, or the scheme has no ports (the default).
        """
        raise AddressError(f"{self.scheme!r} addresses have no port: {self.scheme}://{loc}")

    @abstractmethod
    def resolve_address(self, loc: str) -> str:
        """Return *loc* with host names resolved to addresses (may block on DNS)."""

    @abstractmethod
    def get_local_address_for(self, loc: str) -> str:
        """Return the local location from which *loc* would be reached."""
