"""The unix comm and the connector that dials socket paths."""

from __future__ import annotations

import asyncio
from typing import Any

from comm_core import FatalCommClosedError, Options
from comm_core.abc import Comm, Connector
from comm_core.sockets import connect_error
from comm_core.stream import StreamComm
from comm_unix._address import SCHEME, check_path

__all__ = ["UnixComm", "UnixConnector", "comm_options"]

#: The connection arguments that configure a comm; the others are ignored.
COMM_OPTIONS = ("max_message_size", "write_high_water", "read_high_water")


def comm_options(connection_args: dict[str, Any]) -> dict[str, Any]:
    """Pick the :class:`~comm_core.stream.StreamComm` options out of *connection_args*."""
    return {
        name: connection_args[name]
        for name in COMM_OPTIONS
        if connection_args.get(name) is not None
    }


class UnixComm(StreamComm):
    """A comm over one Unix domain socket connection.

    Everything (framing, flow control, serialization) comes from
    :class:`~comm_core.stream.StreamComm`. The listening end's address is its
    socket path; a connecting end has no path, so its address is ``unix://``.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(scheme=SCHEME, **options)

    @property
    def same_host(self) -> bool:
        """Always true: a Unix socket never leaves the machine."""
        return True


class UnixConnector(Connector):
    """Dials socket paths."""

    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        path = check_path(address, listening=False)
        # options: the settings connect() resolved, for the comm (its size limits, ...).
        comm = UnixComm(deserialize=deserialize, options=options, **comm_options(connection_args))
        loop = asyncio.get_running_loop()
        try:
            await loop.create_unix_connection(lambda: comm.protocol, path)
        except PermissionError as exc:
            comm.abort()
            # Retrying will not change the socket's permissions: fail at once.
            raise FatalCommClosedError(f"cannot connect to {SCHEME}://{path}: {exc}") from exc
        except OSError as exc:
            comm.abort()
            # Nobody listens (yet): ENOENT, ECONNREFUSED... connect() retries a
            # ConnectError; comm-core's helper words it as comm-tcp's and comm-tls's.
            raise connect_error(f"{SCHEME}://{path}", exc) from exc
        except BaseException:  # cancelled: leave nothing half-open
            comm.abort()
            raise
        return comm
