"""Opening and accepting unix connections, on comm-core's socket transport where it runs.

On asyncio's selector loops (the default loop on Unix) comm-unix drives its
sockets itself with comm-core's :class:`~comm_core.transport.SocketTransport`,
as comm-tcp does: a dialled or accepted connection has its transport, and a
listener's greeting leaves, in the same loop iteration; reads land in the
comm's buffers; large buffers are sent from the caller's memory. Other loops
(uvloop) get the same sockets through their public ``create_unix_connection``
and ``create_unix_server``.

A dialer checks its peer's credentials on the connected socket before making
the transport; so does a listener on the selector loops, before it greets the
peer (elsewhere :class:`~comm_unix.UnixProtocol` does as the connection is made).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from array import array
from collections.abc import Callable
from typing import Any

from comm_core.transport import SocketTransport
from comm_unix._arena import ANCILLARY_SPACE, descriptors_in
from comm_unix._comm import UnixProtocol
from comm_unix._credentials import PeerCredentials, peer_credentials

__all__ = ["UnixSocket", "UnixTransport", "accept_handler", "dial", "drives_sockets"]

logger = logging.getLogger("comm_unix")


class UnixSocket(socket.socket):
    """A unix stream socket that can also receive descriptors (``SCM_RIGHTS``).

    After :meth:`receive_descriptors`, its ``recv_into`` (what comm-core's
    transport reads with) is ``recvmsg_into``: descriptors that arrive are
    handed to the callback, which keeps or closes them. Until then it is the
    plain ``recv_into``, and the kernel discards any descriptor sent to it.
    """

    def receive_descriptors(self, on_fds: Callable[[list[int], bool], bool]) -> None:
        """Receive descriptors from now on: ``on_fds(fds, truncated)`` gets those of each
        receive (``truncated``: the kernel dropped some that did not fit) and returns
        whether the connection goes on; if not, the receive raises
        :class:`ConnectionAbortedError` (the transport then closes)."""
        recvmsg_into = self.recvmsg_into
        flags = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

        def recv_into(buffer: Any, nbytes: int = 0, _flags: int = 0) -> int:
            n, ancillary, msg_flags, _ = recvmsg_into([buffer], ANCILLARY_SPACE, flags)
            if (ancillary or msg_flags & socket.MSG_CTRUNC) and not on_fds(
                descriptors_in(ancillary), bool(msg_flags & socket.MSG_CTRUNC)
            ):
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, "the peer sent descriptors that were refused"
                )
            return n

        self.recv_into = recv_into  # type: ignore[method-assign,assignment]


class UnixTransport(SocketTransport):
    """comm-core's :class:`~comm_core.transport.SocketTransport`, logging as ``comm_unix``,
    which can also send descriptors (:meth:`send_fds`)."""

    _logger = logger

    async def send_fds(self, data: bytes, fds: list[int]) -> None:
        """Send *data* with *fds* attached (``SCM_RIGHTS``), after everything written before.

        Raises:
            CommClosedError: the connection is closed, or closes while waiting, or
                the kernel refused (the transport is then closed too).
        """
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))]
        await self.send_ancillary(data, rights)


def drives_sockets(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether comm-unix makes its own transports on *loop* (asyncio's selector loops)."""
    return isinstance(loop, asyncio.SelectorEventLoop) and hasattr(socket.socket, "sendmsg")


async def dial(
    sockaddr: str | bytes,
    protocol: UnixProtocol,
    check: Callable[[PeerCredentials | None], None],
) -> None:
    """Connect to *sockaddr* and connect *protocol* to it.

    ``check(credentials)`` sees the listener's credentials before anything
    is sent; it raises to refuse the listener. Returns once the protocol's
    ``connection_made`` has run. On any error or cancellation the socket (or
    the transport made for it) is closed.

    Raises:
        OSError: the connect failed (no such file, refused, ...).
        Exception: what *check* raised.
    """
    loop = asyncio.get_running_loop()
    sock = UnixSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    transport: Any = None
    try:
        sock.setblocking(False)
        try:
            sock.connect(sockaddr)  # a listener with room in its backlog: done at once
        except (BlockingIOError, InterruptedError):
            # Its backlog is full (EAGAIN): the loop waits for the socket, which may then
            # still be unconnected; getpeername() below tells (ENOTCONN, retried).
            await loop.sock_connect(sock, sockaddr)
        peer = sock.getpeername()
        protocol.credentials = credentials = peer_credentials(sock)
        check(credentials)
        protocol.tune(sock)
        if drives_sockets(loop):
            transport = UnixTransport(loop, sock, protocol, {"peername": peer})
            transport.start()
        else:
            transport, _ = await loop.create_unix_connection(lambda: protocol, sock=sock)
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
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[PeerCredentials | None], UnixProtocol],
    *,
    allowed: Callable[[PeerCredentials | None], bool],
    greeting: Callable[[], bytes | None],
    admit: Callable[[Any], bool],
) -> Callable[[socket.socket, Any], None]:
    """What a listener does with each socket that comm-core's
    :class:`~comm_core.sockets.AcceptLoop` accepts: the ``on_accept`` callback.

    A peer that *allowed* (given its credentials) refuses is closed at once,
    and so is one that *admit* refuses (``max_pending_handshakes``), without a
    greeting. Otherwise the listener's greeting (its preamble and handshake,
    from *greeting*) is sent before the transport is made, which saves the
    peer a loop iteration of waiting for it; then the protocol from
    *protocol_factory* gets its transport.
    """

    def on_accept(conn: socket.socket, peer: Any) -> None:
        credentials = peer_credentials(conn)
        if not allowed(credentials) or not admit(peer):
            conn.close()
            return
        # One that can receive descriptors (the arena's), should the comm have one.
        conn = UnixSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=conn.detach())
        conn.setblocking(False)
        early = greeting()
        sent = _send_now(conn, early) if early is not None else None
        protocol = protocol_factory(credentials)
        if protocol.closing:  # refused after all: it never reads the greeting
            conn.close()
            return
        protocol.tune(conn)
        if early is not None and sent is not None:
            protocol.greeted(early, sent)
        else:
            protocol.send_greeting(conn)  # now: the transport would later
        UnixTransport(loop, conn, protocol, {"peername": peer}).start()

    return on_accept
