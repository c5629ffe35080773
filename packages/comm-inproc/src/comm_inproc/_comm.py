"""The in-process comm: two ends joined by two one-way pipes.

Each direction is a :class:`_Pipe`: a deque of messages, the future of the
reader waiting on it (if any), and a ``closed`` flag. Nothing is copied and
nothing is serialized; a write appends to the deque and wakes the reader.

Waking, and why no wakeup is lost
---------------------------------
Only the reading end stores a waiter in ``pipe.waiter``, and only while its
``read()`` is suspended. The reader's slow path is::

    check deque and flags -> store waiter -> check deque and flags again -> await

while a writer (or a closer) does::

    append (or set closed) -> load waiter -> wake it if there is one

Both sides store first and load second, so under the interpreter's
sequentially consistent ordering at least one of them sees the other's store:
either the reader's second check finds the message (it then drops its waiter
and takes it) or the writer finds the waiter and wakes it. A wake that turns
out to be unneeded is harmless: the reader re-checks in a loop, and waking a
waiter that is already done is a no-op.

How a waiter is woken depends on where the waker runs:

* on the waiter's own event loop (the common case, and the fast path): the
  writer clears ``pipe.waiter`` and sets the future's result directly. No lock,
  no task and no callback beyond the future's own.
* anywhere else (another thread, or no running loop, as in ``__del__``): the
  result is set through ``loop.call_soon_threadsafe`` on the waiter's loop.
  ``pipe.notified`` remembers the last waiter so scheduled, so that a burst of
  writes from another thread schedules one wakeup, not one per message. If the
  waiter's loop is closed, nobody can read any more and the wakeup is dropped.

Closing
-------
Closing either end (``close()`` and ``abort()`` do the same thing here, as
there is nothing to flush) sets ``closed`` on both pipes and wakes both
waiters. Then:

* this end's ``read()`` and ``write()`` raise :class:`CommClosedError` at once,
  and the messages the peer sent that this end had not read are dropped;
* the peer's ``closed()`` is true at once; its ``write()`` raises; its
  ``read()`` still returns every message this end wrote before closing, then
  raises :class:`CommClosedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Collection
from typing import Any

from comm_core.abc import Comm, OnError
from comm_core.exceptions import CommClosedError
from comm_inproc._address import format_address, new_location

__all__ = ["InProcComm"]

# Public in asyncio.events.__all__; returns None (instead of raising) outside a loop.
_get_running_loop = asyncio._get_running_loop
_running_loop = asyncio.get_running_loop


class _Pipe:
    """One direction of a connection: written by one end, read by the other."""

    __slots__ = ("closed", "notified", "queue", "waiter")

    def __init__(self) -> None:
        #: Messages written and not yet read, oldest first.
        self.queue: deque[Any] = deque()
        #: The future the reader awaits while the queue is empty; only the reader sets it.
        self.waiter: asyncio.Future[None] | None = None
        #: The last waiter for which a thread-safe wakeup was scheduled.
        self.notified: asyncio.Future[None] | None = None
        #: Set (never cleared) when either end closes.
        self.closed = False


def _set_done(waiter: asyncio.Future[None]) -> None:
    """Complete *waiter*, unless it already is; runs on the waiter's loop."""
    if not waiter.done():
        waiter.set_result(None)


def _wake(pipe: _Pipe, waiter: asyncio.Future[None]) -> None:
    """Wake *waiter*, the reader of *pipe*, from any thread. Never raises."""
    loop = waiter.get_loop()
    if loop is _get_running_loop():
        if not waiter.done():
            waiter.set_result(None)
    elif pipe.notified is not waiter:
        pipe.notified = waiter
        # If the reader's loop is closed, it will never read again: drop the wakeup.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_done, waiter)


