"""The ws and wss connectors: a TCP connection (comm-core's socket helpers), TLS over it for
wss (comm-tls's options and errors), the HTTP upgrade, a comm."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
from collections.abc import Coroutine
from typing import Any, ClassVar

from comm_core import (
    CommError,
    ConnectError,
    FatalCommClosedError,
    Options,
)
from comm_core.abc import Comm, Connector
from comm_core.protocol import MAX_FIRST_MESSAGE
from comm_core.sockets import connect_error, connect_socket, dial_target
from comm_core.transport import SocketTransport
from comm_ws._address import join_location, split_location
from comm_ws._comm import WSComm, message_limit
from comm_ws._protocol import WSProtocol
from comm_ws._upgrade import ClientUpgrade

__all__ = [
    "WSConnector",
    "WSSConnector",
    "WSTransport",
    "plain_socket_transport",
    "protocol_kwargs",
    "tls_socket_transport",
]

logger = logging.getLogger("comm_ws")

#: Connection arguments that configure a connection's WebSocket protocol.
_PROTOCOL_ARGS = ("read_high_water", "write_high_water", "ping_interval", "ping_timeout")


def protocol_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The connection arguments that configure a :class:`WSProtocol` (the rest are ignored).

    Raises:
        ValueError: one of them has a value that cannot be used.
    """
    kwargs = {name: args[name] for name in _PROTOCOL_ARGS if name in args}
    for name in ("read_high_water", "write_high_water"):
        value = kwargs.get(name)
        if value is None:
            kwargs.pop(name, None)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name in ("ping_interval", "ping_timeout"):
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")
    return kwargs


class WSTransport(SocketTransport):
    """comm-core's :class:`~comm_core.transport.SocketTransport`, logging as ``comm_ws``."""

    _logger = logger


