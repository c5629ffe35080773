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
once; ``COMM_TCP_TRANSPORT=asyncio`` selects asyncio's instead.

Making asyncio's transport for a socket needs asyncio's private API; that use
is confined to :func:`socket_transport_factory`, which returns ``None`` on
every loop it does not know (uvloop, Windows' proactor loop, ...). Callers
then use the public ``create_connection`` / ``create_server``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from asyncio import selector_events
from collections.abc import Callable
from typing import Any, Protocol

from comm_core.stream import StreamProtocol
from comm_tcp import _transport
from comm_tcp._transport import SocketTransport

__all__ = ["AcceptLoop", "TransportFactory", "dial", "ip_family", "socket_transport_factory"]

logger = logging.getLogger("comm_tcp")


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


def ip_family(host: str) -> int | None:
    """``AF_INET`` or ``AF_INET6`` if *host* is a numeric IP address, else ``None``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return None  # a name, or a form inet_pton refuses (scoped IPv6): resolve it
    return family


def _peer_if_connected(sock: socket.socket) -> Any:
    """*sock*'s peer address once its non-blocking connect has completed, else ``None``.

    Raises the connect's error if it failed.
    """
    try:
        return sock.getpeername()
    except OSError:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err)) from None
        return None


#: Non-blocking from creation where the OS can (Linux): one system call fewer per connect.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM_NONBLOCK = socket.SOCK_STREAM | _NONBLOCK


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def dial(
    loop: asyncio.AbstractEventLoop,
    make_transport: TransportFactory,
    protocol: asyncio.BaseProtocol,
    family: int,
    host: str,
    port: int,
) -> None:
    """Connect to the numeric address ``(host, port)`` and connect *protocol* to it.

    Returns once the protocol's ``connection_made`` has run. Raises the
    ``OSError`` of a failed connect; on any error or cancellation the socket
    (or the transport made for it) is closed.
    """
    sock = socket.socket(family, _STREAM_NONBLOCK)
    transport: asyncio.Transport | None = None
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        peer = None
        try:
            sock.connect((host, port))
        except (BlockingIOError, InterruptedError):
            # On the loopback interface the connection is usually complete already.
            peer = _peer_if_connected(sock)
            if peer is None:
                peer = await _connected(loop, sock)
        extra = None if peer is None else {"peername": peer}
        transport = make_transport(sock, protocol, extra=extra)
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


async def _connected(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """Wait until *sock*'s pending connect completes and return the peer's address.

    Raises the connect's error if it fails.
    """
    fd = sock.fileno()
    while True:  # ends when the connect completes or fails, or the caller's timeout cancels it
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
        peer = _peer_if_connected(sock)
        if peer is not None:
            return peer


#: Errors of accept() that concern one connection only, not the listening socket: Linux
#: reports a new connection's pending network error there, and EPERM for one a firewall
#: refused.
_ONE_CONNECTION = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENETUNREACH", "EHOSTDOWN",
        "EHOSTUNREACH", "ENONET", "ENOPROTOOPT", "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)  # fmt: skip


def _send_now(sock: socket.socket, data: bytes) -> int | None:
    """Bytes of *data* that a non-blocking send took; ``None`` if it failed (the
    transport then reports the failure, or sends all of it)."""
    try:
        return sock.send(data)
    except OSError:
        return None


class AcceptLoop:
    """Accepts the connections of one listening socket with a reader callback.

    Each time the socket is readable, every pending connection (up to
    *backlog* of them) is accepted, given a protocol from *protocol_factory*
    and a transport from *make_transport*. A stream protocol's greeting (a
    listener's preamble and handshake) is sent before the transport is made,
    which saves the peer a loop iteration of waiting for it. Before that,
    *admit* (given the peer's address) may refuse the connection (its listener
    holds ``max_pending_handshakes`` connections, none of which may go yet):
    its socket is then closed at once, without a greeting. If
    ``accept()`` fails for the listening socket (out of descriptors or memory),
    the failure is logged and accepting pauses for *retry_delay* seconds: the
    pending connections wait in the kernel's queue meanwhile.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        make_transport: TransportFactory,
        *,
        backlog: int,
        retry_delay: float,
        where: Callable[[], str],
        greeting: Callable[[], bytes | None] | None = None,
        admit: Callable[[Any], bool] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.greeting = greeting
        self.admit = admit
        self.make_transport = make_transport
        self.backlog = max(backlog, 1)
        self.retry_delay = retry_delay
        self.where = where
        self.closed = False
        self._fd = sock.fileno()
        self._retry: asyncio.TimerHandle | None = None
        loop.add_reader(self._fd, self._accept)

    def _accept(self) -> None:
        sock = self.sock
        make_transport = self.make_transport
        for _ in range(self.backlog):  # bounded, so that other callbacks get their turn
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION:
                    continue  # that client is gone; others may be waiting
                self._pause(exc)
                return
            try:
                if self.admit is not None and not self.admit(peer):
                    conn.close()  # refused (max_pending_handshakes): before its greeting
                    continue
                conn.setblocking(False)
                # The greeting first, if known: the peer waits for it, not for the comm.
                early = self.greeting() if self.greeting is not None else None
                sent = _send_now(conn, early) if early is not None else None
                protocol = self.protocol_factory()
                if isinstance(protocol, StreamProtocol):
                    if protocol.closing:  # refused after all: it never reads the greeting
                        conn.close()
                        continue
                    if early is not None and sent is not None:
                        protocol.greeted(early, sent)
                    else:
                        protocol.send_greeting(conn)  # now: the transport would later
                make_transport(conn, protocol, extra={"peername": peer})
            except Exception:
                conn.close()
                logger.exception(
                    "listener %s: could not set up the connection from %s", self.where(), peer
                )

    def _pause(self, exc: OSError) -> None:
        logger.warning(
            "listener %s: accepting a connection failed: %s; accepting again in %gs",
            self.where(),
            exc,
            self.retry_delay,
        )
        self.loop.remove_reader(self._fd)
        self._retry = self.loop.call_later(self.retry_delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self.closed:
            self.loop.add_reader(self._fd, self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        self.sock.close()
