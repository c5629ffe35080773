"""comm-ws: the ``ws://`` and ``wss://`` transports of comm: comm's messages over WebSocket.

For clusters that only HTTP(S) reaches (ingress controllers, HTTP proxies,
load balancers)::

    async with comm_core.listen("ws://0.0.0.0:8786/comm", handler) as listener:
        comm = await comm_core.connect("ws://scheduler.example:8786/comm")

``wss://`` runs the same over TLS, configured as ``tls://`` is, with a
:class:`comm_tls.Security` (``security=``) or an :class:`ssl.SSLContext`
(``ssl_context=``).

The classes are public for subclassing and for type checks; users reach the
transport through comm_core. The names are imported on first access (PEP
562), so that importing this package, as comm-core does to list the installed
backends, imports neither asyncio nor the WebSocket library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_ws._version import __version__

if TYPE_CHECKING:
    from comm_ws._backend import WSBackend, WSSBackend
    from comm_ws._comm import WSComm
    from comm_ws._connector import WSConnector, WSSConnector
    from comm_ws._listener import WSListener
    from comm_ws._protocol import SUBPROTOCOL, WSProtocol

__all__ = [
    "SUBPROTOCOL",
    "WSBackend",
    "WSComm",
    "WSConnector",
    "WSListener",
    "WSProtocol",
    "WSSBackend",
    "WSSConnector",
    "__version__",
]

#: The module that defines each public name.
_MODULES = {
    "SUBPROTOCOL": "comm_ws._protocol",
    "WSBackend": "comm_ws._backend",
    "WSComm": "comm_ws._comm",
    "WSConnector": "comm_ws._connector",
    "WSListener": "comm_ws._listener",
    "WSProtocol": "comm_ws._protocol",
    "WSSBackend": "comm_ws._backend",
    "WSSConnector": "comm_ws._connector",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