def plain_socket_transport(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ws comms on *loop* run over comm-core's socket transport (asyncio's selector
    loops, as comm-tcp's do) rather than the loop's own.

    It makes a connection's transport at once, in the loop iteration that
    dialled or accepted it, where asyncio's takes callbacks on later
    iterations: a connection is set up in about half the iterations.
    """
    return isinstance(loop, asyncio.SelectorEventLoop) and hasattr(socket.socket, "sendmsg")


def tls_socket_transport(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether wss comms on *loop* run over comm-tls's own TLS transport (as tls comms do,
    and unless ``COMM_TLS_TRANSPORT=asyncio``), rather than over asyncio's TLS layer."""
    from comm_tls import available

    return available(loop)


async def _within(aw: Coroutine[Any, Any, None], timeout: float) -> None:
    """Await *aw*; :class:`TimeoutError` after *timeout* seconds (no task of its own where
    asyncio has ``timeout()``)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout):
            await aw
    else:  # pragma: no cover - Python 3.10
        await asyncio.wait_for(aw, timeout)


class WSConnector(Connector):
    """Dials ``host:port[/path]`` locations over WebSocket.

    Connection arguments: ``max_message_size`` (default: that of the
    options), ``read_high_water`` and ``write_high_water`` (bytes of flow
    control), ``ping_interval`` and ``ping_timeout`` (keepalive, in seconds;
    ``None`` turns it off); for ``wss://`` also ``security`` (a
    :class:`comm_tls.Security`) or ``ssl_context`` (a client-side
    :class:`ssl.SSLContext`) and ``server_hostname``.
    """

    scheme: ClassVar[str] = "ws"
    #: The class of the comms this connector (and its backend's listeners) make.
    comm_class: ClassVar[type[WSComm]] = WSComm

    def client_context(self, args: dict[str, Any], address: str) -> ssl.SSLContext | None:
        """The TLS context to dial with: none for ``ws://``."""
        return None

    def server_context(self, args: dict[str, Any], address: str) -> ssl.SSLContext | None:
        """The TLS context a listener accepts with: none for ``ws://``."""
        return None

    def make_protocol(self, upgrade: Any, options: Options, args: dict[str, Any]) -> WSProtocol:
        """A new protocol for one connection, configured by *options* and the connection
        arguments *args*."""
        size = args.get("max_message_size") or options.max_message_size
        return WSProtocol(
            scheme=self.scheme,
            upgrade=upgrade,
            max_size=message_limit(size),
            first_limit=MAX_FIRST_MESSAGE,
            **protocol_kwargs(args),
        )

    def make_comm(
        self,
        protocol: WSProtocol,
        path: str,
        deserialize: bool,
        options: Options,
        args: dict[str, Any],
    ) -> WSComm:
        """The comm over *protocol*, once its upgrade is done."""
        return self.comm_class(
            protocol,
            path=path,
            deserialize=deserialize,
            max_message_size=args.get("max_message_size"),
            options=options,
        )

    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        host_port, path = split_location(address, self.scheme)
        host, port = dial_target(self.scheme, host_port)
        where = f"{self.scheme}://{join_location(host, port, path)}"
        if options is None:
            options = Options()
        context = self.client_context(connection_args, where)
        upgrade = ClientUpgrade(self.scheme, host, port, path)
        protocol = self.make_protocol(upgrade, options, connection_args)
        hostname = connection_args.get("server_hostname") or host
        try:
            await _within(
                self._open(protocol, host, port, context, hostname), options.handshake_timeout
            )
        except CommError as exc:
            protocol.abort()
            cause = exc.__cause__
            if context is not None and isinstance(cause, ssl.SSLError):
                raise self._tls_error(cause, where, hostname) from cause
            raise
        except ssl.SSLError as exc:
            protocol.abort()
            raise self._tls_error(exc, where, hostname) from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            protocol.abort()
            raise ConnectError(
                f"connecting to {where} took longer than handshake_timeout="
                f"{options.handshake_timeout:g}s (TCP{', TLS' if context else ''} and the "
                "WebSocket upgrade)"
            ) from exc
        except OSError as exc:
            protocol.abort()
            raise connect_error(where, exc) from exc
        except BaseException:
            protocol.abort()
            raise
        return self.make_comm(protocol, path, deserialize, options, connection_args)

    async def _open(
        self,
        protocol: WSProtocol,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        hostname: str,
    ) -> None:
        loop = asyncio.get_running_loop()
        sock, _ = await connect_socket(host, port)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is None:
                # The request goes at once, on the socket: the listener reads it while
                # asyncio makes the transport (a fresh socket's buffer takes it whole).
                request = protocol.upgrade_request()
                try:
                    sent = sock.send(request)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                protocol.request_sent(sent)
                if plain_socket_transport(loop):
                    WSTransport(loop, sock, protocol).start()
                else:
                    await loop.create_connection(lambda: protocol, sock=sock)
            elif tls_socket_transport(loop):
                # comm-tls's own TLS transport: OpenSSL reads and writes the socket.
                from comm_tls import TLSTransport, handshake

                tls = context.wrap_socket(
                    sock, server_hostname=hostname, do_handshake_on_connect=False
                )
                sock = tls
                await handshake(tls, loop.time() + 3600.0)  # bounded by connect()'s timeout
                TLSTransport(loop, tls, protocol).start()
            else:
                await loop.create_connection(
                    lambda: protocol, sock=sock, ssl=context, server_hostname=hostname
                )
        except BaseException:
            sock.close()
            raise
        opened = protocol.opened
        assert opened is not None
        await opened

    def _tls_error(self, exc: BaseException, where: str, hostname: str) -> CommError:
        from comm_tls import describe_failure

        message = describe_failure(exc, peer="server", address=where, hostname=hostname)
        if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return ConnectError(message)
        return FatalCommClosedError(message)


class WSSConnector(WSConnector):
    """Dials ``host:port[/path]`` locations over WebSocket over TLS.

    TLS is configured as for ``tls://``: ``security=`` (a
    :class:`comm_tls.Security`) or ``ssl_context=``; failures say what to fix,
    in comm-tls's words.
    """

    scheme: ClassVar[str] = "wss"

    def client_context(self, args: dict[str, Any], address: str) -> ssl.SSLContext | None:
        """The client-side context of ``security=`` or ``ssl_context=``.

        Raises:
            TLSConfigurationError: neither (or both) given, or one of the wrong kind.
        """
        from comm_tls import context_for

        return context_for(args, server_side=False, address=address)

    def server_context(self, args: dict[str, Any], address: str) -> ssl.SSLContext | None:
        """The server-side context of ``security=`` or ``ssl_context=``.

        Raises:
            TLSConfigurationError: neither (or both) given, or one of the wrong kind.
        """
        from comm_tls import context_for

        return context_for(args, server_side=True, address=address)
