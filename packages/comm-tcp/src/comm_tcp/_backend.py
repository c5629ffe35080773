"""The tcp backend: what comm-core loads to list and look up the ``tcp`` scheme.

This module stays light (no asyncio, no socket, no msgpack): comm-core imports
every installed backend the first time any backend is needed. The connector
and listener classes, and what they import, are imported by the first
``connect()`` or ``listen()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from comm_core import AddressError, imported_on_use, parse_host_port, unparse_host_port
from comm_core.abc import Backend, CommHandler, Connector, Listener

if TYPE_CHECKING:
    from comm_tcp._connector import TCPConnector
    from comm_tcp._listener import TCPListener

__all__ = ["TCPBackend"]


def _has_port(loc: str) -> bool:
    """Whether *loc*, which :func:`comm_core.parse_host_port` accepted, has a port."""
    if loc.startswith("["):
        return "]:" in loc
    return loc.count(":") == 1  # several: an IPv6 host alone


class TCPBackend(Backend):
    """The ``tcp://`` backend: ``host:port`` locations, IPv4 and IPv6."""

    scheme: ClassVar[str] = "tcp"
    #: The class of the backend's connector (imported when first read).
    connector_class: ClassVar[type[TCPConnector]] = imported_on_use(
        "comm_tcp._connector", "TCPConnector"
    )
    #: The class of the backend's listeners (imported when first read).
    listener_class: ClassVar[type[TCPListener]] = imported_on_use(
        "comm_tcp._listener", "TCPListener"
    )

    def __init__(self) -> None:
        self._connector: TCPConnector | None = None

    def get_connector(self) -> Connector:
        return self._get_connector()

    def _get_connector(self) -> TCPConnector:
        connector = self._connector
        if connector is None:  # connectors are stateless: a race makes a spare one, harmlessly
            connector = self._connector = self.connector_class()
        return connector

    def get_listener(
        self, loc: str, handle_comm: CommHandler, deserialize: bool, **connection_args: Any
    ) -> Listener:
        return self.listener_class(
            loc, handle_comm, deserialize, connector=self._get_connector(), **connection_args
        )

    def get_address_host(self, loc: str) -> str:
        """The host of *loc* (``""`` for every interface); *loc* may have no port.

        Raises:
            AddressError: *loc* is malformed (see :func:`comm_core.parse_host_port`;
                an IPv6 host needs brackets unless it is alone and unambiguous).
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
