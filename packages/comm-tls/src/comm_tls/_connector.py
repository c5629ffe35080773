"""The tls connector: a TCP connection (comm-core's socket helpers), TLS over it, a comm."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any, ClassVar

from comm_core import CommError, ConnectError, FatalCommClosedError, Options, unparse_host_port
from comm_core.abc import Comm, Connector
from comm_core.sockets import connect_error, connect_socket, dial_target
from comm_core.stream import StreamComm
from comm_tcp import SocketOptions
from comm_tls._comm import TLSComm, TLSProtocol
from comm_tls._errors import describe_failure, words_of
from comm_tls._resume import offer, remember, resuming
from comm_tls._security import Security, context_for
from comm_tls._transport import TLSTransport, available, handshake

__all__ = ["TLSConnector", "comm_kwargs"]

_COMM_ARGS = ("max_message_size", "write_high_water", "read_high_water")


def comm_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The connection arguments that configure a comm (the rest are ignored)."""
    return {name: args[name] for name in _COMM_ARGS if args.get(name) is not None}


class TLSConnector(Connector):
    """Dials ``host:port`` locations over TLS.

    A TCP connection (comm-core's :func:`~comm_core.sockets.connect_socket`),
    with TLS over it: TLS wraps the stream, it does not change how the stream
    is made. Connection arguments: ``security`` (a :class:`comm_tls.Security`)
    or ``ssl_context`` (a client-side :class:`ssl.SSLContext`),
    ``server_hostname``, the name to check the server's certificate against
    (default: the host dialled, a name or an IP address), the socket options
    of comm-tcp (``nodelay``, ``keepalive``, ``dead_peer_timeout``) and the
    comm's (``max_message_size``, ``write_high_water``, ``read_high_water``).
    """

    scheme: ClassVar[str] = "tls"
    #: The class of the comms this connector (and its backend's listeners) make.
    comm_class: ClassVar[type[TLSComm]] = TLSComm
    #: Whether comms (of this connector and its backend's listeners) run over comm-tls's
    #: own TLS transport (an :class:`ssl.SSLSocket` on the event loop), where the loop
    #: allows, rather than over asyncio's TLS layer. The environment variable
    #: ``COMM_TLS_TRANSPORT=asyncio`` turns it off too.
    use_ssl_socket: ClassVar[bool] = True

    def make_comm(
        self,
        deserialize: bool,
        args: dict[str, Any],
        on_established: Callable[[StreamComm], None] | None = None,
        options: Options | None = None,
    ) -> TLSComm:
        """A new, unconnected comm configured by the connection arguments *args* and
        the settings *options* (default: those in force)."""
        comm = self.comm_class(
            scheme=self.scheme,
            deserialize=deserialize,
            socket_options=SocketOptions.from_args(args),
            on_established=on_established,
            options=options,
            **comm_kwargs(args),
        )
        comm.protocol.advice_words = words_of(args.get("security"))
        return comm

    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        host, port = dial_target(self.scheme, address)
        comm = self.make_comm(
            deserialize,
            connection_args,
            on_established=self.on_established,
            options=Options() if options is None else options,
        )
        try:
            await self.open(comm, host, port, connection_args)
        except CommError:  # translated by open(): FatalCommClosedError, ConnectError
            comm.abort()
            raise
        except OSError as exc:
            comm.abort()
            raise connect_error(f"{self.scheme}://{address}", exc) from exc
        except BaseException:
            comm.abort()
            raise
        return comm

    def socket_transport(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether comms on *loop* use comm-tls's own transport (see :attr:`use_ssl_socket`)."""
        return self.use_ssl_socket and available(loop)

    def on_established(self, comm: StreamComm) -> None:
        """Keep the session ticket the server sent, to resume the next connection to it."""
        transport = comm.transport
        if transport is not None:
            slot = getattr(comm.protocol, "resume_slot", None)
            remember(transport.get_extra_info("ssl_object"), slot)

    async def open(self, comm: TLSComm, host: str, port: int, args: dict[str, Any]) -> None:
        """Open a TCP connection and run the TLS handshake as the client, within the
        ``handshake_timeout`` of the comm's options (``connect(handshake_timeout=)``).

        Raises:
            TLSConfigurationError: no usable ``security`` or ``ssl_context``.
            FatalCommClosedError: the handshake failed for a reason no retry
                fixes (a certificate rejected by either side, no TLS at the
                other end, ...); the message says what to fix.
            ConnectError: the server closed the connection during the handshake.
        """
        address = f"{self.scheme}://{unparse_host_port(host, port)}"
        context = context_for(args, server_side=False, address=address)
        hostname = args.get("server_hostname") or host
        security = args.get("security")
        sessions = security.session_cache if isinstance(security, Security) else None
        words = words_of(security)
        loop = asyncio.get_running_loop()
        if self.socket_transport(loop):
            await self._open_socket(comm, host, port, context, hostname, sessions, address, words)
            return
        try:
            with resuming(sessions, (hostname, host, port)):
                await loop.create_connection(
                    lambda: comm.protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=hostname,
                    ssl_handshake_timeout=comm.options.handshake_timeout,
                )
        except ssl.SSLError as exc:
            message = describe_failure(
                exc, peer="server", address=address, hostname=hostname, words=words
            )
            raise FatalCommClosedError(message) from exc
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            # Reset or aborted once connected: during the TLS handshake.
            message = describe_failure(
                exc, peer="server", address=address, hostname=hostname, words=words
            )
            raise ConnectError(message) from exc

    async def _open_socket(
        self,
        comm: TLSComm,
        host: str,
        port: int,
        context: ssl.SSLContext,
        hostname: str,
        sessions: Any,
        address: str,
        words: str = "api",
    ) -> None:
        """:meth:`open` over comm-tls's own transport."""
        loop = asyncio.get_running_loop()
        timeout = comm.options.handshake_timeout
        raw, _ = await connect_socket(host, port)
        try:
            # Before the TLS handshake, whose records are small: none waits for an ack.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = context.wrap_socket(raw, server_hostname=hostname, do_handshake_on_connect=False)
        except BaseException:
            raw.close()
            raise
        try:
            slot = offer(sock, sessions, (hostname, host, port))
            await handshake(sock, loop.time() + timeout)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, ssl.SSLError) and not isinstance(
                exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)
            ):
                message = describe_failure(
                    exc, peer="server", address=address, hostname=hostname, words=words
                )
                raise FatalCommClosedError(message) from exc
            if isinstance(exc, TimeoutError):
                error = ConnectionAbortedError(
                    f"the TLS handshake took longer than {timeout:g}s: aborting the connection"
                )
                message = describe_failure(error, peer="server", address=address, words=words)
                raise ConnectError(message) from exc
            if isinstance(exc, (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                # The server closed the connection during the handshake: worth a retry.
                message = describe_failure(
                    exc, peer="server", address=address, hostname=hostname, words=words
                )
                raise ConnectError(message) from exc
            raise
        assert isinstance(comm.protocol, TLSProtocol)
        comm.protocol.resume_slot = slot
        TLSTransport(loop, sock, comm.protocol).start()
