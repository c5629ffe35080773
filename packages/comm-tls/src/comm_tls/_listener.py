"""The tls listener: TCP connections accepted with comm-core's socket helpers, each
upgraded to TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comm_core import (
    ConnectError,
    LogLimiter,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)
from comm_core.abc import CommHandler, Listener
from comm_core.protocol import MAGIC
from comm_core.session import options_of
from comm_core.sockets import AcceptLoop, bind_listening, contact_host
from comm_core.stream import StreamAcceptor, format_sockaddr
from comm_tcp import SocketOptions
from comm_tls._comm import TLSProtocol
from comm_tls._errors import describe_failure, words_of
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
    from comm_tls._connector import TLSConnector

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


class TLSListener(Listener):
    """Accepts tls comms on ``host:port``: TCP connections, TLS on each.

    Built from comm-core's blocks, as a third party's transport would be:
    :func:`~comm_core.sockets.bind_listening` (an empty host listens on every
    interface of both families on one port), an
    :class:`~comm_core.sockets.AcceptLoop` per socket over comm-tls's own TLS
    transport (asyncio's ``create_server`` under asyncio's TLS layer),
    :class:`~comm_core.stream.StreamAcceptor` for the comms, and
    :func:`~comm_core.sockets.contact_host` for the contact address.

    Each accepted connection runs its TLS handshake in a task of its own. One
    that fails is logged (a warning naming the client, the listener and what to
    fix) and dropped, and the listener keeps serving. The TLS handshake, the
    comm preamble and the comm handshake together must finish within the
    handshake timeout, counted from the accept; connections still in any of
    them count towards ``max_pending_handshakes``.

    Raises:
        AddressError: *loc* is malformed.
        TLSConfigurationError: on creation, when the connection arguments hold
            no usable ``security`` or ``ssl_context``.
        ValueError: a socket option among the connection arguments is invalid.
    """

    #: Seconds a listener waits before accepting again after accepting failed.
    accept_retry_delay: float = 1.0

    def __init__(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool = True,
        *,
        connector: TLSConnector,
        backlog: int = 1024,
        **connection_args: Any,
    ) -> None:
        self.host, self.port = parse_host_port(loc, default_port=0, scheme=connector.scheme)
        self.handle_comm = handle_comm
        self.deserialize = deserialize
        self.connector = connector
        self.scheme = connector.scheme
        self.backlog = backlog
        self.connection_args = connection_args
        # What each accepted comm is made from: the connection arguments, and the
        # options listen() resolved (its session's).
        self._comm_args = dict(connection_args)
        self._comm_options = options_of(handle_comm)
        SocketOptions.from_args(connection_args)  # refuse bad ones now, not per connection
        #: Drops peers that send no preamble in time; runs handle_comm on the others.
        self.acceptor = StreamAcceptor(self, handle_comm)
        self.ssl_context = context_for(
            connection_args, server_side=True, address=self.listen_address
        )
        self._handshakes: set[asyncio.Task[None]] = set()
        # comm-tls's own transport: our accept loops; asyncio's TLS layer: its servers.
        self._accept_loops: list[AcceptLoop] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._bound: list[Any] = []
        self._stopped = False
        #: Every line a client can cause goes through this: a flood of failed handshakes
        #: costs a few lines and a count.
        self._failures = LogLimiter(logger, "TLS handshakes that failed or were refused")

    async def start(self) -> None:
        """Bind and start accepting (idempotent).

        Raises:
            ConnectError: the address cannot be bound, naming it and the OS's reason.
        """
        if self._servers or self._accept_loops or self._stopped:
            return
        loop = asyncio.get_running_loop()
        try:
            socks = bind_listening(self.host, self.port, backlog=self.backlog)
        except OSError as exc:
            raise ConnectError(
                f"cannot listen on {self.listen_address}: {exc.strerror or exc}"
            ) from exc
        try:
            for sock in socks:
                if self.connector.socket_transport(loop):
                    self._accept_loops.append(
                        AcceptLoop(
                            loop,
                            sock,
                            self._accepted,
                            backlog=self.backlog,
                            retry_delay=self.accept_retry_delay,
                            where=self._where,
                            logger=logger,
                        )
                    )
                else:
                    server = await loop.create_server(
                        self._raw_protocol, sock=sock, backlog=self.backlog
                    )
                    self._servers.append(server)
        except BaseException:
            self._close_sockets()
            for sock in socks:
                sock.close()
            raise
        self._bound = [sock.getsockname() for sock in socks]
        self.port = self._bound[0][1]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._close_sockets()
        self.acceptor.close()
        self._failures.flush()  # how many lines were left out, now rather than later
        super().stop()

    def _close_sockets(self) -> None:
        accept_loops, self._accept_loops = self._accept_loops, []
        for accept_loop in accept_loops:
            accept_loop.close()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    def _make_protocol(self) -> TLSProtocol:
        """The protocol of a new comm for an accepted connection, with its deadline."""
        comm = self.connector.make_comm(
            self.deserialize,
            self._comm_args,
            on_established=self.acceptor.established,
            options=self._comm_options,
        )
        protocol = self.acceptor.accept(comm).protocol
        assert isinstance(protocol, TLSProtocol)
        return protocol

    def _accepted(self, conn: socket.socket, peer: Any) -> None:
        """A connection accepted by an :class:`~comm_core.sockets.AcceptLoop`: start its
        TLS handshake (comm-tls's own transport)."""
        conn.setblocking(False)
        # Before the TLS handshake, whose records are small: none waits for an ack.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._accept_socket(conn)

    def _accept_socket(self, conn: socket.socket) -> None:
        protocol = self._make_protocol()  # a comm's, with its preamble deadline
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

    def _raw_protocol(self) -> asyncio.BaseProtocol:
        """The protocol of a raw connection that asyncio's server accepted, until
        ``start_tls`` takes it over (asyncio's TLS layer)."""
        return _Accepted(self, self._make_protocol())

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
                self._failures.log(
                    logging.INFO,
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
            self._failures.log(
                logging.WARNING,
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
            self._failures.log(
                level,
                "%s: dropped %s: it did not complete the TLS handshake within %gs",
                where,
                client,
                timeout,
            )
            return
        if isinstance(reason, ssl.SSLError) or watch.head:
            message = describe_failure(
                reason,
                peer="client",
                address=f"client {client}",
                words=words_of(self.connection_args.get("security")),
            )
            self._failures.log(logging.WARNING, "%s: %s", where, message)
        else:
            self._failures.log(
                logging.INFO, "%s: %s closed the connection before the TLS handshake", where, client
            )

    def _log_resumed(self, client: str) -> None:
        self._failures.log(
            logging.WARNING,
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

    @property
    def listen_address(self) -> str:
        return unparse_address(self.scheme, unparse_host_port(self.host, self.port))

    @property
    def contact_address(self) -> str:
        if not self._bound:
            raise RuntimeError(f"{type(self).__name__} on {self.listen_address} is not started")
        host = contact_host(self.host, self._bound)
        return unparse_address(self.scheme, unparse_host_port(host, self.port))

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {"sockets": list(self._bound), "backlog": self.backlog}


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
