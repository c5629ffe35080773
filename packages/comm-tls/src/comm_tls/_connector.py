"""The tls connector: comm-tcp's, with TLS on every connection."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, ClassVar

from comm_core import ConnectError, FatalCommClosedError, unparse_host_port
from comm_core.stream import StreamComm
from comm_tcp import TCPComm, TCPConnector
from comm_tls._comm import TLSComm, TLSProtocol
from comm_tls._errors import describe_failure
from comm_tls._resume import offer, remember, resuming
from comm_tls._security import Security, context_for
from comm_tls._transport import TLSTransport, available, handshake

__all__ = ["TLSConnector"]


class TLSConnector(TCPConnector):
    """Dials ``host:port`` locations over TLS.

    Connection arguments: ``security`` (a :class:`comm_tls.Security`) or
    ``ssl_context`` (a client-side :class:`ssl.SSLContext`), and
    ``server_hostname``, the name to check the server's certificate against
    (default: the host dialled, a name or an IP address).
    """

    scheme: ClassVar[str] = "tls"
    comm_class: ClassVar[type[TCPComm]] = TLSComm
    #: Whether comms (of this connector and its backend's listeners) run over comm-tls's
    #: own TLS transport (an :class:`ssl.SSLSocket` on the event loop), where the loop
    #: allows, rather than over asyncio's TLS layer. The environment variable
    #: ``COMM_TLS_TRANSPORT=asyncio`` turns it off too.
    use_ssl_socket: ClassVar[bool] = True

    def socket_transport(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether comms on *loop* use comm-tls's own transport (see :attr:`use_ssl_socket`)."""
        return self.use_ssl_socket and available(loop)

    def on_established(self, comm: StreamComm) -> None:
        """Keep the session ticket the server sent, to resume the next connection to it."""
        transport = comm.transport
        if transport is not None:
            slot = getattr(comm.protocol, "resume_slot", None)
            remember(transport.get_extra_info("ssl_object"), slot)

    async def open(self, comm: TCPComm, host: str, port: int, args: dict[str, Any]) -> None:
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
        loop = asyncio.get_running_loop()
        if self.socket_transport(loop):
            await self._open_socket(comm, host, port, context, hostname, sessions, address)
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
            message = describe_failure(exc, peer="server", address=address, hostname=hostname)
            raise FatalCommClosedError(message) from exc
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            # Reset or aborted once connected: during the TLS handshake.
            message = describe_failure(exc, peer="server", address=address, hostname=hostname)
            raise ConnectError(message) from exc

    async def _open_socket(
        self,
        comm: TCPComm,
        host: str,
        port: int,
        context: ssl.SSLContext,
        hostname: str,
        sessions: Any,
        address: str,
    ) -> None:
        """:meth:`open` over comm-tls's own transport."""
        loop = asyncio.get_running_loop()
        timeout = comm.options.handshake_timeout
        raw = await _dial(loop, host, port)
        try:
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
                message = describe_failure(exc, peer="server", address=address, hostname=hostname)
                raise FatalCommClosedError(message) from exc
            if isinstance(exc, TimeoutError):
                error = ConnectionAbortedError(
                    f"the TLS handshake took longer than {timeout:g}s: aborting the connection"
                )
                message = describe_failure(error, peer="server", address=address)
                raise ConnectError(message) from exc
            if isinstance(exc, (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                # The server closed the connection during the handshake: worth a retry.
                message = describe_failure(exc, peer="server", address=address, hostname=hostname)
                raise ConnectError(message) from exc
            raise
        assert isinstance(comm.protocol, TLSProtocol)
        comm.protocol.resume_slot = slot
        TLSTransport(loop, sock, comm.protocol).start()


async def _dial(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to *host*:*port* (each address in turn).

    Raises:
        OSError: no address could be reached (the error of the last, or of all).
    """
    infos: list[tuple[Any, ...]] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        break
    if not infos:  # a name: resolve it (in a thread, as asyncio does)
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    if not errors:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    if len(errors) == 1 or len({str(exc) for exc in errors}) == 1:
        raise errors[-1]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")
