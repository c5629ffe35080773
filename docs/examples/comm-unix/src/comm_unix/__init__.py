"""comm-unix: a comm transport over Unix domain sockets.

Install it next to comm-core and use ``unix://`` addresses; nothing needs to be
imported from here::

    import comm_core

    async with comm_core.listen("unix://", handler) as listener:  # a fresh path
        async with await comm_core.connect(listener.contact_address) as comm:
            await comm.write({"op": "ping"})

comm-core finds the backend through the ``unix`` entry point of the
``comm_core.backends`` group. The classes are exported for subclassing.
"""

from comm_unix._address import MAX_PATH_BYTES, SCHEME, check_path
from comm_unix._backend import UnixBackend, UnixComm, UnixConnector
from comm_unix._listener import UnixListener

__version__ = "0.1.0"

__all__ = [
    "MAX_PATH_BYTES",
    "SCHEME",
    "UnixBackend",
    "UnixComm",
    "UnixConnector",
    "UnixListener",
    "__version__",
    "check_path",
]
