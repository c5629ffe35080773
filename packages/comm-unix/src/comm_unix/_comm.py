"""The unix comm: comm-core's stream comm, with the peer's credentials and unix addresses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from comm_core import ProtocolError
from comm_core.stream import StreamComm, StreamProtocol
from comm_unix._address import SCHEME, address_of
from comm_unix._arena import (
    ARENA_SIZE,
    ARENA_THRESHOLD,
    ARENA_WAIT,
    Arena,
    default_size,
    unavailable,
)
from comm_unix._credentials import PeerCredentials, peer_credentials

__all__ = ["ARENA_OFFER", "SEND_BUFFER", "UnixComm", "UnixProtocol"]

#: The handshake entry that offers the arena: the largest arena this side accepts.
ARENA_OFFER = "shm_arena"

#: The default send buffer of a unix comm's socket (``SO_SNDBUF``), in bytes. Linux's
#: default (208 KiB) caps each piece of a large message at half of it and wakes the
#: reader once per piece: a larger buffer moves large messages about a third faster.
SEND_BUFFER = 1024 * 1024


class UnixProtocol(StreamProtocol):
    """A stream protocol that learns who its peer is when the connection is made.

    A listener sets :attr:`allowed_uid` on the protocols of the connections it
    accepts through its event loop's server (uvloop's): a peer of another user
    is then dropped before it is greeted. (On asyncio's selector loops the
    listener checks the peer before it makes the comm, see ``comm_unix._transport``.)
    """

    #: The peer's credentials, read when the connection is made (or by the listener).
    credentials: PeerCredentials | None = None
    #: If set, a peer whose user id differs is dropped in :meth:`connection_made`.
    allowed_uid: int | None = None
    #: Called with the credentials (``None``: unknown) of a peer dropped for its user id.
    on_refused: Callable[[PeerCredentials | None], None] | None = None
    #: The socket's send buffer (``SO_SNDBUF``) in bytes; 0: the OS's default.
    send_buffer: int = SEND_BUFFER
    #: The largest shared-memory arena per direction, in bytes; 0: none (see
    #: ``comm_unix._arena``).
    arena_size: int = ARENA_SIZE
    #: Out-of-band buffers at least this long go through the arena.
    arena_threshold: int = ARENA_THRESHOLD
    #: Seconds a write waits for room in the arena before the buffer goes on the socket.
    arena_wait: float = ARENA_WAIT
    #: The arena of this connection, once connected, if it may have one.
    arena: Arena | None = None
    #: Reads the largest arena the peer accepts from its handshake (set by the comm).
    peer_offer: Callable[[], int | None] | None = None

    def arena_unavailable(self) -> str | None:
        """Why this connection cannot use an arena, or ``None`` if it can (given the peer
        offers one too)."""
        if self.arena_size <= 0:
            return "turned off (arena_size=0)"
        loop = asyncio.get_running_loop()
        if not isinstance(loop, asyncio.SelectorEventLoop):
            return f"{type(loop).__name__} drives its own sockets (no descriptor passing)"
        credentials = self.credentials
        if credentials is None or credentials.uid != os.getuid():
            return "the peer is not of this user (or the OS does not say)"
        return unavailable()

    def tune(self, sock: Any) -> None:
        """Set *sock*'s options (its send buffer) before the connection carries anything.

        Raises:
            OSError: the OS refused.
        """
        if self.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.credentials is None:  # made by the event loop's server: not seen yet
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):  # the connection may be gone already
                    self.tune(sock)
            self.credentials = peer_credentials(sock) if sock is not None else None
            allowed = self.allowed_uid
            if allowed is not None and (
                self.credentials is None or self.credentials.uid != allowed
            ):
                if self.on_refused is not None:
                    self.on_refused(self.credentials)
                self.abort()  # the connection is dropped as it is made: never greeted
        super().connection_made(transport)
        # Unix socket addresses as comm addresses (Linux's abstract names, '@name').
        self.local = address_of(transport.get_extra_info("sockname"))
        self.peer = address_of(transport.get_extra_info("peername"))
        self.decoder.peer = self.peer
        if not self.closing and self.arena_unavailable() is None:
            self._start_arena(transport)

    def _start_arena(self, transport: asyncio.BaseTransport) -> None:
        from comm_unix._transport import UnixSocket, UnixTransport

        sock = transport.get_extra_info("socket")
        if not isinstance(transport, UnixTransport) or not isinstance(sock, UnixSocket):
            return
        arena = self.arena = Arena(
            self,
            transport.send_fds,
            size=self.arena_size,
            threshold=self.arena_threshold,
            peer_offer=self.peer_offer or (lambda: 0),
            wait=self.arena_wait,
        )
        self.references = self.decoder.references = arena
        sock.receive_descriptors(self._descriptors)

    def _descriptors(self, fds: list[int], truncated: bool) -> bool:
        arena = self.arena
        assert arena is not None
        try:
            arena.descriptors(fds, truncated)
        except ProtocolError as exc:
            self.fail(exc)
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.arena is not None:
            self.arena.close()
            self.references = self.decoder.references = None


class UnixComm(StreamComm):
    """A comm over one Unix domain socket connection.

    Everything (framing, flow control, serialization) comes from
    :class:`~comm_core.stream.StreamComm`. The listening end's address is its
    socket path (or ``@name``); a connecting end has no path, so its address
    is ``unix://``. ``extra_info`` adds the peer's credentials: ``peer_pid``,
    ``peer_uid`` and ``peer_gid`` (``None`` where the OS does not say).

    Out-of-band buffers of at least *arena_threshold* bytes travel through a
    shared-memory arena when both ends offer one in their handshake (same
    user, asyncio's selector loop, Linux): they are read in place, as
    read-only views (see docs/transports/unix.rst). ``extra_info`` says
    whether: ``arena`` (``True`` once both ends agreed) and ``arena_off``
    (why not, or ``None``).

    Raises:
        ValueError: ``COMM_UNIX_ARENA_SIZE`` is malformed.

    Args:
        send_buffer: the socket's send buffer (``SO_SNDBUF``) in bytes; 0 keeps
            the OS's default.
        arena_size: the largest arena per direction, in bytes; 0: no arena.
            Default: ``COMM_UNIX_ARENA_SIZE`` from the environment, else 256 MiB.
        arena_threshold: the smallest buffer that goes through the arena.
        arena_wait: the longest, in seconds, a write waits for the reader to
            release room in a full arena before the buffer goes on the socket
            (a reader that keeps what it received holds its slots for good);
            ``math.inf``: for ever.
        kwargs: as :class:`~comm_core.stream.StreamComm`.
    """

    protocol_class = UnixProtocol
    protocol: UnixProtocol
    #: What another, authenticated channel established about the peer, added to
    #: ``extra_info``: a tls:// listener's same-host path sets the TLS peer's
    #: ``peercert`` here (see :mod:`comm_unix._select`).
    vouched: Mapping[str, Any] = MappingProxyType({})

    def __init__(
        self,
        *,
        on_established: Callable[[StreamComm], None] | None = None,
        send_buffer: int = SEND_BUFFER,
        arena_size: int | None = None,
        arena_threshold: int = ARENA_THRESHOLD,
        arena_wait: float = ARENA_WAIT,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheme=SCHEME, on_established=on_established, **kwargs)
        protocol = self.protocol
        protocol.send_buffer = send_buffer
        protocol.arena_size = default_size() if arena_size is None else arena_size
        protocol.arena_threshold = arena_threshold
        protocol.arena_wait = arena_wait
        ref = weakref.ref(self)

        def peer_offer() -> int | None:
            comm = ref()
            if comm is None:
                return 0
            info = comm.handshake_info
            if not info:
                return None  # the handshake is not over
            offer = info.get(ARENA_OFFER)
            return offer if type(offer) is int and offer > 0 else 0

        protocol.peer_offer = peer_offer

    def handshake_options(self) -> Mapping[str, Any]:
        """Offers the arena (the largest this side accepts) where it can have one: once
        connected, if it has one (a comm on a socket that cannot receive descriptors has
        none); before (a listener's greeting), if nothing stands against it."""
        protocol = self.protocol
        if protocol.transport is not None:
            offer = protocol.arena is not None
        else:
            offer = protocol.arena_unavailable() is None
        return {ARENA_OFFER: protocol.arena_size} if offer else {}

    @property
    def same_host(self) -> bool:
        """Always true: a Unix socket never leaves the machine."""
        return True

    @property
    def credentials(self) -> PeerCredentials | None:
        """Who the peer is, as the kernel says (``None`` before the connection or where
        the OS cannot say)."""
        return self.protocol.credentials

    @property
    def extra_info(self) -> Mapping[str, Any]:
        credentials = self.protocol.credentials
        peer = (
            credentials.as_extra_info()
            if credentials is not None
            else {"peer_pid": None, "peer_uid": None, "peer_gid": None}
        )
        protocol = self.protocol
        arena = protocol.arena
        if arena is not None and arena.writing:
            off = None
        elif arena is not None:
            off = arena.broken or (
                "the peer did not offer one" if arena.peer_offer() == 0 else "not agreed yet"
            )
        else:
            try:
                off = protocol.arena_unavailable() or "not connected"
            except RuntimeError:  # no running loop
                off = "not connected"
        return {
            **super().extra_info,
            **peer,
            "send_buffer": protocol.send_buffer,
            "arena": off is None,
            "arena_off": off,
            **self.vouched,
        }
