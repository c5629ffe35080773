"""comm-tcp: the ``tcp://`` transport of comm.

Users reach it through :func:`comm_core.connect` and :func:`comm_core.listen`;
the classes here are public for subclassing (comm-tls's comm builds on
TCPComm, for its socket options).

The names are imported on first access (PEP 562), so that importing this
package, as comm-core does to list the installed backends, imports neither
asyncio nor the machinery of connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_tcp._version import __version__

if TYPE_CHECKING:
    from comm_tcp._backend import TCPBackend
    from comm_tcp._comm import TCPComm, TCPProtocol
    from comm_tcp._connector import TCPConnector
    from comm_tcp._listener import TCPListener
    from comm_tcp._options import SocketOptions
    from comm_tcp._transport import StreamTransportBase

__all__ = [
    "SocketOptions",
    "StreamTransportBase",
    "TCPBackend",
    "TCPComm",
    "TCPConnector",
    "TCPListener",
    "TCPProtocol",
    "__version__",
]

#: The module that defines each public name.
_MODULES = {
    "SocketOptions": "comm_tcp._options",
    "StreamTransportBase": "comm_tcp._transport",
    "TCPBackend": "comm_tcp._backend",
    "TCPComm": "comm_tcp._comm",
    "TCPConnector": "comm_tcp._connector",
    "TCPListener": "comm_tcp._listener",
    "TCPProtocol": "comm_tcp._comm",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
