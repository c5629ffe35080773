"""The tcp listener: one port on one host, or on every interface of both families."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from comm_core import (
    ConnectError,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)
from comm_core.abc import CommHandler, Listener
from comm_core.session import options_of
from comm_core.sockets import AcceptLoop, bind_listening, contact_host
from comm_core.stream import StreamAcceptor
from comm_tcp import _direct
from comm_tcp._options import SocketOptions

if TYPE_CHECKING:
    from comm_tcp._connector import TCPConnector

__all__ = ["TCPListener"]


#: Whether accepted sockets inherit the listening socket's options (Linux copies the
#: listening socket's state into each connection it accepts, these options included).
_INHERITS_OPTIONS = sys.platform.startswith("linux")

logger = logging.getLogger("comm_tcp")


class TCPListener(Listener):
    """Accepts tcp comms on ``host:port``.

    An empty host (``tcp://`` or ``tcp://:8786``) listens on every interface
    of IPv4 and IPv6 on one port; port 0 picks a free port. The contact
    address of a wildcard listener names this machine's primary address of
    that family (IPv4 for ``tcp://`` and ``tcp://0.0.0.0``, IPv6 for
    ``tcp://[::]``). Binding, accepting and the contact address are comm-core's
    :mod:`comm_core.sockets`.

    If accepting fails for want of resources (no descriptor left), the
    listener logs it and tries again :attr:`accept_retry_delay` seconds later;
    the connections that arrive meanwhile wait in the kernel's backlog.
    """

    #: Seconds a listener waits before accepting again after accepting failed.
    accept_retry_delay: float = 1.0
    #: Whether the comm greeting (preamble and handshake message) may go out on an
    #: accepted socket as soon as it is accepted; not for a subclass that first
    #: runs another protocol on it (comm-tls: TLS).
    greets_on_accept: ClassVar[bool] = True

    def __init__(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool = True,
        *,
        connector: TCPConnector,
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
        # options listen() resolved (its session's), not read again by every comm.
        self._comm_args = dict(connection_args)
        self._comm_options = options_of(handle_comm)
        # Check the socket options now: the listener applies them to each accepted
        # connection, where an error would only drop that connection.
        self._socket_options = SocketOptions.from_args(connection_args)
        # Set once the listening sockets carry the options, which the sockets they
        # accept inherit (Linux): accepted comms then need not set them again.
        self._options_inherited = False
        # asyncio's selector loops: our own accept loops; other loops: asyncio's servers.
        self._accept_loops: list[AcceptLoop] = []
        self._servers: list[asyncio.AbstractServer] = []
        #: Drops peers that send no preamble in time; runs handle_comm on the others.
        self.acceptor = StreamAcceptor(self, handle_comm)
        self._bound: list[Any] = []
        self._stopped = False

    def _open_sockets(self) -> list[socket.socket]:
        """Bound, listening sockets for this listener's address.

        Raises:
            ConnectError: the address cannot be bound, naming it and the OS's reason.
        """
        try:
            return bind_listening(self.host, self.port, backlog=self.backlog)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectError(
                f"cannot listen on {self.listen_address_for(self.port)}: {reason}"
            ) from exc

    async def start(self) -> None:
        if self._servers or self._accept_loops or self._stopped:
            return
        loop = asyncio.get_running_loop()
        socks = self._open_sockets()
        make_transport = _direct.socket_transport_factory(loop)
        try:
            # Not under asyncio's transport, which turns TCP_NODELAY on by itself.
            if isinstance(make_transport, _direct._OwnTransports) and _INHERITS_OPTIONS:
                for sock in socks:
                    try:
                        self._socket_options.apply(sock)
                    except OSError as exc:
                        wanted = self._socket_options.as_dict()
                        raise ConnectError(
                            f"cannot listen on {self.listen_address}: setting the socket "
                            f"options {wanted} failed: {exc.strerror or exc}"
                        ) from exc
                self._options_inherited = True
            for sock in socks:
                if make_transport is None:
                    server = await loop.create_server(
                        self._make_protocol, sock=sock, backlog=self.backlog
                    )
                    self._servers.append(server)
                    continue
                on_accept = _direct.accept_handler(
                    self._make_protocol,
                    make_transport,
                    greeting=self.acceptor.greeting if self.greets_on_accept else None,
                    admit=self.acceptor.admit,
                )
                accept_loop = AcceptLoop(
                    loop,
                    sock,
                    on_accept,
                    backlog=self.backlog,
                    retry_delay=self.accept_retry_delay,
                    where=self._where,
                    logger=logger,
                )
                self._accept_loops.append(accept_loop)
        except BaseException:
            self._close_sockets()
            for sock in socks:
                sock.close()
            raise
        self._bound = [sock.getsockname() for sock in socks]
        self.port = self._bound[0][1]

    def _make_protocol(self) -> asyncio.BaseProtocol:
        comm = self.connector.make_comm(
            self.deserialize,
            self._comm_args,
            on_established=self.acceptor.established,
            options=self._comm_options,
        )
        if self._options_inherited:
            comm.protocol.options_inherited = True
        return self.acceptor.accept(comm).protocol

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._close_sockets()
        self.acceptor.close()
        super().stop()

    def _close_sockets(self) -> None:
        accept_loops, self._accept_loops = self._accept_loops, []
        for accept_loop in accept_loops:
            accept_loop.close()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()

    def _where(self) -> str:
        """The contact address for messages; the listen address if there is none."""
        try:
            return self.contact_address
        except RuntimeError:
            return self.listen_address

    def listen_address_for(self, port: int) -> str:
        return unparse_address(self.scheme, unparse_host_port(self.host, port))

    @property
    def listen_address(self) -> str:
        return self.listen_address_for(self.port)

    @property
    def contact_address(self) -> str:
        if not self._bound:
            raise RuntimeError(f"{type(self).__name__} on {self.listen_address} is not started")
        host = contact_host(self.host, self._bound)
        return unparse_address(self.scheme, unparse_host_port(host, self.port))

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {"sockets": list(self._bound), "backlog": self.backlog}
