"""The ws and wss listener: TCP connections accepted with comm-core's socket helpers, TLS on
each for wss, then the HTTP upgrade on the listener's path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from comm_core import ConnectError, LogLimiter, Options, unparse_host_port
from comm_core.abc import CommHandler, Listener
from comm_core.protocol import encode_message
from comm_core.session import ServerSession, options_of
from comm_core.sockets import AcceptLoop, bind_listening, contact_host
from comm_ws._address import join_location, parse_location
from comm_ws._comm import WSComm
from comm_ws._connector import (
    WSTransport,
    plain_socket_transport,
    protocol_kwargs,
    tls_socket_transport,
)
from comm_ws._protocol import CLOSED, UPGRADING, WSProtocol
from comm_ws._upgrade import MAX_HEAD, ServerUpgrade, refusal

if TYPE_CHECKING:
    from comm_ws._connector import WSConnector

__all__ = ["WSListener"]

logger = logging.getLogger("comm_ws")

_TLS_HANDSHAKE = 0x16


class WSListener(Listener):
    """Accepts ws (or wss) comms on ``host:port[/path]``.

    Built from comm-core's blocks, as a third party's transport would be:
    :func:`~comm_core.sockets.bind_listening` (an empty host listens on every
    interface of both families on one port), an
    :class:`~comm_core.sockets.AcceptLoop` per socket, comm-core's
    :class:`~comm_core.transport.SocketTransport` on selector loops (else the
    loop's own; comm-tls's TLS transport for wss), and
    :func:`~comm_core.sockets.contact_host` for the contact address.

    A connection must finish, within the handshake timeout counted from its
    accept, the TLS handshake (wss), the HTTP upgrade (a request for the
    listener's path offering comm's subprotocol; others get an HTTP error
    and are logged) and the comm handshake; until then it counts towards
    ``max_pending_handshakes``. A listener sends its comm handshake with the
    upgrade's response.

    Raises:
        AddressError: *loc* is malformed.
        TLSConfigurationError: (wss) no usable ``security`` or ``ssl_context``.
        ValueError: a connection argument has a value that cannot be used.
    """

    #: Seconds a listener waits before accepting again after accepting failed.
    accept_retry_delay: float = 1.0

    def __init__(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool = True,
        *,
        connector: WSConnector,
        backlog: int = 1024,
        **connection_args: Any,
    ) -> None:
        self.scheme = connector.scheme
        self.host, self.port, self.path = parse_location(loc, self.scheme)
        self.handle_comm = handle_comm
        self.deserialize = deserialize
        self.connector = connector
        self.backlog = backlog
        self.connection_args = connection_args
        protocol_kwargs(connection_args)  # refuse bad ones now, not per connection
        self._options: Options = options_of(handle_comm)
        self._session = handle_comm if isinstance(handle_comm, ServerSession) else None
        self.ssl_context = connector.server_context(connection_args, self.listen_address)
        self._upgrade = ServerUpgrade(self.path)
        self._accept_loops: list[AcceptLoop] = []  # wss: ours, to look before TLS
        self._servers: list[asyncio.AbstractServer] = []  # ws: asyncio's
        self._bound: list[Any] = []
        self._stopped = False
        #: Connections not done with their handshakes yet, oldest first, with their deadline.
        self._pending: dict[WSProtocol, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._greeting: tuple[Any, list[Any], int] | None = None
        #: Every line a client can cause goes through this: a flood of bad connections
        #: costs a few lines and a count.
        self._refusals = LogLimiter(logger, "connections refused or failed")

    # -- addresses ---------------------------------------------------------------------------

    @property
    def listen_address(self) -> str:
        return f"{self.scheme}://{join_location(self.host, self.port, self.path)}"

    @property
    def contact_address(self) -> str:
        if not self._bound:
            raise RuntimeError(f"listener on {self.listen_address} is not started")
        host = contact_host(self.host, self._bound)
        return f"{self.scheme}://{join_location(host, self.port, self.path)}"

    @property
    def extra_info(self) -> dict[str, Any]:
        return {"sockets": list(self._bound), "path": self.path}

    def _where(self) -> str:
        try:
            return self.contact_address
        except RuntimeError:
            return self.listen_address

    # -- starting and stopping ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting (idempotent).

        Raises:
            ConnectError: the address cannot be bound, naming it and the OS's reason.
        """
        if self._accept_loops or self._servers or self._stopped:
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
        except BaseException:
            self._close_sockets()
            for sock in socks:
                sock.close()
            raise
        self._bound = [sock.getsockname() for sock in socks]
        self.port = self._bound[0][1]

    def stop(self) -> None:
        """Stop accepting. Connections in their handshakes go on until their deadline."""
        if self._stopped:
            return
        self._stopped = True
        self._close_sockets()
        self._refusals.flush()  # how many lines were left out, now rather than later
        super().stop()

    def _close_sockets(self) -> None:
        accept_loops, self._accept_loops = self._accept_loops, []
        for accept_loop in accept_loops:
            accept_loop.close()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    # -- accepting ---------------------------------------------------------------------------

    def _deadline(self, loop: asyncio.AbstractEventLoop) -> float:
        if self._session is not None:
            return self._session.deadline()
        return loop.time() + self.handshake_timeout

    def _make_room(self) -> bool:
        """Whether one more connection may start its handshakes; drops the oldest one still
        in its HTTP upgrade to make room if need be."""
        pending = self._pending
        for protocol in [p for p in pending if p.state is CLOSED or p.is_closed()]:
            del pending[protocol]  # lost (during its upgrade, say) or closed
        if len(pending) < self.max_pending_handshakes:
            return True
        for protocol in pending:
            if protocol.state is UPGRADING:
                del pending[protocol]
                protocol.abort()
                return True
        return False

    def _accepted(self, conn: socket.socket, peer: Any) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self._make_room():
            conn.close()
            return
        loop = asyncio.get_running_loop()
        protocol = self.connector.make_protocol(self._upgrade, self._options, self.connection_args)
        protocol.on_open = self._opened
        protocol.on_failed = self._failed
        deadline = self._deadline(loop)
        self._pending[protocol] = deadline
        if self.ssl_context is None:
            # The client sends its request as it connects: it is usually here already.
            # Answered now, the client has the answer (and the comm handshake) while
            # asyncio makes the transport.
            try:
                early = conn.recv(MAX_HEAD + 4)
            except (BlockingIOError, InterruptedError):
                early = b""
            except OSError:
                conn.close()
                self._pending.pop(protocol, None)
                return
            if early:
                protocol.preload(early, conn)
            if plain_socket_transport(loop):
                WSTransport(loop, conn, protocol).start()
                if protocol.state is UPGRADING:
                    protocol.set_deadline(deadline)
                return
        self._spawn(self._connect(conn, protocol, deadline))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, protocol: WSProtocol, deadline: float) -> None:
        """Give *conn* a transport (after TLS's handshake, for wss) and *protocol*."""
        loop = asyncio.get_running_loop()
        context = self.ssl_context
        client = _peer(conn, self.scheme)
        try:
            if context is None:
                await loop.connect_accepted_socket(lambda: protocol, conn)
            else:
                if not await self._speaks_tls(conn, deadline):
                    self._pending.pop(protocol, None)
                    return
                if tls_socket_transport(loop):
                    from comm_tls import TLSTransport, handshake

                    tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                    conn = tls
                    await handshake(tls, deadline)
                    TLSTransport(loop, tls, protocol).start()
                else:
                    await loop.connect_accepted_socket(
                        lambda: protocol,
                        conn,
                        ssl=context,
                        ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                    )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            self._pending.pop(protocol, None)
            self._log_tls_failure(client, exc)
            return
        if protocol.state is UPGRADING:
            protocol.set_deadline(deadline)

    async def _speaks_tls(self, conn: socket.socket, deadline: float) -> bool:
        """Whether the client on *conn* starts a TLS handshake; one that speaks HTTP or
        comm's stream protocol instead is told that this is a wss:// listener."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = conn.fileno()
        loop.add_reader(fd, _set, ready)
        try:
            await asyncio.wait_for(ready, max(deadline - loop.time(), 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            conn.close()
            return False
        finally:
            loop.remove_reader(fd)
        try:
            head = conn.recv(8, socket.MSG_PEEK)
        except OSError:
            conn.close()
            return False
        if head and head[0] == _TLS_HANDSHAKE:
            return True
        if head:
            with contextlib.suppress(OSError):
                conn.send(
                    refusal(
                        400,
                        "Bad Request",
                        "This is a comm wss:// listener: it speaks TLS first; dial wss://.\n",
                    )
                )
            self._refusals.log(
                logging.INFO,
                "listener %s: a client from %s does not speak TLS (it sent %r): is it dialling "
                "ws:// instead of wss://?",
                self._where(),
                _peer(conn),
                head,
            )
        conn.close()
        return False

    def _log_tls_failure(self, client: str, exc: Exception) -> None:
        import ssl

        if isinstance(exc, (ssl.SSLError, TimeoutError, ConnectionError)):
            from comm_tls import describe_failure

            message = describe_failure(exc, peer="client", address=client)
            self._refusals.log(logging.WARNING, "listener %s: %s", self._where(), message)
        else:
            self._refusals.log(
                logging.WARNING,
                "listener %s: could not set up a connection: %r",
                self._where(),
                exc,
            )

    # -- the protocol's callbacks ------------------------------------------------------------

    def _opened(self, protocol: WSProtocol) -> None:
        """The upgrade is done: make the comm, send the greeting with the response, serve."""
        comm = self.connector.make_comm(
            protocol, self.path, self.deserialize, self._options, self.connection_args
        )
        deadline = self._pending.get(protocol)
        session = self._session
        if session is None:
            self._pending.pop(protocol, None)
            self._spawn(self.handle_comm(comm))
            return
        greeting = self._greeting
        if greeting is None:
            info = session.greeting(comm)
            buffers, size = encode_message(info)
            greeting = self._greeting = (info, buffers, size)
        info, buffers, size = greeting
        comm.set_early_handshake(info)
        protocol.write_message(buffers, size)
        self._spawn(self._serve(session, comm, deadline))

    async def _serve(self, session: ServerSession, comm: WSComm, deadline: float | None) -> None:
        """Hand *comm* to *session* once the client's first message came; drop it without a
        word if the client went away before sending any (as comm-core's stream listeners
        drop a connection closed before its preamble): a dialer on this host that read the
        greeting and took the same-host path it offers."""
        protocol = comm.protocol
        if deadline is None:
            deadline = self._deadline(asyncio.get_running_loop())
        try:
            await protocol.first_message(deadline)
        except BaseException:  # cancelled
            comm.abort()
            raise
        if protocol.left_silently():
            self._pending.pop(protocol, None)
            comm.abort()
            return
        await session.serve(comm, deadline, self._handshake_over)

    def _handshake_over(self, comm: Any) -> None:
        if isinstance(comm, WSComm):
            self._pending.pop(comm.protocol, None)

    def _failed(self, protocol: WSProtocol, reason: str) -> None:
        self._pending.pop(protocol, None)
        self._refusals.log(
            logging.INFO,
            "listener %s: refused the connection from %s: %s",
            self._where(),
            protocol.peer,
            reason,
        )


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _peer(conn: socket.socket, scheme: str = "") -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "an unknown peer"
    text = unparse_host_port(str(host), int(port))
    return f"{scheme}://{text}" if scheme else text
