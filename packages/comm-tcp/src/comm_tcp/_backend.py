"""The tcp backend: what comm-core loads to list and look up the ``tcp`` scheme.

This module stays light (no asyncio, no socket, no msgpack): comm-core imports
every installed backend the first time any backend is needed. The connector
and listener classes, and what they import, are imported by the first
``connect()`` or ``listen()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from comm_core import ComposedBackend, HostPortBackend, imported_on_use
from comm_core.abc import Backend

if TYPE_CHECKING:
    from comm_tcp._connector import TCPConnector
    from comm_tcp._listener import TCPListener

__all__ = ["TCPBackend"]


class TCPBackend(HostPortBackend, ComposedBackend, Backend):
    """The ``tcp://`` backend: ``host:port`` locations, IPv4 and IPv6.

    Its address functions are comm-core's :class:`~comm_core.HostPortBackend`.
    """

    scheme: ClassVar[str] = "tcp"
    #: The class of the backend's connector (imported when first read).
    connector_class: ClassVar[type[TCPConnector]] = imported_on_use(
        "comm_tcp._connector", "TCPConnector"
    )
    #: The class of the backend's listeners (imported when first read).
    listener_class: ClassVar[type[TCPListener]] = imported_on_use(
        "comm_tcp._listener", "TCPListener"
    )
