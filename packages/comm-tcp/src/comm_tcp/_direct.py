"""Opening and accepting TCP connections without asyncio's create_connection/create_server.

asyncio's own paths cost several event-loop iterations per connection: the
server spawns a task per accepted connection, which waits for a future set
once the protocol is connected; the client waits for the socket to become
writable, then for another such future. On asyncio's selector event loops
(the default loop on Unix), comm-tcp does the same work with less: the
listening socket gets a reader callback that accepts every pending connection
and makes each transport at once, and a connect that is complete when
``connect()`` returns (as on the loopback interface) makes its transport
without waiting for the socket to become writable. The transport is
comm-tcp's own (:mod:`comm_tcp._transport`), which connects its protocol at
once; ``COMM_TCP_TRANSPORT=asyncio`` selects asyncio's instead. Accepting and
dialling themselves are comm-core's (:mod:`comm_core.sockets`): what is here
is what comm-tcp does with the sockets.

Making asyncio's transport for a socket needs asyncio's private API; that use
is confined to :func:`socket_transport_factory`, which returns ``None`` on
every loop it does not know (uvloop, Windows' proactor loop, ...). Callers
then use the public ``create_connection`` / ``create_server``.
"""

from __future__ import annotations

import asyncio
import socket
from asyncio import selector_events
from collections.abc import Callable
from typing import Any, Protocol

from comm_core.sockets import connect_socket, ip_family
from comm_core.stream import StreamProtocol
from comm_tcp import _transport
from comm_tcp._transport import SocketTransport

__all__ = [
    "TransportFactory",
    "accept_handler",
    "dial",
    "ip_family",
    "socket_transport_factory",
]


class TransportFactory(Protocol):
    """Makes a transport over a connected non-blocking socket, for *protocol*.

    The protocol's ``connection_made`` is called before the call returns
    (comm-tcp's :class:`~comm_tcp._transport.SocketTransport`), or on the
    next loop iteration, before any callback scheduled after the call
    (asyncio's transport).
    """

    def __call__(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: None = None,
        *,
        extra: dict[str, Any] | None = None,
    ) -> asyncio.Transport: ...


class _OwnTransports:
    """Makes comm-tcp's own transports on one loop (a :class:`TransportFactory`)."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(
        self,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: None = None,
        *,
        extra: dict[str, Any] | None = None,
    ) -> asyncio.Transport:
        transport = SocketTransport(self.loop, sock, protocol, extra)
        transport.start()
        return transport


def socket_transport_factory(loop: asyncio.AbstractEventLoop) -> TransportFactory | None:
    """A transport factory for *loop* if it is one of asyncio's selector loops, else ``None``.

    The factory makes comm-tcp's own :class:`~comm_tcp._transport.SocketTransport`
    unless ``COMM_TCP_TRANSPORT=asyncio`` is set (or the platform has no
    ``sendmsg``); then it is asyncio's, which is comm-tcp's only use of
    asyncio's private API: the
    ``_make_socket_transport(sock, protocol, waiter=None, *, extra=None,
    server=None)`` method of ``asyncio.selector_events.BaseSelectorEventLoop``,
    the same on Python 3.10 to 3.13, which asyncio's own ``create_connection``
    and ``create_server`` call. Any other loop (uvloop, the proactor loop,
    loops not derived from asyncio's selector loop) gets ``None``, and comm-tcp
    uses the public API there.
    """
    if not isinstance(loop, selector_events.BaseSelectorEventLoop):
        return None
    if _transport.available():
        return _OwnTransports(loop)
    factory: TransportFactory | None = getattr(loop, "_make_socket_transport", None)
    return factory


async def dial(
    make_transport: TransportFactory, protocol: asyncio.BaseProtocol, host: str, port: int
) -> None:
    """Connect to the numeric address ``(host, port)`` and connect *protocol* to it.

    Returns once the protocol's ``connection_made`` has run. Raises the
    ``OSError`` of a failed connect (see :func:`comm_core.sockets.connect_socket`);
    on any error or cancellation the socket (or the transport made for it) is closed.
    """
    sock, peer = await connect_socket(host, port)
    transport: asyncio.Transport | None = None
    try:
        transport = make_transport(sock, protocol, extra={"peername": peer})
        if not isinstance(transport, SocketTransport):
            # asyncio's transport calls connection_made() from the loop, which runs
            # callbacks in order: after one bare yield the protocol is connected.
            await asyncio.sleep(0)
    except BaseException:
        if transport is not None:
            transport.abort()
        else:
            sock.close()
        raise


def _send_now(sock: socket.socket, data: bytes) -> int | None:
    """Bytes of *data* that a non-blocking send took; ``None`` if it failed (the
    transport then reports the failure, or sends all of it)."""
    try:
        return sock.send(data)
    except OSError:
        return None


def accept_handler(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    make_transport: TransportFactory,
    *,
    greeting: Callable[[], bytes | None] | None = None,
    admit: Callable[[Any], bool] | None = None,
) -> Callable[[socket.socket, Any], None]:
    """What a listener does with each socket that comm-core's
    :class:`~comm_core.sockets.AcceptLoop` accepts: the ``on_accept`` callback.

    *admit* (given the peer's address) may refuse the connection (its listener
    holds ``max_pending_handshakes`` connections, none of which may go yet):
    the socket is then closed at once, without a greeting. Else a stream
    protocol's greeting (a listener's preamble and handshake, from *greeting*)
    is sent before the transport is made, which saves the peer a loop
    iteration of waiting for it; then the protocol from *protocol_factory*
    gets a transport from *make_transport*.
    """

    def on_accept(conn: socket.socket, peer: Any) -> None:
        if admit is not None and not admit(peer):
            conn.close()  # refused (max_pending_handshakes): before its greeting
            return
        conn.setblocking(False)
        # The greeting first, if known: the peer waits for it, not for the comm.
        early = greeting() if greeting is not None else None
        sent = _send_now(conn, early) if early is not None else None
        protocol = protocol_factory()
        if isinstance(protocol, StreamProtocol):
            if protocol.closing:  # refused after all: it never reads the greeting
                conn.close()
                return
            if early is not None and sent is not None:
                protocol.greeted(early, sent)
            else:
                protocol.send_greeting(conn)  # now: the transport would later
        make_transport(conn, protocol, extra={"peername": peer})

    return on_accept
