"""The tls backend: what comm-core loads to list and look up the ``tls`` scheme.

This module stays light (no asyncio, no ssl): comm-core imports every installed
backend the first time any backend is needed. The connector and listener
classes, and ssl with them, are imported by the first ``connect()`` or
``listen()`` on ``tls://``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar

from comm_core import Capability
from comm_tcp import TCPBackend

if TYPE_CHECKING:
    from comm_tcp import TCPConnector, TCPListener

__all__ = ["TLSBackend"]


class _Imported:
    """A class attribute naming a class that is imported when the attribute is read.

    (As comm-tcp's :class:`~comm_tcp.TCPBackend` declares its own.)
    """

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return getattr(import_module(self.module), self.name)

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}, imported on first use>"


def _imported(module: str, name: str) -> Any:
    # Typed Any, so that type checkers take the attribute's declared type.
    return _Imported(module, name)


class TLSBackend(TCPBackend):
    """The ``tls://`` backend: TCP's addresses and machinery, with TLS on every connection."""

    scheme: ClassVar[str] = "tls"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
    #: :class:`~comm_tls.TLSConnector` (imported when first read).
    connector_class: ClassVar[type[TCPConnector]] = _imported("comm_tls._connector", "TLSConnector")
    #: :class:`~comm_tls.TLSListener` (imported when first read).
    listener_class: ClassVar[type[TCPListener]] = _imported("comm_tls._listener", "TLSListener")
