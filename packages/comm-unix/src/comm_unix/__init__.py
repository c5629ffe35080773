"""comm-unix: a comm transport over Unix domain sockets.

Install it next to comm-core and use ``unix://`` addresses; nothing needs to be
imported from here::

    import comm_core

    async with comm_core.listen("unix://", handler) as listener:  # a fresh path
        # (or "unix:///run/app.sock", or "unix://@app" in Linux's abstract namespace)
        async with await comm_core.connect(listener.contact_address) as comm:
            await comm.write({"op": "ping"})

comm-core finds the backend through the ``unix`` entry point of the
``comm_core.backends`` group. The classes are exported for subclassing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_unix._address import ABSTRACT_NAMESPACE, MAX_PATH_BYTES, SCHEME, check_path
from comm_unix._version import __version__

if TYPE_CHECKING:
    from comm_unix._backend import UnixBackend
    from comm_unix._comm import UnixComm, UnixProtocol
    from comm_unix._connector import UnixConnector
    from comm_unix._credentials import PeerCredentials, peer_credentials
    from comm_unix._listener import UnixListener

__all__ = [
    "ABSTRACT_NAMESPACE",
    "MAX_PATH_BYTES",
    "SCHEME",
    "PeerCredentials",
    "UnixBackend",
    "UnixComm",
    "UnixConnector",
    "UnixListener",
    "UnixProtocol",
    "__version__",
    "check_path",
    "peer_credentials",
]

# comm-core imports this package (for its plugin) whenever it lists the backends:
# the classes that need asyncio are imported when first used, not here (PEP 562).
_MODULES = {
    "UnixBackend": "comm_unix._backend",
    "UnixComm": "comm_unix._comm",
    "UnixConnector": "comm_unix._connector",
    "UnixListener": "comm_unix._listener",
    "UnixProtocol": "comm_unix._comm",
    "PeerCredentials": "comm_unix._credentials",
    "peer_credentials": "comm_unix._credentials",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
