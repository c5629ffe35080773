"""The shared-memory arena: large buffers between two processes through a memfd both map.

A child process runs a comm listener whose handler obeys the parent's
messages (hold a buffer, check the held ones, drop them, send one back), so
that each test sees both ends of a real connection between real processes.
Hostile peers are raw sockets of this process that send descriptors and
records with ``sendmsg``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import struct
import subprocess
import sys
import uuid
from array import array
from collections.abc import Iterator
from typing import Any

import pytest

import comm_core
from comm_core.protocol import (
    BY_REFERENCE,
    CONTROL_RELEASED,
    PREAMBLE,
    control_record,
    encode_message,
)
from comm_core.session import local_handshake
from comm_unix import ABSTRACT_NAMESPACE, UnixComm
from comm_unix._connector import comm_options

pytestmark = pytest.mark.skipif(
    not hasattr(os, "memfd_create") or not ABSTRACT_NAMESPACE,
    reason="the arena is Linux's (memfd)",
)

KiB = 1024
MiB = 1024 * KiB
CONTROL_ARENA = 0x100

_CHILD = """
import asyncio, gc, hashlib, json, os, sys
import comm_core

def digest(view):
    return hashlib.sha256(view).hexdigest()

HELD = []  # what every connection's "hold" keeps, until a "drop" on any of them

async def handler(comm):
    held = HELD
    while True:
        try:
            msg = await comm.read()
        except comm_core.CommClosedError:
            return
        op = msg["op"]
        if op == "hold":
            held.append(msg["data"])
            reply = {"digest": digest(msg["data"]), "readonly": msg["data"].readonly}
        elif op == "put":
            data = msg["data"]
            reply = {"digest": digest(data), "readonly": data.readonly, "n": data.nbytes}
            del data
        elif op == "check":
            reply = {"digests": [digest(view) for view in held]}
        elif op == "drop":
            held.clear()
            gc.collect()
            reply = {}
        elif op == "send":
            reply = {"data": bytes([msg["byte"]]) * msg["n"]}
        elif op == "info":
            info = comm.extra_info
            reply = {"arena": info["arena"], "arena_off": info["arena_off"]}
        else:
            reply = {"error": op}
        del msg
        await comm.write(reply)

