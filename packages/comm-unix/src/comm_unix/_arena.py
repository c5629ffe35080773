"""The shared-memory arena: large buffers cross a unix comm through memory both ends map.

Each direction of a connection has its own arena, owned by the writing end: a
memfd (Linux), created on the first buffer of at least ``arena_threshold``
bytes, sized for it (at least 32 MiB, twice the buffer, at most
``arena_size``), pre-faulted, sealed against shrinking and growing, and
reused for every later buffer. Its descriptor crosses once, with
``SCM_RIGHTS``, attached to a control record that announces it. The writer
copies each large buffer into a free slot (page-aligned, first fit) and sends
a reference to it in the message, whose structure still travels on the
socket; the reader maps the slot read-only and hands the mapping to the user
as a read-only ``memoryview``. When the user has dropped every view of it,
the mapping is freed and the reader sends a "released" control record; only
then may the writer reuse the slot. With no room, ``write()`` waits for
releases; a buffer larger than the arena goes on the socket.

Everything from the peer is checked (see :class:`Arena`): a descriptor comes
only with an announcement, is a sealed regular file of the announced size and
of this user; a reference names a whole page-aligned slot inside the current
arena that overlaps none the reader holds; a release names a slot the writer
handed out and that was not released before. Anything else is a
:class:`~comm_core.ProtocolError` that closes the comm.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import mmap
import os
import socket
import stat
import struct
import sys
import threading
import weakref
from array import array
from collections.abc import Callable
from typing import Any

from comm_core import CommClosedError, ProtocolError
from comm_core.protocol import CONTROL_RELEASED, FrameReferences, control_record
from comm_core.stream import StreamProtocol

__all__ = [
    "ANCILLARY_SPACE",
    "ARENA_SIZE",
    "ARENA_THRESHOLD",
    "CONTROL_ARENA",
    "ENV_SIZE",
    "MAX_SLOTS",
    "MIN_THRESHOLD",
    "Arena",
    "default_size",
    "descriptors_in",
    "unavailable",
]

logger = logging.getLogger("comm_unix")

#: The default largest arena per direction of a connection, in bytes (``arena_size``).
ARENA_SIZE = 256 * 1024 * 1024
#: The default smallest out-of-band buffer sent through the arena (``arena_threshold``).
ARENA_THRESHOLD = 1024 * 1024
#: The default longest a writer waits for room in the arena (``arena_wait``, seconds)
#: before it sends a buffer on the socket instead: a reader that keeps what it received
#: (a cache, a worker's results) holds its slots for good, and must not stall the writer
#: for ever.
ARENA_WAIT = 1.0
#: The shortest buffer that may go through an arena (``arena_threshold`` is raised to
#: it): a reader refuses references to less, so that a peer cannot make it hold more
#: than one mapping per 64 KiB of arena.
MIN_THRESHOLD = 64 * 1024
#: The most slots of one arena in use at once: a writer waits for a release past it, a
#: reader refuses a reference past it. Before Python 3.13 every mapping of a slot holds
#: a descriptor of its own (mmap duplicates it), so this bounds those too.
MAX_SLOTS = 256
#: Python 3.13's mmap can map without duplicating the descriptor.
_TRACKFD = {"trackfd": False} if sys.version_info >= (3, 13) else {}
#: The control record that announces a new arena; its descriptor comes with it.
CONTROL_ARENA = 0x100
#: An arena is at least this large (or ``arena_size``, if smaller).
_SMALLEST = 32 * 1024 * 1024
_PAGE = mmap.PAGESIZE
#: A new arena is written (faulted in) in pieces of this many bytes.
_TOUCH = 1024 * 1024
#: A reference, and the payload of a release: generation, zero, slot offset. Of an
#: announcement: generation, zero, size.
_RECORD = struct.Struct("<IIQ")
#: Seals the reader requires: the arena can neither shrink (a mapping past its end
#: would fault, SIGBUS) nor grow.
_SEALS = getattr(fcntl, "F_SEAL_SHRINK", 0) | getattr(fcntl, "F_SEAL_GROW", 0)
#: Room for the descriptors of one receive: more than one arrive only from a hostile
#: peer, and are closed.
ANCILLARY_SPACE = socket.CMSG_SPACE(4 * array("i").itemsize) if hasattr(socket, "CMSG_SPACE") else 0


#: The environment variable that sets the default ``arena_size`` (bytes; 0: no arena).
ENV_SIZE = "COMM_UNIX_ARENA_SIZE"


def default_size() -> int:
    """``arena_size`` when a connection does not say: :data:`ENV_SIZE`, else
    :data:`ARENA_SIZE`.

    Raises:
        ValueError: the variable is not a whole number of bytes, 0 or more.
    """
    text = os.environ.get(ENV_SIZE, "").strip()
    if not text:
        return ARENA_SIZE
    try:
        size = int(text)
    except ValueError:
        size = -1
    if size < 0:
        raise ValueError(f"{ENV_SIZE} must be a number of bytes, 0 or more: {text!r}")
    return size


def unavailable() -> str | None:
    """Why this platform cannot have arenas, or ``None`` if it can (Linux: memfd)."""
    if not hasattr(os, "memfd_create") or not hasattr(fcntl, "F_ADD_SEALS"):
        return "no memfd on this platform (Linux only, for now)"
    if not hasattr(socket, "SCM_RIGHTS"):
        return "no SCM_RIGHTS on this platform"
    return None


def _round_up(size: int) -> int:
    return -(-size // _PAGE) * _PAGE


def _arena_size(need: int, limit: int) -> int:
    """The size of a new arena for a buffer of *need* bytes: room for two such, at least
    32 MiB, at most *limit* (but *need* at least)."""
    size = min(limit, max(_SMALLEST, 2 * need))
    return max(need, size - size % _TOUCH)


def descriptors_in(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors that *ancillary* (what ``recvmsg`` received besides data) holds."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array("i")
            received.frombytes(data[: len(data) - len(data) % received.itemsize])
            fds.extend(received)
    return fds


class _Outgoing:
    """The writer's arena: its mapping, and the slots the reader holds (offset: length)."""

    def __init__(self, generation: int, size: int) -> None:
        self.generation = generation
        self.size = size
        fd = os.memfd_create("comm-unix-arena", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            self.map = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self.fd: int | None = fd
        self.view = view = memoryview(self.map)
        # Faulted in now, once, by writing: the first write to fresh pages costs about
        # as much as the copy itself (MAP_POPULATE maps shared pages read-only, and the
        # first copy into them then still ran at 60% of the speed of later ones).
        zeros = memoryview(bytes(_TOUCH))
        for offset in range(0, size, _TOUCH):
            end = min(offset + _TOUCH, size)
            view[offset:end] = zeros[: end - offset]
        self.slots: dict[int, int] = {}

    def find(self, need: int) -> int | None:
        """The offset of the first gap of *need* bytes, or ``None``."""
        position = 0
        for offset in sorted(self.slots):
            if offset - position >= need:
                return position
            position = max(position, offset + self.slots[offset])
        return position if self.size - position >= need else None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.view.release()
        with contextlib.suppress(BufferError):
            self.map.close()


def _released(ref: weakref.ref[Arena], generation: int, offset: int) -> None:
    """The user dropped the last view of a slot's mapping (a finalizer)."""
    arena = ref()
    if arena is not None:
        arena.released(generation, offset)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class Arena(FrameReferences):
    """The arenas of one unix comm, both directions: the reading end's mappings and the
    writing end's memfd. comm-core's stream calls it (see
    :class:`~comm_core.protocol.FrameReferences`); the transport hands it the
    descriptors it receives.

    Args:
        protocol: the comm's protocol, for control records and failures.
        send_fds: sends bytes with descriptors, once the transport has sent
            everything before (awaitable).
        size: the largest arena this end makes, and accepts from the peer.
        threshold: the smallest buffer sent through the arena.
        peer_offer: the largest arena the peer accepts, from its handshake:
            ``None`` until the handshake is done, 0 if it accepts none.
        wait: the longest a write waits for room (the reader to release slots)
            before the buffer goes on the socket; ``None``: for ever.
    """

    def __init__(
        self,
        protocol: StreamProtocol,
        send_fds: Callable[[bytes, list[int]], Any],
        *,
        size: int,
        threshold: int,
        peer_offer: Callable[[], int | None],
        wait: float | None = ARENA_WAIT,
    ) -> None:
        # Weakly: the protocol holds the arena (no cycle, both freed without the GC).
        self._protocol = weakref.ref(protocol)
        self.peer = protocol.peer
        self.send_fds = send_fds
        self.size = size
        self.threshold = max(threshold, MIN_THRESHOLD)
        self.peer_offer = peer_offer
        self.wait = wait
        self._limit: int | None = None  # min(size, the peer's offer), once known
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.closed = False
        #: Why large buffers go on the socket after all (the arena could not be made).
        self.broken: str | None = None
        # Writing.
        self._out: _Outgoing | None = None
        self._generation = 0
        self._waiters: list[asyncio.Future[bool]] = []
        #: Buffers sent through the arena, and how many of them had to wait for room.
        self.placed = 0
        self.waited = 0
        #: Buffers sent on the socket because the reader released no room in time.
        self.spilled = 0
        # Reading.
        self._fd: int | None = None  # of the peer's current arena
        self._in_generation = 0
        self._in_size = 0
        self._pending_fd: int | None = None  # received, its announcement not yet read
        self._held: dict[tuple[int, int], int] = {}  # (generation, offset): end, mapped here
        self._releases: list[bytes] = []
        self._flush_scheduled = False
        self._ref = weakref.ref(self)

    def __repr__(self) -> str:
        return f"<Arena with {self.peer}>"

    @property
    def protocol(self) -> StreamProtocol:
        """The comm's protocol.

        Raises:
            CommClosedError: it is gone (so is the comm).
        """
        protocol = self._protocol()
        if protocol is None:
            raise CommClosedError(f"comm with {self.peer} is gone")
        return protocol

    # -- writing --------------------------------------------------------------------------

    @property
    def writing(self) -> bool:
        limit = self._limit
        if limit is None:
            offer = self.peer_offer()
            if offer is None:  # the handshake is not over
                return False
            limit = self._limit = min(self.size, offer)
        return limit >= self.threshold and self.broken is None and not self.closed

    async def place(self, frame: memoryview) -> bytes | None:
        size = frame.nbytes
        need = _round_up(size)
        limit = self._limit or 0
        if need > limit or self.broken is not None:
            return None  # larger than any arena: on the socket
        wait = self.wait
        deadline = None if wait is None or wait == math.inf else self.loop.time() + wait
        out = self._out
        if out is None or need > out.size:
            if out is not None:  # too small: replace it once the reader released it all
                while out.slots:
                    if not await self._room(deadline):
                        self.spilled += 1
                        return None  # the reader keeps some: this one on the socket
                out.close()
                self._out = None
            out = await self._new_arena(_arena_size(need, limit))
            if out is None:
                return None
        offset = out.find(need) if len(out.slots) < MAX_SLOTS else None
        if offset is None:
            self.waited += 1
            while offset is None:
                if not await self._room(deadline):
                    self.spilled += 1
                    return None  # the reader keeps its slots: this one on the socket
                offset = out.find(need) if len(out.slots) < MAX_SLOTS else None
        out.view[offset : offset + size] = frame
        out.slots[offset] = need
        self.placed += 1
        return _RECORD.pack(out.generation, 0, offset)

    async def _room(self, deadline: float | None) -> bool:
        """Wait for a release (or the end of the connection); ``False`` if none came by
        *deadline* (the loop's clock; ``None``: no limit).

        Raises:
            CommClosedError: the comm is closed.
        """
        if self.closed:
            raise self.protocol.closed_error() from self.protocol.error
        if deadline is not None and deadline <= self.loop.time():
            return False
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = None if deadline is None else self.loop.call_at(deadline, _expire, waiter)
        try:
            released = await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if self.closed:
            raise self.protocol.closed_error() from self.protocol.error
        return released

    async def _new_arena(self, size: int) -> _Outgoing | None:
        try:
            out = _Outgoing(self._generation + 1, size)
        except (OSError, ValueError) as exc:  # no memory, no descriptors, no memfd...
            self.broken = f"cannot make an arena of {size} bytes: {exc}"
            logger.info("%s: large buffers go on the socket: %s", self.peer, self.broken)
            return None
        self._generation = out.generation
        try:
            # What the comm gathered (its preamble, with the handshake) goes first.
            self.protocol.flush_now()
            await self.send_fds(
                control_record(CONTROL_ARENA, _RECORD.pack(out.generation, 0, size)),
                [out.fd] if out.fd is not None else [],
            )
        except BaseException:
            out.close()
            raise
        if out.fd is not None:  # the peer has its own now
            os.close(out.fd)
            out.fd = None
        self._out = out
        return out

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    # -- reading --------------------------------------------------------------------------

    def descriptors(self, fds: list[int], truncated: bool) -> None:
        """The transport received *fds* (``truncated``: more than fit, the rest dropped
        by the kernel): keep one that an announcement will claim, close any other.

        Raises:
            ProtocolError: unsolicited or too many descriptors (all closed).
        """
        if truncated or len(fds) != 1 or self._pending_fd is not None or self.closed:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            what = "descriptors it was not asked for" if not truncated else "too many descriptors"
            raise ProtocolError(f"peer {self.peer} sent {what} ({len(fds)} received)")
        self._pending_fd = fds[0]

    def control(self, kind: int, payload: bytes) -> None:
        first, zero, value = _RECORD.unpack(payload)
        peer = self.peer
        if zero:
            raise ProtocolError(f"peer {peer} sent a control record with reserved bytes set")
        if kind == CONTROL_RELEASED:
            self._peer_released(first, value)
        elif kind == CONTROL_ARENA:
            self._announced(first, value)
        else:
            raise ProtocolError(f"peer {peer} sent a control record of unknown kind {kind}")

    def _peer_released(self, generation: int, offset: int) -> None:
        out = self._out
        if out is None or generation != out.generation or out.slots.pop(offset, None) is None:
            raise ProtocolError(
                f"peer {self.peer} released a slot of the arena that it does not "
                f"hold (arena {generation}, offset {offset})"
            )
        self._wake()

    def _announced(self, generation: int, size: int) -> None:
        peer = self.peer
        fd, self._pending_fd = self._pending_fd, None
        if fd is None:
            raise ProtocolError(f"peer {peer} announced an arena without its descriptor")
        try:
            problem = None
            if generation <= self._in_generation:
                problem = f"generation {generation} after {self._in_generation}"
            elif not 0 < size <= self.size or size % _PAGE:
                problem = f"{size} bytes, where this side accepts up to {self.size}"
            else:
                info = os.fstat(fd)
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                    problem = f"a descriptor that is not a file of {size} bytes"
                elif info.st_uid != os.getuid():
                    problem = f"a file of user {info.st_uid}"
                elif seals & _SEALS != _SEALS:
                    problem = "a file that may still shrink or grow (not sealed)"
        except OSError as exc:
            problem = f"a descriptor that cannot be checked ({exc})"
        if problem is not None:
            os.close(fd)
            raise ProtocolError(f"peer {peer} announced an arena that is refused: {problem}")
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._in_generation, self._in_size = fd, generation, size

    def resolve(self, reference: bytes, length: int) -> Any:
        generation, zero, offset = _RECORD.unpack(reference)
        end = offset + length
        problem = None
        if self._fd is None or generation != self._in_generation or zero:
            problem = f"arena {generation}, which it did not announce"
        elif offset % _PAGE or length <= 0 or end > self._in_size:
            problem = f"{length} bytes at {offset}, outside its arena of {self._in_size} bytes"
        elif length < MIN_THRESHOLD:
            problem = f"{length} bytes, fewer than {MIN_THRESHOLD} (a buffer that short is sent)"
        elif len(self._held) >= MAX_SLOTS:
            problem = f"a slot more than the {MAX_SLOTS} this side holds at most"
        else:
            for (held_generation, start), held_end in self._held.items():
                if held_generation == generation and start < end and offset < held_end:
                    problem = f"bytes {offset}-{end}, which this side still holds"
                    break
        if problem is not None:
            raise ProtocolError(f"peer {self.peer} sent a reference to {problem}")
        try:
            slot = mmap.mmap(
                self._fd,  # type: ignore[arg-type]
                length,
                # Not MAP_POPULATE: the pages fault in as the user reads them, which
                # costs about as much for a reader of every byte (fault-around maps 16
                # pages at a time) and nothing for one that reads few.
                flags=mmap.MAP_SHARED,
                prot=mmap.PROT_READ,
                offset=offset,
                **_TRACKFD,
            )
        except (OSError, ValueError) as exc:
            raise ProtocolError(
                f"cannot map {length} bytes of the arena of peer {self.peer}: {exc}"
            ) from exc
        self._held[generation, offset] = end
        finalizer = weakref.finalize(slot, _released, self._ref, generation, offset)
        finalizer.atexit = False
        return memoryview(slot)

    def released(self, generation: int, offset: int) -> None:
        """The user dropped the last view of the slot at *offset*: tell the writer
        (soon, with the releases of the same loop iteration). Any thread."""
        if self._held.pop((generation, offset), None) is None or self.closed:
            return
        self._releases.append(_RECORD.pack(generation, 0, offset))
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        try:
            if threading.get_ident() == self._thread:
                self.loop.call_soon(self._send_releases)
            else:
                self.loop.call_soon_threadsafe(self._send_releases)
        except RuntimeError:  # the loop is closed: the connection is gone
            self._releases.clear()

    def _send_releases(self) -> None:
        self._flush_scheduled = False
        releases, self._releases = self._releases, []
        for payload in releases:
            self.protocol.send_control(CONTROL_RELEASED, payload)

    @property
    def held(self) -> int:
        """Bytes of the peer's arena mapped here and not released yet."""
        return sum(end - offset for (_, offset), end in list(self._held.items()))

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """The connection is gone: free this side's arena, close the descriptors, wake
        the writers that wait for room. Mappings the user holds stay valid."""
        if self.closed:
            return
        self.closed = True
        if self._out is not None:
            self._out.close()
            self._out = None
        for fd in (self._fd, self._pending_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._pending_fd = None
        self._releases.clear()
        self._wake()
