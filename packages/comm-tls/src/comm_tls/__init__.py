"""comm-tls: the ``tls://`` transport of comm: TLS over a TCP stream.

Pass a :class:`Security` (or an :class:`ssl.SSLContext` as ``ssl_context=``)
to :func:`comm_core.listen` and :func:`comm_core.connect`::

    security = comm_tls.Security.temporary()  # or Security(ca=..., cert=..., key=...)
    listener = comm_core.listen("tls://127.0.0.1:0", handler, security=security)
    comm = await comm_core.connect(address, security=security)

The classes are public for subclassing and for type checks; users reach the
transport through comm_core.

The names are imported on first access (PEP 562), so that importing this
package, as comm-core does to list the installed backends, imports neither
ssl nor asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_tls._version import __version__

if TYPE_CHECKING:
    from comm_tls._backend import TLSBackend
    from comm_tls._comm import TLSComm
    from comm_tls._connector import TLSConnector
    from comm_tls._errors import TLSConfigurationError, describe_failure
    from comm_tls._listener import TLSListener
    from comm_tls._security import Security, context_for
    from comm_tls._transport import TLSTransport, available, handshake

__all__ = [
    "Security",
    "TLSBackend",
    "TLSComm",
    "TLSConfigurationError",
    "TLSConnector",
    "TLSListener",
    "TLSTransport",
    "__version__",
    "available",
    "context_for",
    "describe_failure",
    "handshake",
]

#: The module that defines each public name.
_MODULES = {
    "Security": "comm_tls._security",
    "TLSBackend": "comm_tls._backend",
    "TLSComm": "comm_tls._comm",
    "TLSConfigurationError": "comm_tls._errors",
    "TLSConnector": "comm_tls._connector",
    "TLSListener": "comm_tls._listener",
    # For other transports over TLS (comm-ws's wss://): the same options, the same errors,
    # the same transport.
    "TLSTransport": "comm_tls._transport",
    "available": "comm_tls._transport",
    "context_for": "comm_tls._security",
    "describe_failure": "comm_tls._errors",
    "handshake": "comm_tls._transport",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
