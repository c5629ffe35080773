"""comm-inproc: the in-process transport of comm.

Connect event loops (in one thread or several) of a single process with no
serialization and no I/O. Messages are passed by reference, not copied::

    import comm_core

    async def echo(comm):
        async for msg in comm:
            await comm.write(msg)

    async with comm_core.listen("inproc://", echo) as listener:
        async with await comm_core.connect(listener.contact_address) as comm:
            await comm.write({"op": "ping"})
            print(await comm.read())

comm-core finds this backend through its ``comm_core.backends`` entry point;
nothing needs to be imported from here to use ``inproc://`` addresses.

The names are imported on first access (PEP 562), so that importing this
package, as comm-core does to list the installed backends, imports no asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_inproc._version import __version__

if TYPE_CHECKING:
    from comm_inproc._backend import InProcBackend
    from comm_inproc._comm import InProcComm
    from comm_inproc._connector import InProcConnector
    from comm_inproc._listener import InProcListener

__all__ = ["InProcBackend", "InProcComm", "InProcConnector", "InProcListener", "__version__"]

#: The module that defines each public name.
_MODULES = {
    "InProcBackend": "comm_inproc._backend",
    "InProcComm": "comm_inproc._comm",
    "InProcConnector": "comm_inproc._connector",
    "InProcListener": "comm_inproc._listener",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
