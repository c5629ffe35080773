"""The tcp listener: one port on one host, or on every interface of both families."""

from __future__ import annotations

import asyncio
import errno
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
from comm_core.stream import StreamAcceptor
from comm_tcp import _direct
from comm_tcp._options import SocketOptions

if TYPE_CHECKING:
    from comm_tcp._connector import TCPConnector

__all__ = ["TCPListener"]


_WILDCARDS = {"", "0.0.0.0", "::"}
#: Whether accepted sockets inherit the listening socket's options (Linux copies the
#: listening socket's state into each connection it accepts, these options included).
_INHERITS_OPTIONS = sys.platform.startswith("linux")


def _bind(family: int, host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _primary_ip() -> str:
    """The address other machines most likely reach this one at; loopback if unknown."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: a route lookup, nothing is sent
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


class TCPListener(Listener):
    """Accepts tcp comms on ``host:port``.

    An empty host (``tcp://`` or ``tcp://:8786``) listens on every interface
    of IPv4 and IPv6 on one port; port 0 picks a free port. The contact
    address of a wildcard listener names this machine's primary address.

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
        self._accept_loops: list[_direct.AcceptLoop] = []
        self._servers: list[asyncio.AbstractServer] = []
        #: Drops peers that send no preamble in time; runs handle_comm on the others.
        self.acceptor = StreamAcceptor(self, handle_comm)
        self._bound: list[Any] = []
        self._stopped = False

    def _sockets(self) -> list[socket.socket]:
        host, port = self.host, self.port
        if host not in ("",):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            if family == socket.AF_INET and not host.replace(".", "").isdigit():
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
                family, host = info[0], str(info[4][0])
            return [_bind(family, host, port, self.backlog)]
        # Every interface, both families, one port.
        for _ in range(20 if port == 0 else 1):
            socks = [_bind(socket.AF_INET, "0.0.0.0", port, self.backlog)]
            chosen = socks[0].getsockname()[1]
            try:
                socks.append(_bind(socket.AF_INET6, "::", chosen, self.backlog))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and port == 0:
                    socks[0].close()
                    continue
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    socks[0].close()
                    raise
            return socks
        raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")

    def _open_sockets(self) -> list[socket.socket]:
        """Bound, listening sockets for this listener's address.

        Raises:
            ConnectError: the address cannot be bound, naming it and the OS's reason.
        """
        try:
            return self._sockets()
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
                accept_loop = _direct.AcceptLoop(
                    loop,
                    sock,
                    self._make_protocol,
                    make_transport,
                    backlog=self.backlog,
                    retry_delay=self.accept_retry_delay,
                    where=self._where,
                    greeting=self.acceptor.greeting if self.greets_on_accept else None,
                    admit=self.acceptor.admit,
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
        host = self.host
        if host in _WILDCARDS:
            host = _primary_ip() if host != "::" else "::1"
        else:
            host = str(self._bound[0][0])
        return unparse_address(self.scheme, unparse_host_port(host, self.port))

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {"sockets": list(self._bound), "backlog": self.backlog}
