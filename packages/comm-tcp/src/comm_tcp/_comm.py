"""The tcp comm: comm-core's stream comm with TCP socket options and facts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from comm_core.stream import StreamComm, StreamProtocol
from comm_tcp._options import SocketOptions
from comm_tcp._transport import SocketTransport

__all__ = ["TCPComm", "TCPProtocol"]


class TCPProtocol(StreamProtocol):
    """Applies the comm's socket options when the connection is made."""

    socket_options: SocketOptions = SocketOptions()
    #: Set by a listener whose listening socket carries :attr:`socket_options` already,
    #: which the connections it accepts inherit: they are not set again.
    options_inherited: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, SocketTransport):
            self.zero_copy_writes = True  # it queues large buffers by reference
        if not self.options_inherited:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self.socket_options.apply(sock)
        super().connection_made(transport)


class TCPComm(StreamComm):
    """A comm over one TCP connection.

    ``extra_info`` holds ``sockname`` and ``peername`` (socket addresses), the
    socket options in force, and ``max_message_size``.

    Args:
        socket_options: the TCP options of its socket (default: ``SocketOptions()``).
        kwargs: as :class:`~comm_core.stream.StreamComm` (``options=`` holds
            comm-core's settings).
    """

    protocol_class = TCPProtocol
    protocol: TCPProtocol

    def __init__(
        self,
        *,
        scheme: str = "tcp",
        socket_options: SocketOptions | None = None,
        on_established: Callable[[StreamComm], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheme=scheme, on_established=on_established, **kwargs)
        self.socket_options = socket_options or SocketOptions()
        self.protocol.socket_options = self.socket_options

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {**super().extra_info, **self.socket_options.as_dict()}
