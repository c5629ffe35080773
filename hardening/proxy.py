"""A fault-injecting TCP proxy on the loopback, for the hardening suite.

:class:`FaultProxy` listens on ``127.0.0.1`` (port 0) and forwards each
connection it accepts to a target. Every connection starts as a plain
pass-through; a test then picks the fault of one direction with
:meth:`Link.inject`:

``cut``      forward *after* more bytes, then close both sides (FIN): a cut in the
             middle of a frame when *after* lands inside one.
``reset``    forward *after* more bytes, then reset both sides (RST, ``SO_LINGER`` 0).
``stall``    forward *after* more bytes, then stop forwarding and stop reading,
             keeping both sockets open: the proxy's kernel still acknowledges
             what it buffers, so neither end sees the connection die.
``throttle`` forward at most *rate* bytes per second from now on.

Each fault sets :attr:`Link.triggered` (an event) when it takes effect, so a
test waits on it instead of sleeping. Byte counters tell what went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = ["Direction", "FaultProxy", "Link", "Pipe"]

Direction = Literal["up", "down"]  # up: client -> target; down: target -> client
_CHUNK = 64 * 1024


@dataclass
class _Fault:
    kind: str
    after: int = 0
    rate: float = 0.0


class Pipe:
    """One direction of a proxied connection."""

    def __init__(self, link: Link, name: Direction) -> None:
        self.link = link
        self.name = name
        #: Bytes forwarded so far.
        self.forwarded = 0
        self.fault: _Fault | None = None

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                fault = self.fault
                if fault is not None and fault.kind != "throttle" and fault.after <= 0:
                    await self.link.trigger(fault)
                    return
                size = _CHUNK
                if fault is not None and fault.kind == "throttle":
                    size = max(1, min(size, int(fault.rate / 20)))  # 20 slices per second
                data = await reader.read(size)
                if not data:  # EOF: pass it on (half-close), keep the other direction going
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                fault = self.fault  # injected while the read waited, perhaps
                if fault is not None and fault.kind != "throttle":
                    data = data[: max(fault.after, 0)]
                    fault.after -= len(data)
                if data:
                    writer.write(data)
                    await writer.drain()
                    self.forwarded += len(data)
                if fault is not None and fault.kind == "throttle":
                    self.link.fire()
                    # The throttle itself: hold each slice for its share of a second.
                    await asyncio.sleep(len(data) / fault.rate)
        except (ConnectionError, OSError):
            self.link.close(reset=True)


class Link:
    """One proxied connection: a client's socket and the proxy's socket to the target."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client = client
        self.target = target
        self.up = Pipe(self, "up")
        self.down = Pipe(self, "down")
        #: Set when a fault takes effect.
        self.triggered = asyncio.Event()
        #: Set once both sockets are closed.
        self.closed = asyncio.Event()
        #: The event loop's time when the fault took effect.
        self.triggered_at: float | None = None
        self.stalled = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.up.run(self.client[0], self.target[1])),
            loop.create_task(self.down.run(self.target[0], self.client[1])),
        ]

    async def wait(self) -> None:
        """Return once both directions ended (or the link was stalled and then closed)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def inject(
        self, kind: str, direction: Direction = "up", *, after: int = 0, rate: float = 0.0
    ) -> None:
        """Make *direction* fail with *kind* (``cut``, ``reset``, ``stall``, ``throttle``)."""
        if kind not in {"cut", "reset", "stall", "throttle"}:
            raise ValueError(f"unknown fault {kind!r}")
        if kind == "throttle" and rate <= 0:
            raise ValueError("a throttle needs a positive rate in bytes per second")
        pipe = self.up if direction == "up" else self.down
        pipe.fault = _Fault(kind, after, rate)

    def fire(self) -> None:
        """Note that the fault took effect."""
        if self.triggered_at is None:
            self.triggered_at = asyncio.get_running_loop().time()
        self.triggered.set()

    async def trigger(self, fault: _Fault | None) -> None:
        assert fault is not None
        if fault.kind == "stall":
            self.stalled = True
            self.fire()
            # Stop both directions: nothing more is read from either socket, so the
            # proxy's receive buffers fill and the windows close.
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            return
        self.fire()
        self.close(reset=fault.kind == "reset")

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets (with RST if *reset*), ending both directions."""
        for _, writer in (self.client, self.target):
            transport = writer.transport
            if transport.is_closing():
                continue
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                transport.abort()
            else:
                transport.close()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self.closed.set()


class FaultProxy:
    """A TCP proxy on ``127.0.0.1`` that forwards to *target_port* and injects faults.

    Use it as an async context manager; :meth:`accepted` returns the next
    :class:`Link`. Closing the proxy closes every link.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.links: list[Link] = []
        self._queue: asyncio.Queue[Link] = asyncio.Queue()
        self._server: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in self.links:
            link.close()
        for link in self.links:
            await link.wait()
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = Link((reader, writer), target)
        self.links.append(link)
        link.start()
        self._queue.put_nowait(link)
        # Keep the connection's task (asyncio.start_server's) alive as long as the link.
        waiting = asyncio.ensure_future(link.wait())
        self._pending.add(waiting)
        try:
            await waiting
        finally:
            self._pending.discard(waiting)

    async def accepted(self, timeout: float = 10.0) -> Link:
        """The next link the proxy accepted."""
        return await asyncio.wait_for(self._queue.get(), timeout)
