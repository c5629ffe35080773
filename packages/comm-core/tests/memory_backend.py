"""A minimal but real in-memory backend, scheme ``memory``, for comm-core's own tests.

comm-core ships no transport and its tests run without one installed, so this
module provides a small one: each comm is a pair of asyncio queues, listeners
are found by name in the backend instance. It is registered in code (never
through an entry point) by the ``memory`` fixture of ``conftest.py``.

Test hooks:

* ``MemoryBackend.connect_hook``: called (with the location) before every
  connection attempt; it may raise to make the attempt fail. ``attempts``
  counts the attempts.
* ``listen(..., accept="silent")``: the listener accepts connections but never
  calls the handler, so the client's handshake is never answered.
  ``accept="close"``: the listener closes each new comm at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from comm_core import (
    AddressError,
    Backend,
    Capability,
    Comm,
    CommClosedError,
    CommHandler,
    ConnectError,
    Connector,
    Listener,
)

_EOF = object()
_names = itertools.count(1)


class _Channel:
    """One direction of a memory comm: a queue and whether its writer is gone."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(_EOF)


class MemoryComm(Comm):
    """One end of a memory connection. The two ends share no reference to each other."""

    def __init__(
        self,
        local_address: str,
        peer_address: str,
        inbox: _Channel,
        outbox: _Channel,
        *,
        deserialize: bool = True,
    ) -> None:
        super().__init__(deserialize=deserialize)
        self._local_address = local_address
        self._peer_address = peer_address
        self._inbox = inbox
        self._outbox = outbox
        self._closed = False

    @classmethod
    def pair(
        cls, a_address: str, b_address: str, *, deserialize: bool = True
    ) -> tuple[MemoryComm, MemoryComm]:
        a_to_b, b_to_a = _Channel(), _Channel()
        a = cls(a_address, b_address, b_to_a, a_to_b, deserialize=deserialize)
        b = cls(b_address, a_address, a_to_b, b_to_a, deserialize=deserialize)
        return a, b

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        if self._closed:
            raise CommClosedError(f"{self!r}: read on a closed comm")
        msg = await self._inbox.queue.get()
        if msg is _EOF:
            self.abort()
            raise CommClosedError(f"{self!r}: the peer closed the comm")
        return msg

    async def write(
        self, msg: Any, serializers: Collection[str] | None = None, on_error: Any = "raise"
    ) -> int:
        if self._closed:
            raise CommClosedError(f"{self!r}: write on a closed comm")
        if self._inbox.closed:  # the peer closed its end
            self.abort()
            raise CommClosedError(f"{self!r}: the peer closed the comm")
        self._outbox.queue.put_nowait(msg)
        return 0

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._outbox.close()  # the peer reads what was sent, then the end
        self._inbox.close()  # wakes a read of our own that is pending

    def closed(self) -> bool:
        return self._closed

    @property
    def local_address(self) -> str:
        return self._local_address

    @property
    def peer_address(self) -> str:
        return self._peer_address


class MemoryListener(Listener):
    def __init__(
        self,
        backend: MemoryBackend,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        accept: str,
    ) -> None:
        if accept not in ("handshake", "silent", "close"):
            raise ValueError(f"unknown accept mode {accept!r}")
        self._backend = backend
        self._loc = loc
        self._handle_comm = handle_comm
        self._deserialize = deserialize
        self._accept_mode = accept
        self._name: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._silent: list[MemoryComm] = []
        #: How many comms this listener accepted.
        self.accepted = 0

    async def start(self) -> None:
        if self._name is not None:
            return
        name = self._loc or f"listener-{next(_names)}"
        if name in self._backend.listeners:
            raise ConnectError(f"{self._backend.scheme}://{name} is already in use")
        self._backend.listeners[name] = self
        self._name = name

    def stop(self) -> None:
        if self._name is not None and self._backend.listeners.get(self._name) is self:
            del self._backend.listeners[self._name]
        for comm in self._silent:
            comm.abort()
        super().stop()

    @property
    def listen_address(self) -> str:
        if self._name is None:
            raise RuntimeError("the listener is not started")
        return f"{self._backend.scheme}://{self._name}"

    @property
    def contact_address(self) -> str:
        return self.listen_address

    def accept(self, client_name: str, deserialize: bool) -> MemoryComm:
        self.accepted += 1
        server, client = MemoryComm.pair(
            self.listen_address,
            f"{self._backend.scheme}://{client_name}",
            deserialize=self._deserialize,
        )
        client.deserialize = deserialize
        if self._accept_mode == "silent":
            self._silent.append(server)
        elif self._accept_mode == "close":
            server.abort()
        else:
            task = asyncio.get_running_loop().create_task(self._handle_comm(server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return client

    async def join(self, timeout: float = 5.0) -> None:
        """Wait until every handler task this listener started has finished.

        Raises:
            AssertionError: a handler task is still running after *timeout* seconds.
        """
        while self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in done:
                task.result()
            if pending:
                raise AssertionError(f"{len(pending)} handler task(s) still running")


class MemoryConnector(Connector):
    def __init__(self, backend: MemoryBackend) -> None:
        self._backend = backend

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        backend = self._backend
        backend.attempts += 1
        if backend.connect_hook is not None:
            backend.connect_hook(address)
        await asyncio.sleep(0)  # a real transport yields while connecting
        listener = backend.listeners.get(address)
        if listener is None:
            raise ConnectError(f"nobody listens on {backend.scheme}://{address}")
        return listener.accept(f"client-{next(_names)}", deserialize)


class MemoryBackend(Backend):
    """An unencrypted backend: it declares no capability."""

    scheme: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.listeners: dict[str, MemoryListener] = {}
        self.attempts = 0
        self.connect_hook: Callable[[str], None] | None = None
        self._connector = MemoryConnector(self)

    def get_connector(self) -> Connector:
        return self._connector

    def get_listener(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        *,
        accept: str = "handshake",
        **connection_args: Any,
    ) -> MemoryListener:
        if "/" in loc:
            raise AddressError(f"memory location {loc!r} may not contain '/'")
        return MemoryListener(self, loc, handle_comm, deserialize, accept)

    def get_address_host(self, loc: str) -> str:
        return "memory"

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        return ""


class InProcessMemoryBackend(MemoryBackend):
    scheme: ClassVar[str] = "memory-local"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.IN_PROCESS})


class EncryptedMemoryBackend(MemoryBackend):
    scheme: ClassVar[str] = "memory-secret"
    capabilities: ClassVar[frozenset[str]] = frozenset({Capability.ENCRYPTED})
