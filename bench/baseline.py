"""The hand-written asyncio baseline: length-prefixed msgpack over a buffered protocol.

What a careful developer would write in an afternoon, as a yardstick. Each
message is a u64 little-endian length, then that many bytes of msgpack. There
is no handshake, no out-of-band framing (large ``bytes`` are copied into the
msgpack body and out of it) and no read-side backpressure.

Messages up to the receive buffer's size are parsed in place; longer ones are
received straight into a buffer of their own. A read that finds no message
waits on a fresh future.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

import msgpack

__all__ = ["BaselineConnection", "ConnectionClosed", "connect", "listen"]

_HEADER = struct.Struct("<Q")
_BUFFER_SIZE = 64 * 1024
_SEPARATE_WRITE = 64 * 1024  # bodies this long are written apart from their header

Handler = Callable[["BaselineConnection"], Coroutine[Any, Any, None]]


class ConnectionClosed(ConnectionError):
    """The connection is closed, by this side or the peer."""


class BaselineConnection(asyncio.BufferedProtocol):
    """One end of a connection; also the protocol of its transport."""

    def __init__(self, handler: Handler | None = None) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Receiving: small messages are parsed in _buffer[_start:_end].
        self._buffer = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        # A message too long for _buffer is received into a buffer of its own.
        self._large: bytearray | None = None
        self._large_view: memoryview | None = None
        self._large_filled = 0
        self._messages: deque[Any] = deque()
        self._reader: asyncio.Future[Any] | None = None
        # Sending.
        self._paused = False
        self._drainer: asyncio.Future[None] | None = None
        self._closed = False
        self._lost: asyncio.Future[None] = self._loop.create_future()

    # -- protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not isinstance(): uvloop's transports are not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)
        if self._handler is not None:
            task = self._loop.create_task(self._handler(self))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._large_view is not None:
            return self._large_view[self._large_filled :]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == len(self._large):
                body = self._large
                self._large = self._large_view = None
                self._deliver(msgpack.unpackb(body))
            return
        self._end += nbytes
        self._parse()

    def _parse(self) -> None:
        buf, view = self._buffer, self._view
        start, end = self._start, self._end
        while end - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buf, start)
            body = start + _HEADER.size
            if end - body >= size:
                self._deliver(msgpack.unpackb(view[body : body + size]))
                start = body + size
                continue
            if _HEADER.size + size > len(buf):  # too long for the buffer
                large = self._large = bytearray(size)
                self._large_view = memoryview(large)
                self._large_filled = end - body
                large[: end - body] = view[body:end]
                start = end
            break
        if start == end:
            start = end = 0
        elif len(buf) - end < _BUFFER_SIZE // 4:  # make room: move the partial message down
            buf[: end - start] = view[start:end]
            start, end = 0, end - start
        self._start, self._end = start, end

    def _deliver(self, msg: Any) -> None:
        reader = self._reader
        if reader is not None:
            self._reader = None
            if not reader.done():
                reader.set_result(msg)
                return
        self._messages.append(msg)

    def eof_received(self) -> bool:
        self._wake(ConnectionClosed("the peer closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._lost.done():
            self._lost.set_result(None)
        self._wake(ConnectionClosed(f"connection lost: {exc}" if exc else "connection closed"))
        self._paused = False
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    def _wake(self, exc: BaseException) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.set_exception(exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drainer, self._drainer = self._drainer, None
        if drainer is not None and not drainer.done():
            drainer.set_result(None)

    # -- the connection's API --------------------------------------------------------

    async def read(self) -> Any:
        """Return the next message; raise :class:`ConnectionClosed` once none can come."""
        if self._messages:
            return self._messages.popleft()
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise ConnectionClosed("the connection is closed")
        reader = self._reader = self._loop.create_future()
        return await reader

    async def write(self, msg: Any) -> None:
        """Send *msg*; wait while the transport's buffer is above its high-water mark."""
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise ConnectionClosed("the connection is closed")
        body = msgpack.packb(msg, use_bin_type=True)
        if len(body) < _SEPARATE_WRITE:
            transport.write(_HEADER.pack(len(body)) + body)
        else:
            transport.write(_HEADER.pack(len(body)))
            transport.write(body)
        if self._paused:
            drainer = self._drainer = self._loop.create_future()
            await drainer
            if self._closed:
                raise ConnectionClosed("the connection was lost while writing")

    async def close(self) -> None:
        """Close after sending what is buffered; wait for the transport to finish."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
        if transport is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), 5.0)
            except asyncio.TimeoutError:
                transport.abort()


def _host_port(address: str) -> tuple[str, int]:
    """``("127.0.0.1", 8786)`` from ``"tcp://127.0.0.1:8786"``."""
    loc = address.split("://", 1)[-1]
    host, _, port = loc.rpartition(":")
    return host.strip("[]"), int(port or 0)


def _ssl(address: str, *, server_side: bool) -> ssl.SSLContext | None:
    """The run's TLS context for a ``tls://`` *address*; ``None`` for ``tcp://``."""
    if not address.startswith("tls://"):
        return None
    from bench import tls

    server, client = tls.baseline_contexts()
    return server if server_side else client


async def listen(address: str, handler: Handler) -> tuple[asyncio.Server, str]:
    """Serve *handler* on *address* (``tcp://`` or ``tls://host:port``).

    Returns the server and its contact address.
    """
    host, port = _host_port(address)
    loop = asyncio.get_running_loop()
    context = _ssl(address, server_side=True)
    server = await loop.create_server(lambda: BaselineConnection(handler), host, port, ssl=context)
    sock_host, sock_port = server.sockets[0].getsockname()[:2]
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    return server, f"{scheme}://{sock_host}:{sock_port}"


async def connect(address: str) -> BaselineConnection:
    """Connect to a :func:`listen` server at *address*."""
    host, port = _host_port(address)
    loop = asyncio.get_running_loop()
    context = _ssl(address, server_side=False)
    _, conn = await loop.create_connection(BaselineConnection, host, port, ssl=context)
    return conn
