"""The tls listener: comm-tcp's listener, with each accepted connection upgraded to TLS."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

from comm_core.abc import CommHandler
from comm_core.protocol import MAGIC
from comm_core.stream import format_sockaddr
from comm_tcp import TCPListener
from comm_tls._comm import TLSProtocol
from comm_tls._errors import describe_failure
from comm_tls._handshake import (
    TLS_ALERT_PROTOCOL_VERSION,
    HandshakeWatch,
    PendingProtocol,
    feed,
    interpose,
    remove_interposer,
)
from comm_tls._resume import forbidden
from comm_tls._security import context_for
from comm_tls._transport import TLSTransport, handshake, wait_readable

if TYPE_CHECKING:
    from comm_tcp import TCPConnector

__all__ = ["TLSListener"]

logger = logging.getLogger("comm_tls")


def _not_tls(head: bytes) -> str:
    if head.startswith(MAGIC):
        return "the preamble of a plain comm client: is it dialling tcp:// instead of tls://?"
    if head[:4] in {b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN"}:
        return "HTTP: is it dialling http:// instead of tls://?"
    return "something else: is it a comm client dialling tls://?"


class _Accepted(asyncio.Protocol):
    """The protocol of a raw connection until ``start_tls`` takes the transport over."""

    def __init__(self, listener: TLSListener, protocol: TLSProtocol) -> None:
        self.listener = listener
        self.protocol = protocol
        #: Bytes read before start_tls took over (uvloop reads despite pause_reading()).
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        protocol = self.protocol
        if protocol.closing:  # dropped before its transport came (max_pending_handshakes)
            transport.abort()  # type: ignore[attr-defined]
            return
        transport.pause_reading()  # type: ignore[attr-defined]
        protocol.pending = transport
        protocol.server_side = True
        # The addresses, for messages about this connection before the hand-over.
        protocol.local = format_sockaddr(protocol.scheme, transport.get_extra_info("sockname"))
        protocol.peer = format_sockaddr(protocol.scheme, transport.get_extra_info("peername"))
        self.listener._upgrade_soon(transport, self)

    def data_received(self, data: bytes) -> None:
        self.early += data


class TLSListener(TCPListener):
    """Accepts tls comms on ``host:port``: TCP's listener, TLS on each connection.

    Each accepted connection runs its TLS handshake in a task of its own. One
    that fails is logged (a warning naming the client, the listener and what to
    fix) and dropped, and the listener keeps serving. The TLS handshake, the
    comm preamble and the comm handshake together must finish within the
    handshake timeout, counted from the accept; connections still in any of
    them count towards ``max_pending_handshakes``.

    Raises:
        TLSConfigurationError: on creation, when the connection arguments hold
            no usable ``security`` or ``ssl_context``.
    """

    greets_on_accept: ClassVar[bool] = False  # the greeting goes inside TLS

    def __init__(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool = True,
        *,
        connector: TCPConnector,
        **connection_args: Any,
    ) -> None:
        super().__init__(loc, handle_comm, deserialize, connector=connector, **connection_args)
        self.ssl_context = context_for(
            connection_args, server_side=True, address=self.listen_address
        )
        self._handshakes: set[asyncio.Task[None]] = set()
        #: The listening sockets, when comm-tls's own transport accepts (not asyncio's server).
        self._listening: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """As TCP's listener; over comm-tls's own transport, accepting on the loop directly.

        Raises:
            ConnectError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        from comm_tls._connector import TLSConnector

        connector = self.connector
        if not (isinstance(connector, TLSConnector) and connector.socket_transport(loop)):
            await super().start()
            return
        if self._servers or self._listening or self._stopped:
            return
        socks = self._open_sockets()
        self._loop = loop
        self._listening = socks
        for sock in socks:
            loop.add_reader(sock.fileno(), self._accept_ready, sock)
        self._bound = [sock.getsockname() for sock in socks]
        self.port = self._bound[0][1]

    def stop(self) -> None:
        listening, self._listening = self._listening, []
        if listening and self._loop is not None and not self._loop.is_closed():
            for sock in listening:
                self._loop.remove_reader(sock.fileno())
        for sock in listening:
            sock.close()
        super().stop()

    def _accept_ready(self, lsock: socket.socket) -> None:
        for _ in range(self.backlog):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a second rather than spin.
                    logger.error("listener %s: cannot accept: %s", self._where(), exc)
                    loop = self._loop
                    if loop is not None and lsock in self._listening:
                        loop.remove_reader(lsock.fileno())
                        loop.call_later(1.0, self._resume_accepting, lsock)
                return  # ECONNABORTED and the like: that client is gone
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._accept_socket(conn)
            except Exception:
                conn.close()
                logger.exception("listener %s: failed to set up a connection", self._where())

    def _resume_accepting(self, lsock: socket.socket) -> None:
        if lsock in self._listening and self._loop is not None:
            self._loop.add_reader(lsock.fileno(), self._accept_ready, lsock)

    def _accept_socket(self, conn: socket.socket) -> None:
        protocol = TCPListener._make_protocol(self)  # a comm's, with its preamble deadline
        assert isinstance(protocol, TLSProtocol)
        if protocol.closing:  # refused at once (max_pending_handshakes)
            conn.close()
            return
        pending = _PendingSocket()
        protocol.pending = pending
        protocol.server_side = True
        protocol.local = format_sockaddr(protocol.scheme, conn.getsockname())
        protocol.peer = format_sockaddr(protocol.scheme, conn.getpeername())
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._upgrade_socket(conn, protocol, pending))
        pending.task = task
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _upgrade_socket(
        self, conn: socket.socket, protocol: TLSProtocol, pending: _PendingSocket
    ) -> None:
        """Run the TLS handshake on the accepted *conn*, then hand a transport to the comm."""
        loop = asyncio.get_running_loop()
        timeout = self.handshake_timeout
        deadline = _deadline(protocol, loop, timeout)
        client = protocol.peer
        watch = HandshakeWatch(None)
        sock: socket.socket = conn
        error: BaseException | None = None
        resumed = False  # a session that the context does not allow
        try:
            # A peer that does not speak TLS gets an alert saying so, and is dropped at
            # once: OpenSSL would answer it with silence.
            await wait_readable(conn, deadline)
            watch.head = conn.recv(8, socket.MSG_PEEK)
            if watch.head and watch.speaks_tls:
                sock = self.ssl_context.wrap_socket(
                    conn, server_side=True, do_handshake_on_connect=False
                )
                await handshake(sock, deadline)
                resumed = forbidden(sock)
            elif watch.head:
                with contextlib.suppress(OSError):
                    conn.send(TLS_ALERT_PROTOCOL_VERSION)
                    _discard_input(conn)
        except asyncio.CancelledError:
            protocol.pending = None
            protocol.closing = True
            sock.close()
            raise
        except Exception as exc:
            error = exc
        if protocol.pending is not pending:  # the listener stopped, or the deadline passed
            sock.close()
            return
        protocol.pending = None
        if resumed:
            protocol.peer_gone = True
            sock.close()
            self._log_resumed(client)
            return
        if error is not None or not watch.head or not watch.speaks_tls:
            protocol.peer_gone = True
            self.acceptor.discard(protocol)
            if isinstance(error, ssl.SSLError):
                watch.error = error
                if "ALERT" not in (error.reason or ""):
                    # OpenSSL sent an alert saying why: let the client read it before the
                    # connection closes (closing now, with its next bytes unread, could
                    # reset the connection first).
                    with contextlib.suppress(Exception):
                        await wait_readable(sock, min(deadline, loop.time() + 1.0))
                        _discard_input(sock)
            sock.close()
            self._log_failure(client, watch, error, timeout)
            return
        assert isinstance(sock, ssl.SSLSocket)
        TLSTransport(loop, sock, protocol).start()

    def _make_protocol(self) -> asyncio.BaseProtocol:
        protocol = super()._make_protocol()  # a comm's, with its preamble deadline
        assert isinstance(protocol, TLSProtocol)
        return _Accepted(self, protocol)

    def _upgrade_soon(self, transport: asyncio.BaseTransport, accepted: _Accepted) -> None:
        task = asyncio.get_running_loop().create_task(self._upgrade(transport, accepted))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _upgrade(self, raw: asyncio.BaseTransport, accepted: _Accepted) -> None:
        """Run the TLS handshake on *raw*, then hand the TLS transport to the comm."""
        protocol = accepted.protocol
        loop = asyncio.get_running_loop()
        watch = HandshakeWatch(raw)
        pending = PendingProtocol()
        tls: asyncio.BaseTransport | None = None
        error: BaseException | None = None
        timeout = self.handshake_timeout
        remaining = _deadline(protocol, loop, timeout) - loop.time()
        if raw.is_closing() or remaining <= 0:  # aborted before this task ran, or too late
            protocol.pending = None
            raw.abort()  # type: ignore[attr-defined]
            self.acceptor.discard(protocol)
            return
        # Pause for real: Python 3.10's transports start reading after connection_made()
        # even if it paused them, and a byte read before start_tls's protocol is connected
        # would be lost. (resume_reading() first: pausing a paused transport does nothing.)
        raw.resume_reading()  # type: ignore[attr-defined]
        raw.pause_reading()  # type: ignore[attr-defined]
        # Runs once start_tls has installed its protocol, before that protocol is connected.
        loop.call_soon(lambda: interpose(raw, watch, bytes(accepted.early)))
        try:
            tls = await loop.start_tls(
                raw,
                pending,
                self.ssl_context,
                server_side=True,
                ssl_handshake_timeout=remaining,
            )
        except asyncio.CancelledError:
            protocol.pending = None
            protocol.closing = True
            raw.abort()  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            error = exc
        finally:
            if not raw.is_closing():
                remove_interposer(raw)
        aborted = protocol.pending is None  # the listener stopped, or the deadline passed
        protocol.pending = None
        if not watch.speaks_tls:
            # The Interposer sent an alert and hung up. uvloop's start_tls can then
            # return a transport as if the handshake had succeeded: it has not.
            tls_failed, tls = tls, None
            if tls_failed is not None:
                tls_failed.abort()  # type: ignore[attr-defined]
        if tls is not None and not aborted and forbidden(tls.get_extra_info("ssl_object")):
            tls.abort()  # type: ignore[attr-defined]
            protocol.peer_gone = True
            self._log_resumed(format_sockaddr(self.scheme, raw.get_extra_info("peername")))
            return
        if tls is None or pending.ended or aborted:
            protocol.peer_gone = True
            self.acceptor.discard(protocol)
            if tls is not None:
                tls.abort()  # type: ignore[attr-defined]
            if aborted:
                return
            if tls is not None:
                logger.info(
                    "listener %s: %s closed the connection right after the TLS handshake",
                    self._where(),
                    format_sockaddr(self.scheme, raw.get_extra_info("peername")),
                )
            else:
                client = format_sockaddr(self.scheme, raw.get_extra_info("peername"))
                self._log_failure(client, watch, error, timeout)
            return
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        for chunk in pending.data:
            if protocol.peer_gone:
                break
            feed(protocol, chunk)
        pending.data.clear()
        pending.target = protocol

    def _log_failure(
        self,
        client: str,
        watch: HandshakeWatch,
        error: BaseException | None,
        timeout: float,
    ) -> None:
        where = f"listener {self._where()}"
        if not watch.speaks_tls:
            logger.warning(
                "%s: TLS handshake with client %s failed: the client does not speak TLS: "
                "it sent %r, %s",
                where,
                client,
                watch.head,
                _not_tls(watch.head),
            )
            return
        reason: BaseException | None = watch.error or error
        if reason is None:
            reason = ConnectionResetError("the connection closed during the TLS handshake")
        if isinstance(reason, (TimeoutError, asyncio.TimeoutError)) or (
            isinstance(reason, ConnectionAbortedError) and "taking longer" in str(reason)
        ):
            level = logging.INFO if not watch.head else logging.WARNING
            logger.log(
                level,
                "%s: dropped %s: it did not complete the TLS handshake within %gs",
                where,
                client,
                timeout,
            )
            return
        if isinstance(reason, ssl.SSLError) or watch.head:
            message = describe_failure(reason, peer="client", address=f"client {client}")
            logger.warning("%s: %s", where, message)
        else:
            logger.info("%s: %s closed the connection before the TLS handshake", where, client)

    def _log_resumed(self, client: str) -> None:
        logger.warning(
            "listener %s: dropped %s: it resumed an earlier TLS session, which this listener "
            "does not allow (Security(resume_sessions=False)): its certificate was not checked "
            "again",
            self._where(),
            client,
        )

    def _where(self) -> str:
        """The contact address for messages; the listen address if not started."""
        try:
            return self.contact_address
        except RuntimeError:
            return self.listen_address


def _deadline(protocol: TLSProtocol, loop: asyncio.AbstractEventLoop, timeout: float) -> float:
    """When *protocol*'s connection must be done with TLS's handshake and the comm's: the
    deadline its listener's acceptor set on accepting it, else *timeout* from now."""
    deadline = protocol.deadline
    return loop.time() + timeout if deadline is None else deadline


class _PendingSocket:
    """Stands for an accepted socket's handshake in ``TLSProtocol.pending``: abort() ends it."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()  # the task closes the socket once off the event loop


def _discard_input(sock: socket.socket) -> None:
    """Read and drop what *sock* received (the raw bytes, under TLS too), so that closing it
    sends a FIN after what was sent, not a reset."""
    for _ in range(64):
        try:
            # socket.socket's own recv: under an SSLSocket, the raw bytes.
            if not socket.socket.recv(sock, 65536):
                return
        except (BlockingIOError, InterruptedError):
            return
