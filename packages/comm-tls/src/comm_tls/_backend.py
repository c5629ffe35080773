"""The tls backend: what comm-core loads to list and look up the ``tls`` scheme.

This module stays light (no asyncio, no ssl): comm-core imports every installed
backend the first time any backend is needed. The connector and listener
classes, and ssl with them, are imported by the first ``connect()`` or
``listen()`` on ``tls://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from comm_core import Capability, ComposedBackend, HostPortBackend, imported_on_use
from comm_core.abc import Backend

if TYPE_CHECKING:
    from comm_tls._connector import TLSConnector
    from comm_tls._listener import TLSListener

__all__ = ["TLSBackend"]


class TLSBackend(HostPortBackend, ComposedBackend, Backend):
    """The ``tls://`` backend: ``host:port`` locations (comm-core's
    :class:`~comm_core.HostPortBackend`), TLS on every connection."""

    scheme: ClassVar[str] = "tls"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
    #: :class:`~comm_tls.TLSConnector` (imported when first read).
    connector_class: ClassVar[type[TLSConnector]] = imported_on_use(
        "comm_tls._connector", "TLSConnector"
    )
    #: :class:`~comm_tls.TLSListener` (imported when first read).
    listener_class: ClassVar[type[TLSListener]] = imported_on_use(
        "comm_tls._listener", "TLSListener"
    )
