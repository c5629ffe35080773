"""A small but complete backend: each comm is a pair of asyncio queues."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection
from typing import Any, ClassVar

import comm_core

_EOF = object()
_names = itertools.count(1)
_listeners: dict[str, ThirdPartyListener] = {}


class ThirdPartyComm(comm_core.Comm):
    def __init__(
        self, local: str, peer: str, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]
    ):
        super().__init__()
        self._local, self._peer = local, peer
        self._inbox, self._outbox = inbox, outbox
        self._closed = False

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        if self._closed:
            raise comm_core.CommClosedError(f"{self!r} is closed")
        msg = await self._inbox.get()
        if msg is _EOF:
            self.abort()
            raise comm_core.CommClosedError(f"{self!r}: the peer closed")
        return msg

    async def write(self, msg: Any, serializers: Any = None, on_error: Any = "raise") -> int:
        if self._closed:
            raise comm_core.CommClosedError(f"{self!r} is closed")
        self._outbox.put_nowait(msg)
        return 0

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(_EOF)
            self._inbox.put_nowait(_EOF)

    def closed(self) -> bool:
        return self._closed

    @property
    def local_address(self) -> str:
        return self._local

    @property
    def peer_address(self) -> str:
        return self._peer


class ThirdPartyListener(comm_core.Listener):
    def __init__(self, loc: str, handle_comm: comm_core.CommHandler) -> None:
        self._loc = loc or f"listener-{next(_names)}"
        self._handle_comm = handle_comm
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> None:
        if not self._started:
            if self._loc in _listeners:
                raise comm_core.ConnectError(f"{self.contact_address} is in use")
            _listeners[self._loc] = self
            self._started = True

    def stop(self) -> None:
        if _listeners.get(self._loc) is self:
            del _listeners[self._loc]
        super().stop()

    @property
    def listen_address(self) -> str:
        return f"thirdparty://{self._loc}"

    @property
    def contact_address(self) -> str:
        return self.listen_address

    def accept(self) -> ThirdPartyComm:
        to_server: asyncio.Queue[Any] = asyncio.Queue()
        to_client: asyncio.Queue[Any] = asyncio.Queue()
        client_address = f"thirdparty://client-{next(_names)}"
        server = ThirdPartyComm(self.listen_address, client_address, to_server, to_client)
        task = asyncio.get_running_loop().create_task(self._handle_comm(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ThirdPartyComm(client_address, self.listen_address, to_client, to_server)


class ThirdPartyConnector(comm_core.Connector):
    async def connect(
        self, address: str, deserialize: bool = True, **kwargs: Any
    ) -> comm_core.Comm:
        listener = _listeners.get(address)
        if listener is None:
            raise comm_core.ConnectError(f"nobody listens on thirdparty://{address}")
        return listener.accept()


class ThirdPartyBackend(comm_core.Backend):
    scheme: ClassVar[str] = "thirdparty"
    capabilities: ClassVar[frozenset[str]] = frozenset({comm_core.Capability.IN_PROCESS})

    def get_connector(self) -> comm_core.Connector:
        return ThirdPartyConnector()

    def get_listener(
        self, loc: str, handle_comm: comm_core.CommHandler, deserialize: bool, **kwargs: Any
    ) -> comm_core.Listener:
        return ThirdPartyListener(loc, handle_comm)

    def get_address_host(self, loc: str) -> str:
        return "localhost"

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return ""
