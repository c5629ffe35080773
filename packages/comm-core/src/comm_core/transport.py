"""asyncio transports over a non-blocking stream socket, for transport authors.

asyncio's own socket transports are not meant to be subclassed, and a
transport that drives its socket itself (comm-tcp's and comm-unix's, which
send from the caller's memory and connect their protocol at once; comm-tls's,
which lets OpenSSL read and write the socket directly) needs the same
bookkeeping around what it does: flow control towards the protocol, the
protocol's callbacks around the connection's end, and the facts of
``get_extra_info()``. :class:`StreamTransportBase` holds that bookkeeping; a
subclass adds reading, writing and closing.

:class:`SocketTransport` is such a subclass for a plain stream socket (TCP,
Unix): comm-tcp and comm-unix use it on asyncio's selector loops. Compared
with asyncio's own selector transport it does what a comm needs with less:

* ``connection_made()`` runs in :meth:`SocketTransport.start`, at once, so a
  dialled or accepted connection is ready without another loop iteration;
* reading receives straight into the buffer the protocol's ``get_buffer()``
  returns (a message's out-of-band frame, for a large one), and reads again
  while the buffer filled up, so that a burst takes one readiness callback;
* writing sends from the caller's memory: a large buffer the kernel does not
  take at once is queued by reference, and ``writelines()`` and the queue go
  out with scatter-gather ``sendmsg`` on every Python version; small buffers
  are gathered into one (copied, since their owners may reuse them), so that
  a burst of small messages costs one system call, not one per message.

It needs an event loop with ``add_reader`` / ``add_writer`` (asyncio's
selector loops; not uvloop or Windows' proactor loop, where a transport uses
the loop's own) and a socket module with ``sendmsg``.

:class:`~comm_core.stream.StreamComm` knows it: over such a transport a
dialing comm reads the listener's greeting as soon as its handshake asks for
it (:meth:`StreamTransportBase.read_now`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

from comm_core.exceptions import CommClosedError

__all__ = ["SocketTransport", "StreamTransportBase"]

logger = logging.getLogger("comm_core.transport")

#: The protocol of a transport whose connection is lost.
_DETACHED = asyncio.BaseProtocol()
#: The socket type of a :class:`StreamTransportBase`.
_S = TypeVar("_S", bound=socket.socket)


class StreamTransportBase(asyncio.Transport, Generic[_S]):
    """The bookkeeping an asyncio transport over a non-blocking stream socket needs.

    It takes ownership of *sock* (a :class:`socket.socket`, or a subclass such
    as :class:`ssl.SSLSocket`: the type parameter). *extra* adds to the facts
    :meth:`get_extra_info` gives (``socket``, and what a subclass passes in
    *extra*); a subclass computes facts on demand by overriding
    :meth:`_missing_extra_info`.

    It provides the state every such transport keeps (``_loop``, ``_sock``,
    ``_fd``, ``_protocol``, ``_buffered``, ``_queued``: bytes queued to send,
    ``_writer``, ``_closing``, ``_lost``), flow control towards the protocol
    (:meth:`set_write_buffer_limits`, ``_maybe_pause()`` / ``_maybe_resume()``
    after the queue grew / shrank), the write callback's registration
    (``_update_writer()``), the protocol's ``connection_lost()``
    (``_call_connection_lost()``, which then detaches the protocol), and a
    :class:`ResourceWarning` for a transport dropped unclosed.

    A subclass defines reading, writing and closing: ``write()``,
    ``writelines()``, ``close()``, ``abort()``, the reading half of the
    interface, ``can_write_eof()`` / ``write_eof()``, and ``_write_ready()``,
    the callback for a writable socket. It keeps ``_queued`` up to date, sets
    ``_closing`` and ``_lost`` (with the socket closed, ``_sock`` is ``None``)
    and schedules ``_call_connection_lost()`` once. Its :attr:`_logger` and
    :attr:`_what` name it in log lines and warnings.
    """

    #: Where failures of the protocol's callbacks are logged (a subclass names its own).
    _logger: ClassVar[logging.Logger] = logger
    #: What the transport is called in the warning about one dropped unclosed.
    _what: ClassVar[str] = "transport"

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: _S,
        protocol: asyncio.BaseProtocol,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._loop = loop
        self._sock: _S | None = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.BaseProtocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._info: dict[str, Any] = {"socket": sock}
        if extra:
            self._info.update(extra)
        self._queued = 0  # bytes queued to send
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._protocol_paused = False  # pause_writing() was called on the protocol
        self._writer = False  # our write callback is registered with the loop
        self._closing = False  # close() or abort() was called, or the connection failed
        self._lost = False  # the socket is closed; connection_lost() is scheduled

    # -- writing ----------------------------------------------------------------------------

    def _write_ready(self) -> None:
        """The socket is writable (registered by :meth:`_update_writer`)."""
        raise NotImplementedError

    def _update_writer(self, want: bool) -> None:
        want = want and not self._lost
        if want and not self._writer:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer = True
        elif not want and self._writer:
            self._loop.remove_writer(self._fd)
            self._writer = False

    def _maybe_pause(self) -> None:
        if self._queued > self._high and not self._protocol_paused:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                self._logger.exception("protocol.pause_writing() failed")

    def _maybe_resume(self) -> None:
        if self._protocol_paused and self._queued <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                self._logger.exception("protocol.resume_writing() failed")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause()
        self._maybe_resume()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._queued

    # -- closing ----------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def _finish(self, exc: BaseException | None) -> None:
        """Stop for good: unregister, drop what is queued, then :meth:`_release`."""
        raise NotImplementedError

    def _fatal(self, exc: BaseException, what: str) -> None:
        """*what* failed with *exc*: log it (an OS error at debug level), then end."""
        if isinstance(exc, OSError):
            self._logger.debug("%r: %s: %r", self, what, exc)
        else:
            self._logger.error("%r: %s", self, what, exc_info=exc)
        self._closing = True
        self._finish(exc)

    def _release(self, exc: BaseException | None) -> None:
        """Close the socket and tell the protocol, on the loop's next iteration, that
        the connection is lost (unless the loop is closed: nobody is left to tell)."""
        self._queued = 0
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if not self._loop.is_closed():
            self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(
                exc if isinstance(exc, Exception) or exc is None else None
            )
        finally:
            # The protocol holds this transport: without the cycle both are freed at once.
            self._protocol = _DETACHED
            self._buffered = False

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            warnings.warn(f"unclosed {self._what} {self!r}", ResourceWarning, stacklevel=1)
            sock.close()

    # -- reading ---------------------------------------------------------------------------

    def read_now(self) -> None:
        """Read what the socket holds now, as the loop would once it is readable.

        For a protocol that expects data to be there already (a dialing comm's
        handshake read finds the listener's greeting there, usually): it gets it
        without waiting for the next loop iteration. Does nothing while reading
        is paused or the transport closing. The base does nothing; a subclass
        that can read at once overrides it.
        """

    # -- the rest of the transport interface --------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = self._info
        if name in info:
            return info[name]
        return self._missing_extra_info(name, default)

    def _missing_extra_info(self, name: str, default: Any) -> Any:
        """What :meth:`get_extra_info` gives for a *name* not in the facts so far.

        *default* here; a subclass looks up facts that are costly or rarely
        needed (and may add them to ``_info``).
        """
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        peer = self._info.get("peername")
        return f"<{type(self).__name__} fd={self._fd} {state} peer={peer}>"


# -- a transport over a plain stream socket --------------------------------------------------

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
    Call :meth:`start` to connect the protocol. A subclass names its own
    :attr:`_logger` (failures of the protocol's callbacks are logged there).

    ``close()`` sends what is queued, then closes the socket; ``abort()``
    closes it at once. The protocol's ``connection_lost()`` is called on a
    later loop iteration, as with asyncio's transports. ``loop.start_tls()``
    takes it over as it does asyncio's own (comm-tls does so when asyncio's
    TLS layer is selected).
    """

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
        # send_ancillary() calls waiting for the queue to empty (or the socket to take more).
        self._sent_waiters: list[asyncio.Future[None]] | None = None

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
        if self._sent_waiters:
            self._wake_senders()
        if self._eof_pending:
            self._shutdown_write()
        if self._closing:
            self._finish(None)

    async def send_ancillary(self, data: bytes, ancdata: list[tuple[int, int, Any]]) -> None:
        """Send *data* with ancillary data (:meth:`socket.socket.sendmsg`'s *ancdata*,
        such as descriptors with ``SCM_RIGHTS``), after everything written before.

        Waits while earlier writes are queued or the socket takes nothing; the
        ancillary data goes with the first byte of *data*, and whatever of
        *data* the kernel did not take then is queued as a write.

        Raises:
            CommClosedError: the transport is closed, or closes while waiting, or
                the kernel refused (the transport is then closed too).
        """
        while True:
            if self._queue and not self._closing:  # what was written before goes first
                await self._wait_sent()
                continue
            sock = self._sock
            if self._closing or sock is None:
                raise CommClosedError(f"connection to {self._info.get('peername')!r} is closed")
            try:
                sent = sock.sendmsg([data], ancdata)
                break
            except (BlockingIOError, InterruptedError):
                self._update_writer(True)  # _write_ready() wakes us once it is writable
                await self._wait_sent()
            except OSError as exc:
                self._fatal(exc, "sending ancillary data failed")
                raise CommClosedError(
                    f"connection to {self._info.get('peername')!r} failed: {exc}"
                ) from exc
        if sent < len(data):
            self.write(data[sent:])

    async def _wait_sent(self) -> None:
        waiter = self._loop.create_future()
        if self._sent_waiters is None:
            self._sent_waiters = []
        self._sent_waiters.append(waiter)
        await waiter

    def _wake_senders(self) -> None:
        waiters, self._sent_waiters = self._sent_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

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
        if self._sent_waiters:
            self._wake_senders()
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
