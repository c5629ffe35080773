"""The unix comm: comm-core's stream comm, with the peer's credentials and unix addresses."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import Any

from comm_core.stream import StreamComm, StreamProtocol
from comm_unix._address import SCHEME, address_of
from comm_unix._credentials import PeerCredentials, peer_credentials

__all__ = ["SEND_BUFFER", "UnixComm", "UnixProtocol"]

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


class UnixComm(StreamComm):
    """A comm over one Unix domain socket connection.

    Everything (framing, flow control, serialization) comes from
    :class:`~comm_core.stream.StreamComm`. The listening end's address is its
    socket path (or ``@name``); a connecting end has no path, so its address
    is ``unix://``. ``extra_info`` adds the peer's credentials: ``peer_pid``,
    ``peer_uid`` and ``peer_gid`` (``None`` where the OS does not say).

    Args:
        send_buffer: the socket's send buffer (``SO_SNDBUF``) in bytes; 0 keeps
            the OS's default.
        kwargs: as :class:`~comm_core.stream.StreamComm`.
    """

    protocol_class = UnixProtocol
    protocol: UnixProtocol

    def __init__(
        self,
        *,
        on_established: Callable[[StreamComm], None] | None = None,
        send_buffer: int = SEND_BUFFER,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheme=SCHEME, on_established=on_established, **kwargs)
        self.protocol.send_buffer = send_buffer

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
        return {**super().extra_info, **peer, "send_buffer": self.protocol.send_buffer}
