"""A comm over any asyncio stream transport, speaking :mod:`comm_core.protocol`.

:class:`StreamComm` is at once the :class:`~comm_core.Comm` users hold and the
:class:`asyncio.BufferedProtocol` the event loop feeds, so a message costs one
``recv_into`` and no intermediate copies. comm-tcp and comm-tls build on it,
and so can third-party stream transports (Unix sockets, pipes, ...)::

    comm = StreamComm(scheme="unix")
    await loop.create_unix_connection(lambda: comm, path)

Writes made during one event loop iteration go out together in one system
call; large buffers are sent without copying. ``write()`` waits while more
than ``write_high_water`` bytes are queued for the peer, and reading pauses
while more than ``read_high_water`` bytes of messages wait unread, so memory
stays bounded whatever the peer's speed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

from comm_core._addressing import unparse_address, unparse_host_port
from comm_core._config import get_setting
from comm_core.abc import Comm, OnError
from comm_core.exceptions import CommClosedError, ProtocolError
from comm_core.protocol import (
    PREAMBLE,
    FrameDecoder,
    SerializerFamily,
    decode_message,
    encode_message,
    serializer_families,
)

__all__ = ["StreamComm", "format_sockaddr"]

logger = logging.getLogger("comm_core.stream")

_WRITELINES_ZERO_COPY = sys.version_info >= (3, 12)
_CHUNK = 4 * 1024 * 1024  # large buffers are handed to the transport in slices this big
_LARGE = 1024 * 1024  # buffers at least this long are written apart from small ones


def format_sockaddr(scheme: str, sockaddr: Any) -> str:
    """Turn a socket address (``getsockname()`` form) into a comm URI."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return unparse_address(scheme, unparse_host_port(str(sockaddr[0]), int(sockaddr[1])))
    if isinstance(sockaddr, bytes):
        sockaddr = sockaddr.decode(errors="replace")
    return unparse_address(scheme, str(sockaddr or ""))


