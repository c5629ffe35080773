"""The tls backend and its connector: comm-tcp's, with TLS on every connection."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, ClassVar

from comm_core import (
    Capability,
    ConnectError,
    FatalCommClosedError,
    get_setting,
    unparse_host_port,
)
from comm_core.stream import StreamComm
from comm_tcp import TCPBackend, TCPComm, TCPConnector, TCPListener
from comm_tls._comm import TLSComm
from comm_tls._errors import describe_failure
from comm_tls._listener import TLSListener
from comm_tls._resume import remember, resuming
from comm_tls._security import Security, context_for

__all__ = ["TLSBackend", "TLSConnector"]


class TLSConnector(TCPConnector):
    """Dials ``host:port`` locations over TLS.

    Connection arguments: ``security`` (a :class:`comm_tls.Security`) or
    ``ssl_context`` (a client-side :class:`ssl.SSLContext`), and
    ``server_hostname``, the name to check the server's certificate against
    (default: the host dialled, a name or an IP address).
    """

    scheme: ClassVar[str] = "tls"
    comm_class: ClassVar[type[TCPComm]] = TLSComm

    def on_established(self, comm: StreamComm) -> None:
        """Keep the session ticket the server sent, to resume the next connection to it."""
        transport = comm.transport
        if transport is not None:
            remember(transport.get_extra_info("ssl_object"))

    async def open(self, comm: TCPComm, host: str, port: int, args: dict[str, Any]) -> None:
        """Open a TCP connection and run the TLS handshake as the client.

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
        try:
            with resuming(sessions, (hostname, host, port)):
                await loop.create_connection(
                    lambda: comm.protocol,
                    host,
                    port,
                    ssl=context,
                    server_hostname=hostname,
                    ssl_handshake_timeout=float(get_setting("handshake_timeout")),
                )
        except ssl.SSLError as exc:
            message = describe_failure(exc, peer="server", address=address, hostname=hostname)
            raise FatalCommClosedError(message) from exc
        except (ConnectionResetError, ConnectionAbortedError) as exc:
            # Reset or aborted once connected: during the TLS handshake.
            message = describe_failure(exc, peer="server", address=address, hostname=hostname)
            raise ConnectError(message) from exc


class TLSBackend(TCPBackend):
    """The ``tls://`` backend: TCP's addresses and machinery, with TLS on every connection."""

    scheme: ClassVar[str] = "tls"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
    connector_class: ClassVar[type[TCPConnector]] = TLSConnector
    listener_class: ClassVar[type[TCPListener]] = TLSListener
