"""comm-tcp's own socket transport: comm-core's :class:`~comm_core.transport.SocketTransport`.

asyncio's selector transport (``_SelectorSocketTransport``) is general and
pays for it on every connection and every large message: it wraps the
socket, registers its reader and calls ``connection_made()`` through
callbacks on later loop iterations, and before Python 3.12 copies whatever
the kernel did not take at once into a buffer of its own. comm-core's
:class:`~comm_core.transport.SocketTransport` does what a comm needs with
less (its module says how); comm-unix uses it too. Here it logs as
``comm_tcp``, and ``COMM_TCP_TRANSPORT=asyncio`` turns it off.
comm-tcp uses it on asyncio's selector loops (see
``comm_tcp._direct.socket_transport_factory``).
"""

from __future__ import annotations

import logging
import os
import socket

import comm_core.transport
from comm_core.transport import StreamTransportBase

__all__ = ["ENV", "SocketTransport", "StreamTransportBase", "available"]

logger = logging.getLogger("comm_tcp")

#: The environment variable that selects asyncio's transport (``asyncio``) instead of ours.
ENV = "COMM_TCP_TRANSPORT"


def available() -> bool:
    """Whether this platform can run :class:`SocketTransport` and it is not turned off."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return False
    return hasattr(socket.socket, "sendmsg")


class SocketTransport(comm_core.transport.SocketTransport):
    """comm-core's :class:`~comm_core.transport.SocketTransport`, logging as ``comm_tcp``."""

    _logger = logger
