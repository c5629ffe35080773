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
"""

from comm_inproc._backend import InProcBackend
from comm_inproc._comm import InProcComm
from comm_inproc._connector import InProcConnector
from comm_inproc._listener import InProcListener
from comm_inproc._version import __version__

__all__ = ["InProcBackend", "InProcComm", "InProcConnector", "InProcListener", "__version__"]