class InProcComm(Comm):
    """One end of an in-process connection.

    Messages are delivered in order and **are not copied**: :meth:`read`
    returns the very object the peer passed to :meth:`write`. Both ends
    therefore share every message; do not mutate a message after writing it,
    nor one you read while the writer may still use it. Nothing is serialized,
    so the ``serializers``, ``on_error`` and ``deserializers`` arguments and the
    ``deserialize`` flag have no effect, and any object can be sent.

    The two ends may live on different event loops in different threads of
    the process. Writes never wait: the queue towards the peer is unbounded.

    Get one from :func:`comm_core.connect` (``inproc://`` addresses) or from a
    listener's handler, or a connected pair from :meth:`pair`; the constructor
    is internal.
    """

    __slots__ = ("_closed", "_in", "_local", "_out", "_peer", "_rq", "_wq")

    def __init__(
        self,
        local_address: str,
        peer_address: str,
        inbound: _Pipe,
        outbound: _Pipe,
        *,
        deserialize: bool = True,
    ) -> None:
        self._local = local_address
        self._peer = peer_address
        self._in = inbound
        self._out = outbound
        self._rq = inbound.queue
        self._wq = outbound.queue
        self._closed = False
        super().__init__(deserialize=deserialize)

    @classmethod
    def pair(
        cls, *, deserialize: bool = True, addresses: tuple[str, str] | None = None
    ) -> tuple[InProcComm, InProcComm]:
        """Return two comms connected to each other, with no listener and no handshake.

        Args:
            deserialize: the ``deserialize`` flag of both comms (no effect).
            addresses: the local addresses of the two ends; default: two fresh
                inproc addresses of this process.
        """
        if addresses is None:
            addresses = (format_address(new_location()), format_address(new_location()))
        first, second = addresses
        forward, backward = _Pipe(), _Pipe()
        return (
            cls(first, second, backward, forward, deserialize=deserialize),
            cls(second, first, forward, backward, deserialize=deserialize),
        )

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        """Return the next message: the very object the peer wrote.

        Waits while nothing is queued. After the peer closed, returns what it
        wrote before closing, then raises.

        Raises:
            CommClosedError: this end is closed, or the peer closed it and every
                message it wrote has been read.
        """
        queue = self._rq
        if queue and not self._closed:
            return queue.popleft()
        pipe = self._in
        loop: asyncio.AbstractEventLoop | None = None
        while True:
            if self._closed:
                raise CommClosedError(f"read from {self._local}: this comm is closed")
            if queue:
                return queue.popleft()
            if pipe.closed:
                raise CommClosedError(
                    f"read from {self._local}: the peer {self._peer} closed the comm"
                )
            if loop is None:
                loop = _running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            pipe.waiter = waiter
            # Check again now that the waiter is visible: a writer or closer on
            # another thread may have acted after the checks above without seeing it.
            if queue or pipe.closed:
                pipe.waiter = None
                continue
            try:
                await waiter
            except asyncio.CancelledError:
                pipe.waiter = None
                self.abort()  # a cancelled read leaves the comm unusable (see Comm)
                raise
            pipe.waiter = None

    async def write(
        self,
        msg: Any,
        serializers: Collection[str] | None = None,
        on_error: OnError = "raise",
    ) -> int:
        """Queue *msg* (not a copy) for the peer and return 0; never waits.

        A write that returns queued its message: the peer reads it unless the
        peer closes first (this end closing after it does not drop it). One that
        raises queued nothing, so the peer never reads it, also when another
        thread closes the comm meanwhile (see :meth:`comm_core.Comm.write`).

        Raises:
            CommClosedError: this end or the peer is closed.
        """
        pipe = self._out
        if pipe.closed:
            raise CommClosedError(
                f"write to {self._peer}: "
                + ("this comm is closed" if self._closed else "the peer closed the comm")
            )
        self._wq.append(msg)
        waiter = pipe.waiter
        if waiter is not None:
            if waiter.get_loop() is _get_running_loop():
                # Same loop, so the reader is suspended and cannot store a new
                # waiter meanwhile: clearing it here is safe.
                pipe.waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            else:
                _wake(pipe, waiter)
        return 0

    async def close(self) -> None:
        """Close both directions; the same as :meth:`abort`, as nothing is ever buffered."""
        self.abort()

    def abort(self) -> None:
        """Close both directions at once. Idempotent; never raises; callable from any thread.

        The peer still reads what this end wrote before; unread messages from
        the peer are dropped.
        """
        if self._closed:
            return
        self._closed = True
        inbound, outbound = self._in, self._out
        outbound.closed = True
        inbound.closed = True
        inbound.queue.clear()
        for pipe in (outbound, inbound):  # the peer's pending read, then ours
            waiter = pipe.waiter
            if waiter is not None:
                _wake(pipe, waiter)

    def closed(self) -> bool:
        """Whether this end or the peer has closed (the peer's close is seen at once)."""
        return self._in.closed

    @property
    def local_address(self) -> str:
        """This end's ``inproc://<host>/<pid>/<n>`` address."""
        return self._local

    @property
    def peer_address(self) -> str:
        """The other end's ``inproc://<host>/<pid>/<n>`` address."""
        return self._peer

    @property
    def same_host(self) -> bool:
        """Always true: both ends are in this process."""
        return True
