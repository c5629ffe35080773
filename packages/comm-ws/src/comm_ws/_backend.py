"""The ws and wss backends: what comm-core loads to list and look up ``ws`` and ``wss``.

This module stays light (no asyncio, no ssl, no WebSocket library): comm-core
imports every installed backend the first time any backend is needed. The
connector and listener classes are imported by the first ``connect()`` or
``listen()`` on ``ws://`` or ``wss://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from comm_core import AddressError, Capability, ComposedBackend, HostPortBackend, imported_on_use
from comm_core.abc import Backend
from comm_ws._address import split_location

if TYPE_CHECKING:
    from comm_ws._connector import WSConnector
    from comm_ws._listener import WSListener

__all__ = ["WSBackend", "WSSBackend"]


class WSBackend(HostPortBackend, ComposedBackend, Backend):
    """The ``ws://`` backend: ``host:port[/path]`` locations, comm's messages over WebSocket.

    The address functions are comm-core's :class:`~comm_core.HostPortBackend`'s
    for the ``host:port`` part; the path, if any, is kept as written.
    """

    scheme: ClassVar[str] = "ws"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: :class:`~comm_ws.WSConnector` (imported when first read).
    connector_class: ClassVar[type[WSConnector]] = imported_on_use(
        "comm_ws._connector", "WSConnector"
    )
    #: :class:`~comm_ws.WSListener` (imported when first read).
    listener_class: ClassVar[type[WSListener]] = imported_on_use("comm_ws._listener", "WSListener")

    # -- addresses: host:port as HostPortBackend, then the path ----------------------------

    def _split(self, loc: str) -> tuple[str, str]:
        host_port, path = split_location(loc, self.scheme)
        return host_port, ("" if path == "/" and "/" not in loc else path)

    def _named(self, exc: AddressError, loc: str, host_port: str) -> AddressError:
        if host_port == loc:
            return exc
        return AddressError(f"{self.scheme}://{loc}: {exc}")

    def get_address_host(self, loc: str) -> str:
        host_port, _ = self._split(loc)
        try:
            return super().get_address_host(host_port)
        except AddressError as exc:
            raise self._named(exc, loc, host_port) from exc

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host_port, _ = self._split(loc)
        try:
            return super().get_address_host_port(host_port)
        except AddressError as exc:
            raise self._named(exc, loc, host_port) from exc

    def resolve_address(self, loc: str) -> str:
        host_port, path = self._split(loc)
        try:
            return super().resolve_address(host_port) + path
        except AddressError as exc:
            raise self._named(exc, loc, host_port) from exc

    def get_local_address_for(self, loc: str) -> str:
        host_port, _ = self._split(loc)
        try:
            return super().get_local_address_for(host_port)
        except AddressError as exc:
            raise self._named(exc, loc, host_port) from exc


class WSSBackend(WSBackend):
    """The ``wss://`` backend: WebSocket over TLS (configured as ``tls://`` is)."""

    scheme: ClassVar[str] = "wss"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
    #: :class:`~comm_ws.WSSConnector` (imported when first read).
    connector_class: ClassVar[type[WSConnector]] = imported_on_use(
        "comm_ws._connector", "WSSConnector"
    )
