"""The inproc backend: what comm-core asks for ``inproc://`` addresses.

This module stays light (no asyncio): comm-core imports every installed backend
the first time any backend is needed. The connector and the listener are
imported by the first ``connect()`` or ``listen()`` on ``inproc://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from comm_core.abc import Backend, Capability, CommHandler
from comm_inproc._address import (
    SCHEME,
    format_location,
    local_host,
    parse_location,
    process_location,
)

if TYPE_CHECKING:
    from comm_inproc._connector import InProcConnector
    from comm_inproc._listener import InProcListener

__all__ = ["InProcBackend"]


class InProcBackend(Backend):
    """The ``inproc`` scheme: comms between event loops of one process.

    Addresses are ``inproc://<host>/<pid>/<n>``. Messages are passed by
    reference, with no serialization and no I/O, so the backend declares
    :attr:`Capability.IN_PROCESS <comm_core.Capability.IN_PROCESS>` and
    satisfies ``require_encryption``.
    """

    scheme: ClassVar[str] = SCHEME
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.IN_PROCESS})

    def __init__(self) -> None:
        self._connector: InProcConnector | None = None

    def get_connector(self) -> InProcConnector:
        """Return the (shared, stateless) :class:`InProcConnector`."""
        connector = self._connector
        if connector is None:  # stateless: a race makes a spare one, harmlessly
            from comm_inproc._connector import InProcConnector

            connector = self._connector = InProcConnector()
        return connector

    def get_listener(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        **connection_args: Any,
    ) -> InProcListener:
        """Return an unstarted listener on *loc*; ``""`` picks a fresh address on start.

        Raises:
            AddressError: *loc* is malformed.
        """
        from comm_inproc._listener import InProcListener

        return InProcListener(loc, handle_comm, deserialize)

    def get_address_host(self, loc: str) -> str:
        """Return the host part of ``<host>/<pid>/<n>``; this host's name for ``""``.

        Raises:
            AddressError: *loc* is malformed.
        """
        if not loc:
            return local_host()
        return parse_location(loc)[0]

    def resolve_address(self, loc: str) -> str:
        """Return *loc* unchanged: inproc addresses need no resolving.

        Raises:
            AddressError: *loc* is malformed.
        """
        if loc:
            parse_location(loc)
        return loc

    def get_local_address_for(self, loc: str) -> str:
        """Return ``<host>/<pid>/0``, the location that names this process.

        Every inproc connection gets a fresh local address of its own, so there
        is no single address a connection would come from; ``n = 0`` is never
        given to a listener or comm of this process.

        Raises:
            AddressError: *loc* is malformed.
        """
        if loc:
            parse_location(loc)
        return format_location(process_location())
