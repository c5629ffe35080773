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

    options: SocketOptions = SocketOptions()
    #: Set by a listener whose listening socket carries :attr:`options` already, which
    #: the connections it accepts inherit: they are not set again.
    options_inherited: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, SocketTransport):
            self.zero_copy_writes = True  # it queues large buffers by reference
        if not self.options_inherited:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self.options.apply(sock)
        super().connection_made(transport)


class TCPComm(StreamComm):
    """A comm over one TCP connection.

    ``extra_info`` holds ``sockname`` and ``peername`` (socket addresses), the
    socket options in force, and ``max_message_size``.
    """

    protocol_class = TCPProtocol
    protocol: TCPProtocol

    def __init__(
        self,
        *,
        scheme: str = "tcp",
        options: SocketOptions | None = None,
        on_established: Callable[[StreamComm], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scheme=scheme, on_established=on_established, **kwargs)
        self.options = options or SocketOptions()
        self.protocol.options = self.options

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {**super().extra_info, **self.options.as_dict()}
