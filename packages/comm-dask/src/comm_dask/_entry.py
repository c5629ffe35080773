"""What the entry points of ``distributed.comm.backends`` name.

Dask calls the object an entry point names, with no arguments, and keeps what it
returns as the scheme's backend.
"""

from __future__ import annotations

from comm_dask._backend import CommBackend

__all__ = ["inproc", "tcp", "tls"]


def tcp() -> CommBackend:
    """The ``comm+tcp`` backend (comm-tcp)."""
    return CommBackend("tcp")


def tls() -> CommBackend:
    """The ``comm+tls`` backend (comm-tls)."""
    return CommBackend("tls")


def inproc() -> CommBackend:
    """The ``comm+inproc`` backend (comm-inproc)."""
    return CommBackend("inproc")
