"""The ws comm: comm-core's :class:`~comm_core.message.MessageComm` over a :class:`WSProtocol`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from comm_core import Options
from comm_core.message import MessageComm
from comm_core.protocol import MAX_FIRST_MESSAGE, MAX_FRAMES
from comm_ws._protocol import SUBPROTOCOL, WSProtocol

__all__ = ["WSComm", "message_limit"]


def message_limit(max_message_size: int) -> int:
    """The longest WebSocket message that may hold a comm message of *max_message_size*
    bytes: its frames, and the largest frame header (4 bytes, and 8 per frame)."""
    return max_message_size + 4 + 8 * MAX_FRAMES


class WSComm(MessageComm):
    """A comm over one WebSocket connection: one binary WebSocket message per comm message.

    The encoding, the size limits and the contract of a comm are
    :class:`~comm_core.message.MessageComm`'s; the connection is its
    :attr:`protocol`'s. ``extra_info`` holds ``peername``, ``sockname``,
    ``path`` (the HTTP path), ``subprotocol``, and over ``wss://`` the TLS
    facts ``peercert``, ``cipher`` and ``tls_version``.
    """

    def __init__(
        self,
        protocol: WSProtocol,
        *,
        path: str = "/",
        deserialize: bool = True,
        max_message_size: int | None = None,
        options: Options | None = None,
    ) -> None:
        super().__init__(
            deserialize=deserialize,
            max_message_size=max_message_size,
            first_message_limit=MAX_FIRST_MESSAGE,
            options=options,
        )
        #: The WebSocket connection.
        self.protocol = protocol
        self.path = path
        # The protocol's own methods, bound once: one coroutine frame fewer per message.
        self.send_message = protocol.send  # type: ignore[method-assign]
        self.receive_message = protocol.receive  # type: ignore[method-assign]
        self.closed = protocol.is_closed  # type: ignore[method-assign]

    async def send_message(self, buffers: Sequence[Any], size: int) -> None:
        await self.protocol.send(buffers, size)

    async def receive_message(self) -> Any:
        return await self.protocol.receive()

    def message_waiting(self) -> bool:
        return self.protocol.message_waiting()

    async def send_handshake(self, info: Mapping[str, Any]) -> None:
        """Send this side's handshake, unless the peer broke the protocol already (its
        oversized handshake, say): then the handshake's read says why, not this write."""
        if self.protocol.broken():
            return
        # Held to the end of this loop iteration: it leaves with the first message written
        # by then (a dialer writes right after connect() returns), in one segment.
        self.protocol.cork()
        await super().send_handshake(info)

    async def close(self) -> None:
        await self.protocol.close()

    def abort(self) -> None:
        self.protocol.abort()

    def closed(self) -> bool:
        return self.protocol.is_closed()

    @property
    def local_address(self) -> str:
        return self.protocol.local

    @property
    def peer_address(self) -> str:
        return self.protocol.peer

    @property
    def extra_info(self) -> Mapping[str, Any]:
        transport = self.protocol.transport
        info: dict[str, Any] = {"path": self.path, "subprotocol": SUBPROTOCOL}
        if transport is None:
            return info
        info["peername"] = transport.get_extra_info("peername")
        info["sockname"] = transport.get_extra_info("sockname")
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            info["peercert"] = transport.get_extra_info("peercert") or {}
            info["cipher"] = transport.get_extra_info("cipher")
            info["tls_version"] = ssl_object.version()
        return info
