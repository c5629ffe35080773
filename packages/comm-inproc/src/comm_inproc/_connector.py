"""The inproc connector: finds the listener and builds the pair of comms."""

from __future__ import annotations

from typing import Any

from comm_core.abc import Comm, Connector
from comm_core.exceptions import AddressError
from comm_inproc import _registry
from comm_inproc._address import SCHEME, format_address, new_location, parse_location
from comm_inproc._comm import InProcComm

__all__ = ["InProcConnector"]


class InProcConnector(Connector):
    """Connects to inproc listeners of this process; stateless.

    The comm returned has a fresh local address of its own, which is the peer
    address of the listener's end.
    """

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        """Connect to the listener at *address* (``"<host>/<pid>/<n>"``).

        Raises:
            ConnectError: nothing listens at *address* in this process (refused).
            AddressError: *address* is malformed or empty.
        """
        if not address:
            raise AddressError(
                f"cannot connect to '{SCHEME}://': an empty inproc location only listens; "
                "connect to a listener's contact_address"
            )
        listener = _registry.lookup(parse_location(address))
        client, server = InProcComm.pair(
            addresses=(format_address(new_location()), listener.contact_address)
        )
        client.deserialize = deserialize
        server.deserialize = listener._deserialize
        listener._accept(server)
        return client
