"""A message transport for comm-core's tests, scheme ``msgq``: :class:`MessageComm` over pipes.

Each direction of a connection is a pipe of whole messages (bytes) in memory,
with backpressure: a send waits while the pipe holds more than its high-water
mark of bytes. It is what a WebSocket transport looks like to
:class:`~comm_core.message.MessageComm`: whole binary messages, a clean close
that delivers what was sent first, a reset that does not. Registered in code
by the tests that use it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from comm_core import (
    AddressError,
    Backend,
    CommClosedError,
    CommHandler,
    ConnectError,
    Connector,
    Listener,
)
from comm_core.message import MessageComm

_names = itertools.count(1)


class Pipe:
    """One direction of a connection: whole messages, at most *high_water* bytes queued."""

    def __init__(self, high_water: int) -> None:
        self.messages: deque[Any] = deque()
        self.size = 0
        self.high_water = high_water
        self.closed = False  # the sender closed: no more messages after those queued
        self.reset = False  # the connection broke: what is queued is lost
        self.changed = asyncio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def put(self, message: Any) -> None:
        while self.size > self.high_water and not (self.reset or self.closed):
            await self.changed.wait()
        if self.reset or self.closed:
            raise CommClosedError("the connection is closed")
        self.messages.append(message)
        self.size += len(message)
        self._notify()

    async def get(self) -> Any:
        while not self.messages:
            if self.reset:
                raise CommClosedError("the connection was reset")
            if self.closed:
                return None
            await self.changed.wait()
        message = self.messages.popleft()
        self.size -= len(message)
        self._notify()
        return message

    def close(self, *, reset: bool = False) -> None:
        self.closed = True
        if reset:
            self.reset = True
            self.messages.clear()
            self.size = 0
        self._notify()


class PipeComm(MessageComm):
    """One end of a msgq connection."""

    def __init__(
        self,
        local: str,
        peer: str,
        inbox: Pipe,
        outbox: Pipe,
        *,
        deserialize: bool = True,
        max_message_size: int | None = None,
    ) -> None:
        super().__init__(deserialize=deserialize, max_message_size=max_message_size)
        self._local = local
        self._peer = peer
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    @classmethod
    def pair(
        cls,
        a: str,
        b: str,
        *,
        high_water: int = 1 << 20,
        deserialize: tuple[bool, bool] = (True, True),
        max_message_size: tuple[int | None, int | None] = (None, None),
    ) -> tuple[PipeComm, PipeComm]:
        a_to_b, b_to_a = Pipe(high_water), Pipe(high_water)
        return (
            cls(
                a,
                b,
                b_to_a,
                a_to_b,
                deserialize=deserialize[0],
                max_message_size=max_message_size[0],
            ),
            cls(
                b,
                a,
                a_to_b,
                b_to_a,
                deserialize=deserialize[1],
                max_message_size=max_message_size[1],
            ),
        )

    async def send_message(self, buffers: Sequence[Any], size: int) -> None:
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        await self._outbox.put(b"".join(buffers))

    async def receive_message(self) -> Any:
        if self._closed:
            raise CommClosedError(f"{self!r} is closed")
        return await self._inbox.get()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.close()  # the peer reads what was sent, then the end
            self._inbox.close(reset=True)  # wakes a read of our own

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.close(reset=True)
            self._inbox.close(reset=True)

    def closed(self) -> bool:
        return self._closed

    @property
    def local_address(self) -> str:
        return self._local

    @property
    def peer_address(self) -> str:
        return self._peer


class PipeListener(Listener):
    def __init__(
        self,
        backend: PipeBackend,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        max_message_size: int | None = None,
    ) -> None:
        self._backend = backend
        self._max_message_size = max_message_size
        self._loc = loc
        self._handle_comm = handle_comm
        self._deserialize = deserialize
        self._name: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._name is not None:
            return
        name = self._loc or f"listener-{next(_names)}"
        if name in self._backend.listeners:
            raise ConnectError(f"msgq://{name} is already in use")
        self._backend.listeners[name] = self
        self._name = name

    def stop(self) -> None:
        if self._name is not None and self._backend.listeners.get(self._name) is self:
            del self._backend.listeners[self._name]
        super().stop()

    @property
    def listen_address(self) -> str:
        if self._name is None:
            raise RuntimeError("the listener is not started")
        return f"msgq://{self._name}"

    @property
    def contact_address(self) -> str:
        return self.listen_address

    def accept(self, deserialize: bool, max_message_size: int | None = None) -> PipeComm:
        server, client = PipeComm.pair(
            self.listen_address,
            f"msgq://client-{next(_names)}",
            deserialize=(self._deserialize, deserialize),
            max_message_size=(self._max_message_size, max_message_size),
        )
        task = asyncio.get_running_loop().create_task(self._handle_comm(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client


class PipeConnector(Connector):
    def __init__(self, backend: PipeBackend) -> None:
        self._backend = backend

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Any:
        await asyncio.sleep(0)
        listener = self._backend.listeners.get(address)
        if listener is None:
            raise ConnectError(f"nobody listens on msgq://{address}")
        return listener.accept(deserialize, connection_args.get("max_message_size"))


class PipeBackend(Backend):
    scheme: ClassVar[str] = "msgq"

    def __init__(self) -> None:
        self.listeners: dict[str, PipeListener] = {}

    def get_connector(self) -> Connector:
        return PipeConnector(self)

    def get_listener(
        self, loc: str, handle_comm: CommHandler, deserialize: bool, **connection_args: Any
    ) -> PipeListener:
        if "/" in loc:
            raise AddressError(f"msgq location {loc!r} may not contain '/'")
        return PipeListener(
            self, loc, handle_comm, deserialize, connection_args.get("max_message_size")
        )

    def get_address_host(self, loc: str) -> str:
        return "msgq"

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return ""