class StreamComm(Comm, asyncio.BufferedProtocol):
    """A comm that is also the buffered protocol of its transport.

    Args:
        scheme: the URI scheme used for :attr:`local_address` and :attr:`peer_address`.
        deserialize: deserialize custom payloads on read.
        max_message_size: the largest message sent or accepted; default: the
            ``max_message_size`` setting.
        write_high_water: ``write()`` waits while more bytes than this are queued.
        read_high_water: reading from the transport pauses while more bytes than
            this wait unread in the comm.
        on_established: called once the peer's preamble is valid (listeners use
            it to start the handshake only for real comm peers).
    """

    def __init__(
        self,
        *,
        scheme: str,
        deserialize: bool = True,
        max_message_size: int | None = None,
        write_high_water: int = 4 * 1024 * 1024,
        read_high_water: int = 64 * 1024 * 1024,
        on_established: Callable[[StreamComm], None] | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__(deserialize=deserialize)
        self.scheme = scheme
        if max_message_size is None:
            max_message_size = int(get_setting("max_message_size"))
        self.max_message_size = max_message_size
        self.write_high_water = write_high_water
        self.read_high_water = read_high_water
        self._on_established = on_established
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self._local = f"{scheme}://"
        self._peer = f"{scheme}://"
        self._decoder = FrameDecoder(
            self._on_message, max_message_size=max_message_size, peer=self._peer
        )
        self._established = False
        self._ready: deque[list[Any]] = deque()
        self._ready_bytes = 0
        self._reading_paused = False
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._out: list[Any] = []
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closing = False  # close() or abort() was called here
        self._peer_gone = False  # EOF or connection lost
        self._error: BaseException | None = None  # why the comm ended, if not by us
        self._lost: asyncio.Future[None] | None = None
        self._families_cache: list[SerializerFamily] | None = None

    # -- asyncio protocol callbacks ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._lost = self._loop.create_future()
        self._local = format_sockaddr(self.scheme, transport.get_extra_info("sockname"))
        self._peer = format_sockaddr(self.scheme, transport.get_extra_info("peername"))
        self._decoder.peer = self._peer
        transport.set_write_buffer_limits(high=self.write_high_water)
        transport.write(PREAMBLE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self._decoder.buffer_updated(nbytes)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if not self._established and not self._decoder.expecting_preamble:
            self._established = True
            if self._on_established is not None:
                self._on_established(self)

    def _on_message(self, frames: list[Any]) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(frames)
            return
        self._ready.append(frames)
        self._ready_bytes += sum(len(f) for f in frames)
        if self._ready_bytes > self.read_high_water and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._peer_gone = True
        self._wake_reader()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_gone = True
        if exc is not None and self._error is None and not self._closing:
            self._error = exc
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- errors and wake-ups -----------------------------------------------------------

    def _closed_error(self) -> CommClosedError:
        if self._closing:
            return CommClosedError(f"comm {self._local} -> {self._peer} was closed by this side")
        if isinstance(self._error, ProtocolError):
            return CommClosedError(f"comm with {self._peer} was closed: {self._error}")
        if self._error is not None:
            return CommClosedError(
                f"connection to {self._peer} was lost: {type(self._error).__name__}: {self._error}"
            )
        return CommClosedError(f"comm with {self._peer} was closed by the peer")

    def _wake_reader(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            error = self._error
            if isinstance(error, ProtocolError) and not self._closing:
                waiter.set_exception(error)
            else:
                exc = self._closed_error()
                if error is not None:
                    exc.__cause__ = error
                waiter.set_exception(exc)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            self._drain_waiter = None
            waiter.set_result(None)

    def _fail(self, exc: ProtocolError) -> None:
        if self._error is None:
            self._error = exc
        if not self._established:
            logger.warning("dropped a connection from %s: %s", self._peer, exc)
        else:
            logger.info("closing comm with %s: %s", self._peer, exc)
        if self.transport is not None:
            self.transport.abort()
        self._peer_gone = True
        self._wake_reader()

    # -- Comm ---------------------------------------------------------------------------

    @property
    def local_address(self) -> str:
        return self._local

    @property
    def peer_address(self) -> str:
        return self._peer

    @property
    def extra_info(self) -> Mapping[str, Any]:
        transport = self.transport
        if transport is None:
            return {}
        return {
            "sockname": transport.get_extra_info("sockname"),
            "peername": transport.get_extra_info("peername"),
            "max_message_size": self.max_message_size,
        }

    def closed(self) -> bool:
        return self._closing or self._peer_gone

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        if self._ready:
            frames = self._ready.popleft()
            if self._reading_paused:
                self._ready_bytes -= sum(len(f) for f in frames)
                if self._ready_bytes <= self.read_high_water // 2:
                    self._reading_paused = False
                    if self.transport is not None and not self._peer_gone:
                        self.transport.resume_reading()
            else:
                self._ready_bytes -= sum(len(f) for f in frames)
        else:
            if self._closing or self._peer_gone:
                if isinstance(self._error, ProtocolError) and not self._closing:
                    raise self._error
                raise self._closed_error() from self._error
            if self._waiter is not None:
                raise RuntimeError(f"{self!r}: read() called while another read() is waiting")
            assert self._loop is not None
            waiter = self._waiter = self._loop.create_future()
            try:
                frames = await waiter
            except asyncio.CancelledError:
                self.abort()
                raise
        try:
            return decode_message(frames, accept=deserializers, deserialize=self.deserialize)
        except ProtocolError as exc:
            self._error = exc
            self.abort()
            raise

    def _families(self, serializers: Collection[str] | None) -> list[SerializerFamily]:
        if serializers is None:
            cache = self._families_cache
            if cache is None:
                cache = self._families_cache = [
                    f for f in serializer_families().values() if f.trusted_by_default
                ]
            return cache
        known = serializer_families()
        return [known[name] for name in serializers if name in known]

    async def write(
        self,
        msg: Any,
        serializers: Collection[str] | None = None,
        on_error: OnError = "raise",
    ) -> int:
        if self._closing or self._peer_gone:
            raise self._closed_error() from self._error
        buffers, nbytes = encode_message(
            msg,
            families=self._families(serializers),
            on_error=on_error,
            max_size=self.max_message_size,
        )
        try:
            if len(buffers) == 1:
                self._out.append(buffers[0])
                self._out_size += nbytes
                if self._flush_handle is None:
                    assert self._loop is not None
                    self._flush_handle = self._loop.call_soon(self._flush)
                if self._out_size >= self.write_high_water:
                    self._flush()
            else:
                await self._write_buffers(buffers)
            if self._write_paused:
                await self._drain()
        except asyncio.CancelledError:
            self.abort()
            raise
        return nbytes

    def _flush(self) -> None:
        self._flush_handle = None
        out = self._out
        if not out or self.transport is None:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        elif _WRITELINES_ZERO_COPY:
            self.transport.writelines(out)
        else:
            self.transport.write(b"".join(out))
        self._out = []
        self._out_size = 0

    async def _write_buffers(self, buffers: list[Any]) -> None:
        """Write a message with out-of-band frames, large ones without copying."""
        transport = self.transport
        assert transport is not None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._out.append(buffers[0])
        for buf in buffers[1:]:
            view = memoryview(buf).cast("B") if type(buf) is memoryview else buf
            size = len(view)
            if size < _LARGE:
                self._out.append(view)
                continue
            self._flush()
            if _WRITELINES_ZERO_COPY:
                transport.write(view)
                if self._write_paused:
                    await self._drain()
                continue
            view = memoryview(view)
            for offset in range(0, size, _CHUNK):
                transport.write(view[offset : offset + _CHUNK])
                if self._write_paused:
                    await self._drain()
        self._flush()

    async def _drain(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        while self._write_paused:
            if self._closing or self._peer_gone:
                raise self._closed_error() from self._error
            assert self._loop is not None
            waiter = self._drain_waiter = self._loop.create_future()
            await waiter
        if self._peer_gone and not self._closing:
            raise self._closed_error() from self._error

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        transport = self.transport
        if transport is None:
            return
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        if not self._peer_gone:
            self._flush()
        transport.close()
        self._wake_reader()
        self._wake_writer()
        lost = self._lost
        if lost is not None and not lost.done():
            try:
                await asyncio.wait_for(asyncio.shield(lost), timeout=5.0)
            except (asyncio.TimeoutError, TimeoutError):
                transport.abort()
            except asyncio.CancelledError:
                transport.abort()
                raise

    def abort(self) -> None:
        self._closing = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        transport = self.transport
        if transport is not None:
            transport.abort()
        self._wake_reader()
        self._wake_writer()

    def set_nodelay(self) -> None:
        """Turn Nagle's algorithm off on a TCP socket (no-op for others)."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
