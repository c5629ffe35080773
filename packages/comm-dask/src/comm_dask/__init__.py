"""comm-dask: comm's transports for Dask.

Installing it gives Dask the schemes ``comm+tcp``, ``comm+tls`` and
``comm+inproc`` (entry points of ``distributed.comm.backends``): a Dask
scheduler, worker or client then runs over comm's transport when its address
says so::

    from distributed import LocalCluster

    cluster = LocalCluster(protocol="comm+tcp://", n_workers=2)

Nothing here needs importing for that. The classes are exported for type checks
and subclassing, and :func:`register_backends` makes any other installed comm
transport a Dask scheme. The names are imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from comm_core import lazy_exports
from comm_dask._version import __version__

if TYPE_CHECKING:
    from comm_dask._backend import PREFIX, CommBackend, dask_scheme
    from comm_dask._comm import DaskComm
    from comm_dask._connector import CommConnector
    from comm_dask._listener import CommListener
    from comm_dask._register import register_backends

__all__ = [
    "PREFIX",
    "CommBackend",
    "CommConnector",
    "CommListener",
    "DaskComm",
    "__version__",
    "dask_scheme",
    "register_backends",
]

#: The module that defines each public name.
_MODULES = {
    "PREFIX": "comm_dask._backend",
    "CommBackend": "comm_dask._backend",
    "dask_scheme": "comm_dask._backend",
    "DaskComm": "comm_dask._comm",
    "CommConnector": "comm_dask._connector",
    "CommListener": "comm_dask._listener",
    "register_backends": "comm_dask._register",
}

if not TYPE_CHECKING:  # type checkers see the imports above, and no catch-all
    __getattr__, __dir__ = lazy_exports(__name__, _MODULES)