async def main():
    kwargs = json.loads(sys.argv[2])
    async with comm_core.listen(sys.argv[1], handler, **kwargs) as listener:
        print(json.dumps([os.getpid(), listener.contact_address]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextlib.contextmanager
def child_listener(**kwargs: Any) -> Iterator[str]:
    """A listener in a child process (see _CHILD); its contact address."""
    address = f"unix://@comm-unix-arena-{uuid.uuid4().hex}"
    with subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _CHILD, address, json.dumps(kwargs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            _, contact = json.loads(child.stdout.readline())
            yield str(contact)
        finally:
            assert child.stdin is not None
            child.stdin.close()  # the child stops when its stdin closes
            assert child.wait(timeout=30) == 0


def pattern(byte: int, size: int) -> bytes:
    return bytes([byte]) * size


def sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


async def ask(comm: comm_core.Comm, msg: dict[str, Any]) -> Any:
    await comm.write(msg)
    return await comm.read()


def arena_of(comm: comm_core.Comm) -> Any:
    assert isinstance(comm, UnixComm)
    arena = comm.protocol.arena
    assert arena is not None
    return arena


# -- between two processes --------------------------------------------------------------------


async def test_large_buffers_are_read_in_place_both_ways() -> None:
    with child_listener() as contact:
        async with await comm_core.connect(contact, timeout=10) as comm:
            assert comm.extra_info["arena"] is True
            assert comm.extra_info["arena_off"] is None
            assert await ask(comm, {"op": "info"}) == {"arena": True, "arena_off": None}
            data = pattern(7, 3 * MiB)
            # Through the arena: the child gets a read-only view of the shared memory.
            reply = await ask(comm, {"op": "put", "data": data})
            assert reply == {"digest": sha(data), "readonly": True, "n": len(data)}
            # Below the threshold: on the socket, a writable view of the child's own.
            small = pattern(8, 512 * 1024)
            reply = await ask(comm, {"op": "put", "data": small})
            assert reply == {"digest": sha(small), "readonly": False, "n": len(small)}
            assert arena_of(comm).placed == 1
            # The other way: the child's arena, mapped here read-only.
            reply = await ask(comm, {"op": "send", "byte": 9, "n": 5 * MiB})
            view = reply["data"]
            assert isinstance(view, memoryview)
            assert view.readonly
            assert view == pattern(9, 5 * MiB)
            with pytest.raises(TypeError):
                view[0] = 1


async def test_a_slot_the_reader_holds_is_never_overwritten() -> None:
    size = 8 * MiB
    with child_listener(arena_size=size) as contact:
        async with await comm_core.connect(
            contact, timeout=10, arena_size=size, arena_wait=math.inf
        ) as comm:
            kept = pattern(1, 4 * MiB)
            reply = await ask(comm, {"op": "hold", "data": kept})
            assert reply == {"digest": sha(kept), "readonly": True}
            arena = arena_of(comm)
            # Twice the arena's size more, 4 MiB at a time, two by two while the child
            # holds half of it: the second of each two waits until the child released
            # the first (this process reads nothing in between: no release can be in).
            for byte in range(2, 2 + 2 * size // (4 * MiB), 2):
                first, second = pattern(byte, 4 * MiB), pattern(byte + 1, 4 * MiB)
                await comm.write({"op": "put", "data": first})
                waited = arena.waited
                await comm.write({"op": "put", "data": second})
                assert arena.waited == waited + 1
                for data in (first, second):
                    reply = await comm.read()
                    assert reply == {"digest": sha(data), "readonly": True, "n": len(data)}
            assert arena.placed == 5
            assert await ask(comm, {"op": "check"}) == {"digests": [sha(kept)]}
            # Larger than the arena: on the socket, whatever is held.
            big = pattern(42, size + MiB)
            reply = await ask(comm, {"op": "put", "data": big})
            assert reply == {"digest": sha(big), "readonly": False, "n": len(big)}
            assert await ask(comm, {"op": "check"}) == {"digests": [sha(kept)]}


async def test_a_writer_waits_while_the_arena_is_full() -> None:
    size = 8 * MiB
    with child_listener(arena_size=size) as contact:
        async with await comm_core.connect(
            contact, timeout=10, arena_size=size, arena_wait=math.inf
        ) as comm:
            arena = arena_of(comm)
            await ask(comm, {"op": "hold", "data": pattern(1, 4 * MiB)})
            await ask(comm, {"op": "hold", "data": pattern(2, 4 * MiB)})
            # The arena is full: this write waits for room...
            data = pattern(3, 4 * MiB)
            write = asyncio.ensure_future(comm.write({"op": "put", "data": data}))
            await asyncio.sleep(0)  # it runs until it waits
            assert not write.done()
            assert arena.waited == 1
            # ... until the child drops what it holds (told on another connection).
            async with await comm_core.connect(contact, timeout=10) as other:
                assert await ask(other, {"op": "drop"}) == {}
            await write
            reply = await comm.read()
            assert reply == {"digest": sha(data), "readonly": True, "n": len(data)}
            assert arena.waited == 1


async def test_a_reader_that_keeps_its_slots_does_not_stall_the_writer() -> None:
    """A reader may keep what it received for good (a cache): after arena_wait seconds
    without room, the buffer goes on the socket, and the held bytes stay as they were."""
    size = 8 * MiB
    with child_listener(arena_size=size) as contact:
        async with await comm_core.connect(
            contact, timeout=10, arena_size=size, arena_wait=0.2
        ) as comm:
            arena = arena_of(comm)
            kept = pattern(1, 8 * MiB)
            assert await ask(comm, {"op": "hold", "data": kept}) == {
                "digest": sha(kept),
                "readonly": True,
            }
            data = pattern(3, 4 * MiB)
            reply = await ask(comm, {"op": "put", "data": data})
            # On the socket: a writable buffer of the child's own.
            assert reply == {"digest": sha(data), "readonly": False, "n": len(data)}
            assert (arena.waited, arena.spilled, arena.placed) == (1, 1, 1)
            assert await ask(comm, {"op": "check"}) == {"digests": [sha(kept)]}
            assert comm.extra_info["arena"] is True  # the arena is still there for more


def test_arena_wait_must_be_seconds() -> None:
    for bad in (-1, "1", float("nan"), True):
        with pytest.raises(ValueError, match="arena_wait"):
            comm_options({"arena_wait": bad})
    assert comm_options({"arena_wait": math.inf}) == {"arena_wait": math.inf}


async def test_a_write_cancelled_while_waiting_for_room_aborts_the_comm() -> None:
    size = 8 * MiB
    with child_listener(arena_size=size) as contact:
        async with await comm_core.connect(
            contact, timeout=10, arena_size=size, arena_wait=math.inf
        ) as comm:
            await ask(comm, {"op": "hold", "data": pattern(1, 8 * MiB)})
            write = asyncio.ensure_future(comm.write({"op": "put", "data": pattern(3, 4 * MiB)}))
            await asyncio.sleep(0)
            assert not write.done()
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            assert comm.closed()
            with pytest.raises(comm_core.CommClosedError):
                await comm.write({"op": "info"})
        async with await comm_core.connect(contact, timeout=10) as other:
            assert await ask(other, {"op": "drop"}) == {}


async def test_slots_are_released_when_the_reader_drops_them() -> None:
    with child_listener() as contact:
        async with await comm_core.connect(contact, timeout=10) as comm:
            arena = arena_of(comm)
            await ask(comm, {"op": "hold", "data": pattern(1, 2 * MiB)})
            await ask(comm, {"op": "hold", "data": pattern(2, 2 * MiB)})
            assert len(arena._out.slots) == 2
            await ask(comm, {"op": "drop"})
            # The child sends its releases before it answers the next message.
            assert await ask(comm, {"op": "check"}) == {"digests": []}
            assert arena._out.slots == {}
            # This side releases what it received once the user drops it (garbage).
            reply = await ask(comm, {"op": "send", "byte": 3, "n": 2 * MiB})
            view = reply["data"]
            assert arena.held == 2 * MiB
            del reply
            assert arena.held == 2 * MiB  # the user's view keeps it
            numpy_like = view[10:20]  # a slice keeps the mapping too
            del view
            assert arena.held == 2 * MiB
            del numpy_like
            # The loop's callback that woke this task holds the read's future (and the
            # message) until this step ends: one step more, and nothing holds it.
            await asyncio.sleep(0)
            assert arena.held == 0
            # Its release reaches the child: it answers after it freed the slot.
            assert await ask(comm, {"op": "check"}) == {"digests": []}


async def test_no_arena_with_arena_size_0_or_uvloop() -> None:
    with child_listener() as contact:
        async with await comm_core.connect(contact, timeout=10, arena_size=0) as comm:
            assert comm.extra_info["arena"] is False
            assert comm.extra_info["arena_off"] == "turned off (arena_size=0)"
            # Its handshake is comm-core's alone (no offer); the child's offers one.
            assert set(comm.local_handshake_info) == {"protocol", "library", "version"}
            assert comm.handshake_info["shm_arena"] == 256 * MiB
            # The child offers one, this side does not: bytes on the socket both ways.
            assert (await ask(comm, {"op": "info"}))["arena"] is False
            data = pattern(5, 3 * MiB)
            reply = await ask(comm, {"op": "put", "data": data})
            assert reply == {"digest": sha(data), "readonly": False, "n": len(data)}
            reply = await ask(comm, {"op": "send", "byte": 6, "n": 3 * MiB})
            assert not reply["data"].readonly
            assert reply["data"] == pattern(6, 3 * MiB)


@pytest.mark.comm_loop("uvloop")
async def test_no_arena_on_uvloop() -> None:
    pytest.importorskip("uvloop")
    with child_listener() as contact:
        async with await comm_core.connect(contact, timeout=10) as comm:
            assert comm.extra_info["arena"] is False
            assert "drives its own sockets" in comm.extra_info["arena_off"]
            info = await ask(comm, {"op": "info"})
            assert info == {"arena": False, "arena_off": "the peer did not offer one"}
            reply = await ask(comm, {"op": "send", "byte": 6, "n": 3 * MiB})
            assert not reply["data"].readonly
            assert reply["data"] == pattern(6, 3 * MiB)


# -- hostile peers ----------------------------------------------------------------------------


class Hostile:
    """A raw socket peer of a listener of this process, past the comm handshake."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[BaseException | None] = asyncio.Queue()
        self.sock: socket.socket | None = None
        self.ready = asyncio.Event()  # the listener's handler has the comm
        self.messages: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(self, comm: comm_core.Comm) -> None:
        self.ready.set()
        try:
            while True:
                await self.messages.put(await comm.read())
        except comm_core.CommClosedError as exc:
            await self.errors.put(exc if isinstance(exc.__cause__, Exception) else None)
        except Exception as exc:
            await self.errors.put(exc)

    async def connect(self, contact: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(
            sock, b"\0" + contact.removeprefix("unix://@").encode()
        )
        info = local_handshake(UnixComm())
        buffers, _ = encode_message(info)
        sock.sendall(PREAMBLE + b"".join(buffers))
        self.sock = sock
        await asyncio.wait_for(self.ready.wait(), 10)  # past the handshake
        return sock

    def send(self, data: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        assert self.sock is not None
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        self.sock.sendmsg([data], rights)

    async def error(self) -> str:
        exc = await asyncio.wait_for(self.errors.get(), 10)
        assert isinstance(exc, comm_core.ProtocolError), exc
        return str(exc)


@contextlib.asynccontextmanager
async def hostile_peer(**kwargs: Any) -> Any:
    hostile = Hostile()
    address = f"unix://@comm-unix-hostile-{uuid.uuid4().hex}"
    async with comm_core.listen(address, hostile.handler, **kwargs) as listener:
        sock = await hostile.connect(listener.contact_address)
        try:
            yield hostile
        finally:
            sock.close()


def memfd(size: int, *, seal: bool = True) -> int:
    import fcntl

    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def announce(generation: int, size: int) -> bytes:
    return control_record(CONTROL_ARENA, struct.pack("<IIQ", generation, 0, size))


def by_reference(generation: int, offset: int, length: int) -> bytes:
    """A message {"data": <out-of-band frame 1>} whose frame is a reference."""
    import msgpack

    body = msgpack.packb({"data": msgpack.ExtType(1, struct.pack("<I", 1))})
    header = struct.pack("<IQQ", 2, len(body), length | BY_REFERENCE)
    return header + body + struct.pack("<IIQ", generation, 0, offset)


def closed_everywhere(fd_pair: tuple[int, int]) -> bool:
    """Whether the write end of a pipe (sent to the peer, then closed here) is closed by
    the peer too: the read end sees end of file."""
    read_fd, _ = fd_pair
    os.set_blocking(read_fd, False)
    try:
        return os.read(read_fd, 1) == b""
    except BlockingIOError:
        return False


async def test_hostile_unsolicited_descriptors_are_closed() -> None:
    async with hostile_peer() as peer:
        read_fd, write_fd = os.pipe()
        try:
            peer.send(b"x", [write_fd, write_fd])  # two at once: never asked for
            os.close(write_fd)
            assert "descriptors it was not asked for (2 received)" in await peer.error()
            assert closed_everywhere((read_fd, write_fd))
        finally:
            os.close(read_fd)


async def test_hostile_descriptors_to_a_comm_without_arena_are_dropped() -> None:
    async with hostile_peer(arena_size=0) as peer:
        read_fd, write_fd = os.pipe()
        try:
            # The kernel drops descriptors sent to a plain recv(): the comm goes on.
            peer.send(struct.pack("<IQ", 1, 1) + b"\xc0", [write_fd])
            os.close(write_fd)
            assert await asyncio.wait_for(peer.messages.get(), 10) is None  # msgpack nil
            assert closed_everywhere((read_fd, write_fd))
            assert peer.errors.empty()
        finally:
            os.close(read_fd)


async def test_hostile_too_many_descriptors_truncated() -> None:
    async with hostile_peer() as peer:
        fds = [memfd(4096) for _ in range(6)]
        try:
            peer.send(announce(1, 4096), fds)
        finally:
            for fd in fds:
                os.close(fd)
        assert "too many descriptors" in await peer.error()


@pytest.mark.parametrize(
    ("fd_size", "seal", "announced", "generation", "refusal"),
    [
        (4096, False, 4096, 1, "not sealed"),
        (8192, True, 4096, 1, "not a file of 4096 bytes"),
        (4096, True, 4096, 0, "generation 0 after 0"),
        (4096, True, 4096 + 1, 1, "4097 bytes"),
        (16 * MiB, True, 16 * MiB, 1, "accepts up to 8388608"),
    ],
)
async def test_hostile_arena_announcements_are_refused(
    fd_size: int, seal: bool, announced: int, generation: int, refusal: str
) -> None:
    async with hostile_peer(arena_size=8 * MiB) as peer:
        fd = memfd(fd_size, seal=seal)
        try:
            peer.send(announce(generation, announced), [fd])
        finally:
            os.close(fd)
        error = await peer.error()
        assert "announced an arena that is refused" in error
        assert refusal in error


async def test_hostile_announcement_without_descriptor() -> None:
    async with hostile_peer() as peer:
        peer.send(announce(1, 4096))
        assert "announced an arena without its descriptor" in await peer.error()


@pytest.mark.parametrize(
    ("generation", "offset", "length", "refusal"),
    [
        (2, 0, 64 * KiB, "arena 2, which it did not announce"),
        (1, 64 * KiB, 64 * KiB, "outside its arena of 131072 bytes"),
        (1, 0, 3 * 64 * KiB, "outside its arena"),
        (1, 100, 64 * KiB, "outside its arena"),
        (1, 0, 0, "outside its arena"),
        (1, 0, 4096, "4096 bytes, fewer than 65536"),
    ],
)
async def test_hostile_references_are_refused(
    generation: int, offset: int, length: int, refusal: str
) -> None:
    async with hostile_peer() as peer:
        fd = memfd(128 * KiB)
        try:
            peer.send(announce(1, 128 * KiB), [fd])
        finally:
            os.close(fd)
        if offset == length == 64 * KiB:  # in bounds: taken; then past the end
            peer.send(by_reference(1, offset, length) + by_reference(1, offset, 2 * length))
        else:
            peer.send(by_reference(generation, offset, length))
        error = await peer.error()
        assert "sent a reference to" in error
        assert refusal in error


async def test_hostile_reference_to_a_slot_still_held() -> None:
    got: list[Any] = []

    class Keeping(Hostile):
        async def handler(self, comm: comm_core.Comm) -> None:
            self.ready.set()
            try:
                got.append(await comm.read())  # kept: its slot stays held
            except Exception as exc:
                await self.errors.put(exc)
                return
            await super().handler(comm)

    hostile = Keeping()
    address = f"unix://@comm-unix-hostile-{uuid.uuid4().hex}"
    async with comm_core.listen(address, hostile.handler) as listener:
        sock = await hostile.connect(listener.contact_address)
        try:
            fd = memfd(128 * KiB)
            try:
                hostile.send(announce(1, 128 * KiB), [fd])
            finally:
                os.close(fd)
            hostile.send(by_reference(1, 0, 128 * KiB) + by_reference(1, 64 * KiB, 64 * KiB))
            error = await hostile.error()
        finally:
            sock.close()
    assert "bytes 65536-131072, which this side still holds" in error
    assert got[0]["data"].nbytes == 128 * KiB


async def test_hostile_releases_are_refused() -> None:
    async with hostile_peer() as peer:
        peer.send(control_record(CONTROL_RELEASED, struct.pack("<IIQ", 1, 0, 0)))
        assert "released a slot of the arena that it does not hold" in await peer.error()


async def test_hostile_control_records() -> None:
    async with hostile_peer() as peer:
        peer.send(control_record(77, bytes(16)))
        assert "control record of unknown kind 77" in await peer.error()


async def test_hostile_body_by_reference() -> None:
    async with hostile_peer() as peer:
        peer.send(struct.pack("<IQ", 1, 10 | BY_REFERENCE) + bytes(16))
        assert "its message body by reference" in await peer.error()


async def test_hostile_references_beyond_the_slots_a_reader_holds() -> None:
    from comm_unix._arena import MAX_SLOTS

    kept: list[Any] = []

    class Hoarding(Hostile):
        async def handler(self, comm: comm_core.Comm) -> None:
            self.ready.set()
            try:
                while True:
                    kept.append(await comm.read())  # every slot stays held
            except Exception as exc:
                await self.errors.put(exc)

    hostile = Hoarding()
    address = f"unix://@comm-unix-hostile-{uuid.uuid4().hex}"
    size = (MAX_SLOTS + 1) * 64 * KiB
    async with comm_core.listen(address, hostile.handler) as listener:
        sock = await hostile.connect(listener.contact_address)
        try:
            fd = memfd(size)
            try:
                hostile.send(announce(1, size), [fd])
            finally:
                os.close(fd)
            for index in range(MAX_SLOTS + 1):
                hostile.send(by_reference(1, index * 64 * KiB, 64 * KiB))
            error = await hostile.error()
        finally:
            sock.close()
    assert f"a slot more than the {MAX_SLOTS} this side holds at most" in error
    assert len(kept) == MAX_SLOTS


async def test_concurrent_writes_keep_their_order_through_the_arena() -> None:
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(comm: comm_core.Comm) -> None:
        for _ in range(40):
            msg = await comm.read()
            await received.put((msg["i"], bytes(msg["data"][:1]), len(msg["data"])))
            del msg
        await comm.close()

    # A small arena: large writes wait for room while small ones queue behind them.
    async with comm_core.listen("unix://", handler, arena_size=8 * MiB) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=10, arena_size=8 * MiB)
        async with comm:
            sizes = [3 * MiB if i % 3 == 0 else 100 for i in range(40)]
            await asyncio.gather(
                *(comm.write({"i": i, "data": bytes([i]) * size}) for i, size in enumerate(sizes))
            )
            got = [await asyncio.wait_for(received.get(), 10) for _ in sizes]
            assert got == [(i, bytes([i]), size) for i, size in enumerate(sizes)]
            assert arena_of(comm).placed == 14


async def test_a_comm_on_a_socket_that_cannot_receive_descriptors_offers_no_arena() -> None:
    """A unix comm connected through another transport (asyncio's own, as code that makes
    its comms itself may do) has no arena, and must not offer one: the listener would send
    its descriptor and records to a reader that cannot take them."""
    from comm_core.session import handshake
    from comm_core.testing import echo_handler
    from comm_unix import peer_credentials

    async with comm_core.listen("unix://", echo_handler) as listener:
        path = listener.contact_address.removeprefix("unix://")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.setblocking(False)
        comm = UnixComm()
        comm.protocol.credentials = peer_credentials(sock)
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: comm.protocol, sock=sock)
        async with comm:
            await handshake(comm, None, 10, "test")
            assert "shm_arena" not in comm.local_handshake_info
            assert comm.extra_info["arena"] is False
            data = pattern(4, 4 * MiB)
            await comm.write({"data": data})
            echo = await comm.read()
            assert echo["data"] == data
            assert not echo["data"].readonly  # on the socket
