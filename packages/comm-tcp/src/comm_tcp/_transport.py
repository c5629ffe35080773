"""comm-tcp's own socket transport: asyncio's transport interface over a non-blocking socket.

asyncio's selector transport (``_SelectorSocketTransport``) is general and
pays for it on every connection and every large message: it wraps the
socket, registers its reader and calls ``connection_made()`` through
callbacks on later loop iterations, and before Python 3.12 copies whatever
the kernel did not take at once into a buffer of its own. :class:`SocketTransport`
does what a comm needs with less:

* ``connection_made()`` runs in :meth:`~SocketTransport.start`, at once, so a
  dialled or accepted connection is ready without another loop iteration;
* reading receives straight into the buffer the protocol's ``get_buffer()``
  returns (a message's out-of-band frame, for a large one), and reads again
  while the buffer filled up, so that a burst takes one readiness callback;
* writing sends from the caller's memory: a large buffer the kernel does not
  take at once is queued by reference, and ``writelines()`` and the queue go
  out with scatter-gather ``sendmsg`` on every Python version; small buffers
  are gathered into one (copied, since their owners may reuse them), so that
  a burst of small messages costs one system call, not one per message.

It runs on any event loop with ``add_reader`` / ``add_writer`` and a socket
module with ``sendmsg``; comm-tcp uses it on asyncio's selector loops (see
``comm_tcp._direct.transport_factory``), unless ``COMM_TCP_TRANSPORT=asyncio``
in the environment selects asyncio's own transport.

It is built on comm-core's :class:`~comm_core.transport.StreamTransportBase`,
as comm-tls's transport over an SSL socket is: flow control, the protocol's
callbacks around the connection's end, and the facts of ``get_extra_info()``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

from comm_core.transport import StreamTransportBase

__all__ = ["ENV", "SocketTransport", "StreamTransportBase", "available"]

logger = logging.getLogger("comm_tcp")

#: The environment variable that selects asyncio's transport (``asyncio``) instead of ours.
ENV = "COMM_TCP_TRANSPORT"

#: Bytes read, or written, per readiness callback before other callbacks get a turn.
_BUDGET = 4 * 1024 * 1024
#: Buffers shorter than this are copied when queued, into one buffer with the small ones
#: queued before them (comm's rule: only buffers of 64 KiB or more are sent from the
#: caller's memory after write() returns), and joined in writelines().
_SMALL = 64 * 1024
#: The most bytes the queue's last buffer collects from small writes.
_TAIL_MAX = 256 * 1024
#: The most buffers handed to one sendmsg() call (Linux's IOV_MAX is 1024).
_MAX_IOV = 512


def available() -> bool:
    """Whether this platform can run :class:`SocketTransport` and it is not turned off."""
    if os.environ.get(ENV, "").strip().lower() == "asyncio":
        return False
    return hasattr(socket.socket, "sendmsg")


def _nbytes(data: Any) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


def _flat(data: Any) -> Any:
    """*data* as a queue keeps a large buffer: ``bytes`` as they are, else a byte view."""
    if type(data) is bytes:
        return data
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _gathered(buffers: list[Any]) -> list[Any]:
    """*buffers* with each run of small ones joined into one (one copy, one iovec)."""
    if len(buffers) <= 1:
        return buffers
    try:
        if max(map(len, buffers)) < _SMALL:  # the common case: small messages only
            return [b"".join(buffers)]
    except TypeError:  # a buffer without len(): sized below
        pass
    out: list[Any] = []
    run: list[Any] = []
    for data in buffers:
        if _nbytes(data) < _SMALL:
            run.append(data)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else b"".join(run))
            run = []
        out.append(data)
    if run:
        out.append(run[0] if len(run) == 1 else b"".join(run))
    return out


class SocketTransport(StreamTransportBase[socket.socket]):
    """An asyncio transport over a connected, non-blocking stream socket.

    It takes ownership of *sock*. *extra* adds to the facts
    :meth:`get_extra_info` gives (``socket``, ``sockname``, ``peername``).
    Call :meth:`start` to connect the protocol.

    ``close()`` sends what is queued, then closes the socket; ``abort()``
    closes it at once. The protocol's ``connection_lost()`` is called on a
    later loop iteration, as with asyncio's transports. ``loop.start_tls()``
    takes it over as it does asyncio's own (comm-tls does so when asyncio's
    TLS layer is selected).
    """

    _logger = logger
    #: What asyncio's ``loop.start_tls()`` checks: the transport can change protocols
    #: and pause reading, which is all that TLS on top of it needs.
    _start_tls_compatible = True

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(loop, sock, protocol, extra)
        self._queue: collections.deque[Any] = collections.deque()  # bytes or flat views
        # The queue's last buffer if it is our own copy of small writes, which later
        # small writes extend (never once a view of it was taken).
        self._tail: bytearray | None = None
        self._reading = True  # not paused by the protocol, and no EOF yet
        self._reader = False  # our read callback is registered with the loop
        self._eof_pending = False  # write_eof() was called: shut down once the queue is sent
        self._eof_written = False
        self._at_eof = False  # the peer shut its side down

    def start(self) -> None:
        """Connect the protocol (``connection_made()``, now) and start reading."""
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "connection_made() failed")
            return
        if self._reading and not self._closing and not self._reader:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader = True

    # -- reading ----------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if not self._buffered:
            self._read_plain(sock)
            return
        protocol: Any = self._protocol
        budget = _BUDGET
        while True:
            try:
                buf = protocol.get_buffer(-1)
                size = len(buf)
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "get_buffer() failed")
                return
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "reading failed")
                return
            finally:
                del buf
            if not n:
                self._eof()
                return
            try:
                protocol.buffer_updated(n)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "buffer_updated() failed")
                return
            budget -= n
            # A short read drained the socket (it is read again when more arrives).
            if n < size or budget <= 0 or not self._reading or self._closing:
                return

    def read_now(self) -> None:
        """Read what the socket holds now, as the loop would once it is readable.

        For a protocol that expects data to be there already (a comm's
        handshake read): it gets it without waiting for the next loop
        iteration. Does nothing while reading is paused or the transport closing.
        """
        if self._reader:
            self._read_ready()

    def _read_plain(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "reading failed")
            return
        if not data:
            self._eof()
            return
        try:
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "data_received() failed")

    def _eof(self) -> None:
        """The peer shut its side down (or closed)."""
        self._at_eof = True
        self._reading = False
        self._update_reader()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "eof_received() failed")
            return
        if not keep_open:
            self.close()

    def _update_reader(self) -> None:
        want = self._reading and not self._closing and not self._lost
        if want and not self._reader:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader = True
        elif not want and self._reader:
            self._loop.remove_reader(self._fd)
            self._reader = False

    def pause_reading(self) -> None:
        if self._reading and not self._closing:
            self._reading = False
            self._update_reader()

    def resume_reading(self) -> None:
        if self._reading or self._closing or self._at_eof:
            return
        self._reading = True
        self._update_reader()

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: Any) -> None:
        if self._eof_pending or self._eof_written:
            raise RuntimeError("cannot write() after write_eof()")
        if self._closing:
            return
        size = len(data) if type(data) is bytes else _nbytes(data)
        if not size:
            return
        if self._queue:
            self._enqueue(data, size)
            self._maybe_pause()
            return
        assert self._sock is not None
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "writing failed")
            return
        if sent >= size:
            return
        if sent:
            data = memoryview(data).cast("B")[sent:]
        self._enqueue(data, size - sent)
        self._update_writer(True)
        self._maybe_pause()

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        if self._eof_pending or self._eof_written:
            raise RuntimeError("cannot writelines() after write_eof()")
        if self._closing:
            return
        buffers = _gathered(list(list_of_data))
        if len(buffers) <= 1:
            if buffers:
                self.write(buffers[0])
            return
        if self._queue:
            for data in buffers:
                self._enqueue(data, _nbytes(data))
            self._maybe_pause()
            return
        assert self._sock is not None
        try:
            sent = self._sock.sendmsg(buffers[:_MAX_IOV])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "writing failed")
            return
        for data in buffers:
            size = _nbytes(data)
            if sent >= size:
                sent -= size
                continue
            if sent:
                data = memoryview(data).cast("B")[sent:]
                size -= sent
                sent = 0
            self._enqueue(data, size)
        if self._queue:
            self._update_writer(True)
            self._maybe_pause()

    def _enqueue(self, data: Any, size: int) -> None:
        """Queue *size* bytes of *data*: a large buffer by reference, a small one copied
        into the queue's last buffer, so that many small writes go out in one piece."""
        if not size:
            return
        self._queued += size
        if size >= _SMALL:
            self._queue.append(_flat(data))
            self._tail = None
            return
        tail = self._tail
        if tail is not None and len(tail) + size <= _TAIL_MAX:
            tail += data
            return
        tail = self._tail = bytearray(data)
        self._queue.append(tail)

    def _write_ready(self) -> None:
        sock = self._sock
        queue = self._queue
        if sock is None:
            return
        budget = _BUDGET
        while queue and budget > 0:
            try:
                if len(queue) == 1:
                    sent = sock.send(queue[0])
                else:
                    sent = sock.sendmsg([queue[i] for i in range(min(len(queue), _MAX_IOV))])
            except (BlockingIOError, InterruptedError):
                break
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal(exc, "writing failed")
                return
            if not sent:
                break
            self._queued -= sent
            budget -= sent
            while sent:
                head = queue[0]
                size = _nbytes(head)
                if sent >= size:
                    queue.popleft()
                    sent -= size
                    if head is self._tail:
                        self._tail = None
                else:
                    if head is self._tail:
                        self._tail = None  # a view of it follows: it must not grow
                    queue[0] = memoryview(head).cast("B")[sent:]
                    break
            else:
                continue
            break  # the kernel took less than offered: its buffer is full
        self._maybe_resume()
        if queue:
            return
        self._update_writer(False)
        if self._eof_pending:
            self._shutdown_write()
        if self._closing:
            self._finish(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing or self._eof_pending or self._eof_written:
            return
        self._eof_pending = True
        if not self._queue:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        self._eof_pending = False
        self._eof_written = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._fatal(exc, "shutting down the write side failed")

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading; close the socket once what is queued has been sent."""
        if self._closing:
            return
        self._closing = True
        self._update_reader()
        if not self._queue:
            self._finish(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def _force_close(self, exc: BaseException | None) -> None:
        """Close at once and report *exc* to the protocol.

        Not part of the transport interface, but asyncio's TLS layer
        (``loop.start_tls()``) calls it on the transport beneath it.
        """
        self._closing = True
        self._finish(exc)

    @property
    def _paused(self) -> bool:
        """Whether reading is paused; asyncio's TLS layer reads it on Python 3.10."""
        return not self._reading

    def _finish(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._reader:
            self._loop.remove_reader(self._fd)
            self._reader = False
        self._update_writer(False)
        self._queue.clear()
        self._tail = None
        self._release(exc)

    # -- the rest of the transport interface --------------------------------------------------

    def _missing_extra_info(self, name: str, default: Any) -> Any:
        if name in ("sockname", "peername") and self._sock is not None:
            # Asked for by name only: most connections never need both.
            try:
                value = self._sock.getsockname() if name == "sockname" else self._sock.getpeername()
            except OSError:
                value = None
            self._info[name] = value
            return value
        return default
