"""comm-tls's own TLS transport: asyncio's transport interface over a non-blocking SSL socket.

asyncio's TLS layer (``sslproto``, and uvloop's) runs OpenSSL over memory
buffers: every byte received is copied from the socket into a buffer, from
there into OpenSSL, and every byte sent is encrypted into OpenSSL's buffer,
copied out as a new ``bytes`` and copied again when the socket cannot take it
all. With both ends of a large message on one core those copies cost as much
as the encryption itself. :class:`TLSTransport` lets OpenSSL talk to the
socket directly (:class:`ssl.SSLSocket` in non-blocking mode, driven by
``loop.add_reader`` / ``loop.add_writer``):

* reading decrypts straight into the buffer the protocol's ``get_buffer()``
  returns (a message's out-of-band frame, for a large one);
* writing encrypts straight from the caller's buffer (kept, not copied, while
  queued) into OpenSSL's record buffer, which goes to the kernel.

OpenSSL's rules for non-blocking sockets shape the code: a write that could
not finish (``SSLWantWriteError``) must be retried with the same bytes; a
write may need the socket to be readable first, and a read writable
(``SSLWantReadError`` / ``SSLWantWriteError`` from the other direction, during
TLS 1.3 post-handshake messages); and data OpenSSL already decrypted
(``pending()``) does not make the socket readable again.

:func:`handshake` runs the TLS handshake of a wrapped socket on the event
loop. :func:`available` says whether a loop can run this transport (it needs
``add_reader``; the Windows proactor loop has none) and whether it is turned
on (``COMM_TLS_TRANSPORT=asyncio`` in the environment, or
``TLSConnector.use_ssl_socket = False``, selects asyncio's TLS instead).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from typing import Any

from comm_core.transport import StreamTransportBase

__all__ = ["TLSTransport", "available", "handshake", "wait_readable"]

logger = logging.getLogger("comm_tls")

#: The environment variable that selects asyncio's TLS layer (``asyncio``) instead of ours.
ENV = "COMM_TLS_TRANSPORT"

#: The largest TLS record's payload: a read that returns less ended a burst.
_RECORD = 16 * 1024
#: The most bytes asked of OpenSSL in one read (it returns a record at most anyway).
_READ_MAX = 1024 * 1024
#: Bytes handed to OpenSSL in one write: one call encrypts and sends this many.
_WRITE_SLICE = 1024 * 1024
#: Bytes read, or written, per readiness callback before other callbacks get a turn.
_BUDGET = 4 * 1024 * 1024
#: Buffers smaller than this are joined before encryption (one record, one system call),
#: and copied if mutable (comm's rule: only buffers of 64 KiB or more are sent from the
#: caller's memory).
_SMALL = 64 * 1024
#: TCP_CORK (Linux): hold partial segments while a large write is handed to the kernel.
_CORK: int | None = getattr(socket, "TCP_CORK", None)
#: Seconds close() waits for the peer's close_notify before closing the socket anyway.
SHUTDOWN_TIMEOUT = 10.0


def available(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether *loop* can run :class:`TLSTransport` and it is not turned off."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return False
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return not (proactor is not None and isinstance(loop, proactor))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _wait(
    loop: asyncio.AbstractEventLoop, fd: int, writable: bool, deadline: float | None
) -> None:
    """Wait until *fd* is readable (writable); raise :class:`TimeoutError` at *deadline*."""
    future: asyncio.Future[None] = loop.create_future()
    timer = None
    if deadline is not None:
        timer = loop.call_at(deadline, _resolve, future)
    if writable:
        loop.add_writer(fd, _resolve, future)
    else:
        loop.add_reader(fd, _resolve, future)
    try:
        await future
    finally:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()
    if deadline is not None and loop.time() >= deadline:
        raise TimeoutError


async def wait_readable(sock: socket.socket, deadline: float | None) -> None:
    """Wait until *sock* has something to read (or its peer closed); :class:`TimeoutError`
    at *deadline* (the loop's clock)."""
    await _wait(asyncio.get_running_loop(), sock.fileno(), False, deadline)


async def handshake(sock: ssl.SSLSocket, deadline: float) -> None:
    """Run the TLS handshake of the non-blocking *sock* on the running loop.

    Raises:
        TimeoutError: the handshake was not done at *deadline* (the loop's clock).
        ssl.SSLError, OSError: as :meth:`ssl.SSLSocket.do_handshake`.
    """
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            writable = False
        except ssl.SSLWantWriteError:
            writable = True
        if loop.time() >= deadline:
            raise TimeoutError
        await _wait(loop, fd, writable, deadline)


class TLSTransport(StreamTransportBase[ssl.SSLSocket]):
    """An asyncio transport over a connected, handshaken, non-blocking :class:`ssl.SSLSocket`.

    It takes ownership of the socket. *extra* adds to the facts
    :meth:`get_extra_info` gives (``ssl_object`` is the socket itself, which
    answers what an :class:`ssl.SSLObject` does).

    ``close()`` sends what is queued, then TLS's close_notify, and waits up to
    :data:`SHUTDOWN_TIMEOUT` seconds for the peer's before closing the socket;
    ``abort()`` closes at once.
    """

    _logger = logger
    _what = "TLS transport"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: ssl.SSLSocket,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        # The session's facts go to the base as extra ones, which *extra* overrides.
        info: dict[str, Any] = {
            "ssl_object": sock,
            "sslcontext": sock.context,
            "peercert": sock.getpeercert(),
            "cipher": sock.cipher(),
            "compression": sock.compression(),
            # What the socket forgets once closed, for comms that report it later.
            "tls_version": sock.version(),
            "session_reused": bool(sock.session_reused),
        }
        try:
            info["sockname"] = sock.getsockname()
        except OSError:
            info["sockname"] = None
        try:
            info["peername"] = sock.getpeername()
        except OSError:
            info["peername"] = None
        info.update(extra or {})
        super().__init__(loop, sock, protocol, info)
        self._queue: collections.deque[memoryview] = collections.deque()
        self._reading = True  # not paused by the protocol
        self._reader = False  # our callback is registered with the loop
        self._read_wants_write = False  # a read waits for the socket to be writable
        self._write_wants_read = False  # a write waits for the socket to be readable
        self._retrying = False  # the head of the queue must go to OpenSSL again as it is
        self._shutting_down = False  # sending / awaiting close_notify
        self._shutdown_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Connect the protocol (``connection_made()``, now) and start reading."""
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "connection_made() failed")
            return
        if self._lost:
            return
        self._update_reader()
        if self._reading and self._sock is not None and self._sock.pending():
            self._do_read()  # the handshake's last read brought application data too

    # -- registration -----------------------------------------------------------------------

    def _update_reader(self) -> None:
        want = not self._lost and (
            self._write_wants_read
            or self._shutting_down
            or (self._reading and not self._closing and not self._read_wants_write)
        )
        if want and not self._reader:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader = True
        elif not want and self._reader:
            self._loop.remove_reader(self._fd)
            self._reader = False

    def _read_ready(self) -> None:
        if not (self._write_wants_read or self._shutting_down):
            if self._reading and not self._closing:
                self._do_read()  # which updates the registration if anything changes
            return
        if self._write_wants_read:
            self._write_wants_read = False
            self._do_write()
        if self._shutting_down:
            self._do_shutdown()
        elif self._reading and not self._closing:
            self._do_read()
        self._update_reader()

    def _write_ready(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            if self._shutting_down:
                self._do_shutdown()
            elif self._reading and not self._closing:
                self._do_read()
            self._update_reader()
        if self._queue and not self._write_wants_read:
            self._do_write()
        else:
            self._update_writer(self._read_wants_write)

    # -- reading ----------------------------------------------------------------------------

    def _do_read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if not self._buffered:
            self._do_read_plain(sock)
            return
        protocol: Any = self._protocol
        budget = _BUDGET
        while True:
            try:
                view = memoryview(protocol.get_buffer(-1)).cast("B")
                size = view.nbytes
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "get_buffer() failed")
                return
            filled = 0
            more = True
            eof = False
            error: BaseException | None = None
            while filled < size:
                asked = min(size - filled, _READ_MAX)
                try:
                    n = sock.recv_into(view[filled:] if filled else view, asked)
                except ssl.SSLWantReadError:
                    more = False
                    break
                except ssl.SSLWantWriteError:
                    self._read_wants_write = True  # _write_ready() reads again
                    self._update_writer(True)
                    self._update_reader()
                    more = False
                    break
                except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                    error = exc
                    break
                if n == 0:
                    eof = True
                    break
                filled += n
                if n < asked and n < _RECORD:
                    # OpenSSL returned a whole record (it returns less than asked only at
                    # a record's end, and reads no further), and a short one: the burst
                    # most likely ended.
                    more = False
                    break
            del view
            if filled:
                try:
                    protocol.buffer_updated(filled)
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal(exc, "buffer_updated() failed")
                    return
            if error is not None:
                self._fatal(error, "reading failed")
                return
            if eof:
                self._eof()
                return
            budget -= filled
            if not more or budget <= 0 or not self._reading or self._closing:
                if more and self._reading and not self._closing and sock.pending():
                    # Decrypted bytes do not make the socket readable: come back for them.
                    self._loop.call_soon(self._resume_pending)
                return

    def _do_read_plain(self, sock: ssl.SSLSocket) -> None:
        protocol: Any = self._protocol
        budget = _BUDGET
        while self._reading and not self._closing and budget > 0:
            try:
                data = sock.recv(256 * 1024)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._update_writer(True)
                self._update_reader()
                return
            except (OSError, ValueError) as exc:
                self._fatal(exc, "reading failed")
                return
            if not data:
                self._eof()
                return
            budget -= len(data)
            try:
                protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "data_received() failed")
                return
            if len(data) < _RECORD and not sock.pending():
                return

    def _resume_pending(self) -> None:
        if self._reading and not self._closing and self._sock is not None:
            self._do_read()
            self._update_reader()

    def _eof(self) -> None:
        """The peer closed (its close_notify, or the connection without one)."""
        self._reading = False
        self._update_reader()
        try:
            self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "eof_received() failed")
            return
        # TLS has no half-close: our side ends too, once what is queued has gone.
        self.close()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if self._reading or self._closing:
            return
        self._reading = True
        self._update_reader()
        if self._sock is not None and self._sock.pending():
            self._loop.call_soon(self._resume_pending)

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: Any) -> None:
        if self._closing:
            return
        sock = self._sock
        if (
            type(data) is bytes
            and sock is not None
            and not self._queue
            and not self._writer
            and not self._write_wants_read
            and 0 < len(data) <= _WRITE_SLICE
        ):
            # Nothing waits: hand it to OpenSSL now (the common case of a small message).
            try:
                sent = sock.send(data)
            except (OSError, ValueError) as exc:
                self._queue.append(memoryview(data))
                self._queued += len(data)
                self._send_failed(exc)
                self._maybe_pause()
                return
            if sent >= len(data):
                return
            data = memoryview(data)[sent:]
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        size = view.nbytes
        if not size:
            return
        if size < _SMALL and view.readonly is False:
            view = memoryview(bytes(view))  # the caller may reuse a small buffer at once
        self._queue.append(view)
        self._queued += size
        if not self._writer and not self._write_wants_read:
            self._do_write()
        self._maybe_pause()

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        small: list[Any] = []
        for data in list_of_data:
            if memoryview(data).nbytes < _SMALL:
                small.append(data)
                continue
            if small:
                self.write(b"".join(small))
                small = []
            self.write(data)
        if small:
            self.write(b"".join(small))

    def _do_write(self) -> None:
        sock = self._sock
        queue = self._queue
        if sock is None or not queue:
            return
        if _CORK is None or queue[0].nbytes < _SMALL:
            self._write_queue(sock)
            return
        # OpenSSL writes each record (16 KiB) apart: corked, the kernel sends them in
        # full-sized segments instead, which costs both ends far less per byte. The
        # cork comes off before returning, so nothing waits for the kernel's timer.
        self._set_cork(sock, 1)
        try:
            self._write_queue(sock)
        finally:
            if self._sock is not None:
                self._set_cork(sock, 0)

    @staticmethod
    def _set_cork(sock: ssl.SSLSocket, value: int) -> None:
        assert _CORK is not None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, value)

    def _write_queue(self, sock: ssl.SSLSocket) -> None:
        queue = self._queue
        budget = _BUDGET
        while queue:
            head = queue[0]
            if (
                not self._retrying
                and head.nbytes < _SMALL
                and len(queue) > 1
                and queue[1].nbytes < _SMALL
            ):
                head = self._join_small()
            chunk = head if head.nbytes <= _WRITE_SLICE else head[:_WRITE_SLICE]
            try:
                # OpenSSL sends all of chunk, or raises "want write" (or "want read") and
                # must be called again with the same bytes: chunk is recomputed from the
                # same head, which is not joined with others meanwhile.
                sent = sock.send(chunk)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                self._send_failed(exc)
                return
            self._retrying = False
            self._queued -= sent
            if sent >= head.nbytes:
                queue.popleft()
            else:
                queue[0] = head[sent:]
            budget -= sent
            if budget <= 0 and queue:
                self._update_writer(True)  # more at the next loop iteration
                self._maybe_resume()
                return
        self._update_writer(self._read_wants_write)
        self._maybe_resume()
        if self._closing and not self._shutting_down and not self._lost:
            self._start_shutdown()

    def _send_failed(self, exc: BaseException) -> None:
        """OpenSSL did not take the head of the queue: wait for what it needs, or end."""
        if isinstance(exc, ssl.SSLWantWriteError):
            self._retrying = True
            self._update_writer(True)
        elif isinstance(exc, ssl.SSLWantReadError):
            self._retrying = True
            self._write_wants_read = True
            self._update_writer(self._read_wants_write)
            self._update_reader()
        elif isinstance(exc, ssl.SSLZeroReturnError):
            # The peer sent its close_notify (we read it): it reads no more, so what is
            # queued is dropped, and our side ends too.
            self._retrying = False
            self._queue.clear()
            self._queued = 0
            self._maybe_resume()
            self._closing = True
            self._update_writer(self._read_wants_write)
            self._update_reader()
            if not self._shutting_down:
                self._start_shutdown()
        else:
            self._fatal(exc, "writing failed")

    def _join_small(self) -> memoryview:
        """Join the small buffers at the head of the queue into one (one record, one send)."""
        queue = self._queue
        parts: list[memoryview] = []
        total = 0
        while queue and queue[0].nbytes < _SMALL and total < _SMALL:
            part = queue.popleft()
            parts.append(part)
            total += part.nbytes
        joined = memoryview(b"".join(parts))
        queue.appendleft(joined)
        return joined

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS cannot half-close a connection")

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Send what is queued, then close_notify; close once the peer answers (or soon)."""
        if self._closing:
            return
        self._closing = True
        self._update_reader()
        if not self._queue and not self._write_wants_read:
            self._start_shutdown()

    def _start_shutdown(self) -> None:
        self._shutting_down = True
        self._shutdown_timer = self._loop.call_later(SHUTDOWN_TIMEOUT, self.abort)
        self._do_shutdown()

    def _do_shutdown(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.unwrap()  # close_notify, then the peer's
        except ssl.SSLWantReadError:
            self._update_writer(False)
            self._update_reader()  # the peer's close_notify, or its EOF
            return
        except ssl.SSLWantWriteError:
            self._read_wants_write = True  # _write_ready() calls back here
            self._update_writer(True)
            return
        except (OSError, ValueError):
            pass  # the peer is gone (or said something else): nothing more to wait for
        self._finish(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._shutting_down = False
        if self._shutdown_timer is not None:
            self._shutdown_timer.cancel()
            self._shutdown_timer = None
        self._update_reader()
        self._update_writer(False)
        self._queue.clear()
        self._release(exc)
