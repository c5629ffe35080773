"""The tcp connector: dials ``host:port`` locations and makes the comms of the tcp backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

from comm_core import CommError, Options
from comm_core.abc import Comm, Connector
from comm_core.sockets import connect_error, dial_target, ip_family
from comm_core.stream import StreamComm
from comm_tcp import _direct
from comm_tcp._comm import TCPComm
from comm_tcp._options import SocketOptions

__all__ = ["TCPConnector", "comm_kwargs"]

_COMM_ARGS = ("max_message_size", "write_high_water", "read_high_water")


def comm_kwargs(args: dict[str, Any]) -> dict[str, Any]:
    """The connection arguments that configure a comm (the rest are ignored)."""
    return {name: args[name] for name in _COMM_ARGS if args.get(name) is not None}


class TCPConnector(Connector):
    """Dials ``host:port`` locations."""

    scheme: ClassVar[str] = "tcp"
    #: The class of the comms this connector (and its backend's listeners) make.
    comm_class: ClassVar[type[TCPComm]] = TCPComm

    def make_comm(
        self,
        deserialize: bool,
        args: dict[str, Any],
        on_established: Callable[[StreamComm], None] | None = None,
        options: Options | None = None,
    ) -> TCPComm:
        """A new, unconnected comm configured by the connection arguments *args* and
        the settings *options* (default: those in force)."""
        return self.comm_class(
            scheme=self.scheme,
            deserialize=deserialize,
            socket_options=SocketOptions.from_args(args),
            on_established=on_established,
            options=options,
            **comm_kwargs(args),
        )

    async def open(
        self,
        comm: TCPComm,
        host: str,
        port: int,
        args: dict[str, Any],
    ) -> None:
        """Open the transport for *comm*; comm-tls overrides this to add TLS.

        A numeric address on one of asyncio's selector loops is dialled
        directly (see ``comm_tcp._direct``); a name, or another loop, goes
        through the loop's ``create_connection``.
        """
        loop = asyncio.get_running_loop()
        make_transport = _direct.socket_transport_factory(loop)
        if make_transport is None or ip_family(host) is None:
            await loop.create_connection(lambda: comm.protocol, host, port)
        else:
            await _direct.dial(make_transport, comm.protocol, host, port)

    def on_established(self, comm: StreamComm) -> None:
        """Called once a comm this connector dialed has the peer's valid preamble.

        Does nothing; a hook for subclasses (comm-tls keeps the TLS session
        ticket there).
        """

    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        host, port = dial_target(self.scheme, address)
        comm = self.make_comm(
            deserialize,
            connection_args,
            on_established=self.on_established,
            options=Options() if options is None else options,
        )
        try:
            await self.open(comm, host, port, connection_args)
        except CommError:  # already translated by open() (comm-tls: FatalCommClosedError)
            comm.abort()
            raise
        except OSError as exc:
            comm.abort()
            raise connect_error(f"{self.scheme}://{address}", exc) from exc
        except BaseException:
            comm.abort()
            raise
        return comm
