"""HostPortBackend: the address functions of a backend whose locations are ``host:port``;
ComposedBackend: its connector and listeners made from two classes.

Light, as a backend's module must be: the socket module is imported by the
functions that need it (resolving, finding a route), not here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from comm_core._addressing import parse_host_port, unparse_host_port
from comm_core.exceptions import AddressError

__all__ = ["ComposedBackend", "HostPortBackend"]


def _has_port(loc: str) -> bool:
    """Whether *loc*, which :func:`comm_core.parse_host_port` accepted, has a port."""
    if loc.startswith("["):
        return "]:" in loc
    return loc.count(":") == 1  # several: an IPv6 host alone


class HostPortBackend:
    """A mixin for a :class:`~comm_core.Backend` whose locations are ``host:port``.

    It gives the four address functions of the backend contract for IPv4 and
    IPv6 hosts (IPv6 in brackets unless alone and unambiguous, see
    :func:`comm_core.parse_host_port`) and host names, for the backend's
    :attr:`~comm_core.Backend.scheme`::

        class WSBackend(comm_core.HostPortBackend, comm_core.Backend):
            scheme = "ws"
            ...

    comm-tcp's and comm-tls's backends are built so. List it before
    ``Backend``, whose defaults it replaces.
    """

    scheme: ClassVar[str]

    def get_address_host(self, loc: str) -> str:
        """The host of *loc* (``""`` for every interface); *loc* may have no port.

        Raises:
            AddressError: *loc* is malformed (an IPv6 host needs brackets unless it
                is alone and unambiguous).
        """
        return parse_host_port(loc, default_port=0, scheme=self.scheme)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        """``(host, port)`` of *loc*, whose port must be written.

        Raises:
            AddressError: *loc* has no port, or is malformed.
        """
        return parse_host_port(loc, scheme=self.scheme)

    def resolve_address(self, loc: str) -> str:
        """*loc* with its host name resolved to an IP address (may block on DNS); the port,
        or its absence, kept as written; a location without a host unchanged.

        Raises:
            AddressError: *loc* is malformed, or its host cannot be resolved.
        """
        import socket

        host, port = parse_host_port(loc, default_port=0, scheme=self.scheme)
        if not host:
            return loc
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise AddressError(f"cannot resolve {self.scheme}://{loc}: {exc}") from exc
        return unparse_host_port(str(infos[0][4][0]), port if _has_port(loc) else None)

    def get_local_address_for(self, loc: str) -> str:
        """The local location (a host, no port) from which *loc* would be reached.

        Raises:
            AddressError: *loc* is malformed, or no local address reaches it.
        """
        import socket

        host, _ = parse_host_port(loc, default_port=0, scheme=self.scheme)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = host or ("::1" if family == socket.AF_INET6 else "127.0.0.1")
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))  # UDP connect sends nothing; it picks a route
            except OSError as exc:
                raise AddressError(
                    f"no local address reaches {self.scheme}://{loc}: {exc}"
                ) from exc
            return unparse_host_port(str(probe.getsockname()[0]))


class ComposedBackend:
    """A mixin for a :class:`~comm_core.Backend` whose connector and listeners are
    instances of two classes it names.

    It gives ``get_connector()``, one instance of :attr:`connector_class` made
    on first use and kept (connectors hold no per-connection state), and
    ``get_listener()``, an instance of :attr:`listener_class` made with the
    backend's arguments and ``connector=``, the backend's connector (which
    makes the comms of the listener too)::

        class TCPBackend(comm_core.HostPortBackend, comm_core.ComposedBackend, comm_core.Backend):
            scheme = "tcp"
            connector_class = comm_core.imported_on_use("comm_tcp._connector", "TCPConnector")
            listener_class = comm_core.imported_on_use("comm_tcp._listener", "TCPListener")

    Name the classes with :func:`~comm_core.imported_on_use`, so that the
    backend's module stays light. comm-tcp's, comm-tls's and comm-ws's
    backends are built so. List it before ``Backend``.
    """

    #: The class of the backend's connector, made with no arguments.
    connector_class: ClassVar[type[Any]]
    #: The class of the backend's listeners: ``listener_class(loc, handle_comm,
    #: deserialize, connector=..., **connection_args)``.
    listener_class: ClassVar[type[Any]]
    _connector: Any = None

    def get_connector(self) -> Any:
        """The backend's connector, made on first call."""
        connector = self._connector
        if connector is None:  # connectors are stateless: a race makes a spare one, harmlessly
            connector = self._connector = self.connector_class()
        return connector

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> Any:
        """A new, unstarted listener on *loc* (see :meth:`comm_core.Backend.get_listener`)."""
        return self.listener_class(
            loc, handle_comm, deserialize, connector=self.get_connector(), **connection_args
        )
