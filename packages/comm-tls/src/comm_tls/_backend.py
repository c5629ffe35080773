"""The tls backend: what comm-core loads to list and look up the ``tls`` scheme.

This module stays light (no asyncio, no ssl): comm-core imports every installed
backend the first time any backend is needed. The connector and listener
classes, and ssl with them, are imported by the first ``connect()`` or
``listen()`` on ``tls://``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from comm_core import Capability, imported_on_use
from comm_tcp import TCPBackend

if TYPE_CHECKING:
    from comm_tcp import TCPConnector, TCPListener

__all__ = ["TLSBackend"]


class TLSBackend(TCPBackend):
    """The ``tls://`` backend: TCP's addresses and machinery, with TLS on every connection."""

    scheme: ClassVar[str] = "tls"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
    #: :class:`~comm_tls.TLSConnector` (imported when first read).
    connector_class: ClassVar[type[TCPConnector]] = imported_on_use(
        "comm_tls._connector", "TLSConnector"
    )
    #: :class:`~comm_tls.TLSListener` (imported when first read).
    listener_class: ClassVar[type[TCPListener]] = imported_on_use(
        "comm_tls._listener", "TLSListener"
    )
