"""Hostile peers against the shared-memory arena of a unix listener in a child process.

comm-unix's own tests check each refusal (tests/test_arena.py); this checks what a
listener must keep doing meanwhile: serve a good client (round trips and large
messages through both arenas), stay alive, and hold no descriptor a hostile
peer sent once its connection is gone (counted in ``/proc/<pid>/fd``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import struct
from array import array
from pathlib import Path

import pytest

import comm_core
from comm_core.protocol import BY_REFERENCE, CONTROL_RELEASED, PREAMBLE, control_record
from hostile_msgpack import handshake
from support import KiB, MiB, Transport, linux_only, within
from test_hostile_live import GoodClient, listener_child

pytestmark = [
    linux_only,
    pytest.mark.skipif(
        importlib.util.find_spec("comm_unix") is None or not hasattr(os, "memfd_create"),
        reason="the arena needs comm-unix and memfd (Linux)",
    ),
]

#: Connections per attack.
ROUNDS = 8
_ARENA = 0x100


def _memfd(size: int, seal: bool = True) -> int:
    import fcntl

    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seal:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    return fd


def _announce(size: int, generation: int = 1) -> bytes:
    return control_record(_ARENA, struct.pack("<IIQ", generation, 0, size))


def _reference(offset: int, length: int, generation: int = 1) -> bytes:
    body = b"\x81\xa4data\xd6\x01" + struct.pack("<I", 1)  # {"data": <frame 1>}
    header = struct.pack("<IQQ", 2, len(body), length | BY_REFERENCE)
    return header + body + struct.pack("<IIQ", generation, 0, offset)


#: Each attack: what to send after the handshake, and how many descriptors with it
#: (made fresh: memfds of 128 KiB, sealed unless the attack says otherwise). Those whose
#: name ends with "gone" are valid so far: the peer closes its end after sending.
Attack = tuple[bytes, int, bool]
ATTACKS: dict[str, Attack] = {
    "one descriptor, then gone": (b"\0", 1, True),
    "two descriptors at once": (b"\0\0\0\0", 2, True),
    "more descriptors than fit (MSG_CTRUNC)": (b"\0\0\0\0", 7, True),
    "an unsealed arena": (_announce(128 * KiB), 1, False),
    "an arena larger than accepted": (_announce(1 << 40), 1, True),
    "a reference outside the arena": (_announce(128 * KiB) + _reference(0, 1 * MiB), 1, True),
    "a reference twice": (
        _announce(128 * KiB) + _reference(0, 64 * KiB) + _reference(0, 64 * KiB),
        1,
        True,
    ),
    "a release of nothing": (
        control_record(CONTROL_RELEASED, struct.pack("<IIQ", 1, 0, 0)),
        0,
        True,
    ),
    "a valid arena, then gone": (_announce(128 * KiB), 1, True),
}
# Not here: a valid reference, which the child's echo handler holds (its write to the
# closed peer fails, and the traceback keeps the message until the garbage collector
# runs): a mapping the user holds stays valid, and before Python 3.13 it holds a
# descriptor of its own. comm-unix's tests check releases.


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _descriptors_back(pid: int, before: int, client: GoodClient) -> bool:
    """Whether the child *pid* holds at most *before* descriptors again, waiting on the
    good client's round trips (at most 200) for the connections it closed to go."""
    for _ in range(200):
        if _descriptors(pid) <= before:
            return True
        await client.more(1, "the descriptors to close")
    return _descriptors(pid) <= before


def _what(pid: int) -> list[str]:
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return sorted(out)


async def _attack(path: str, data: bytes, count: int, seal: bool, wait: bool) -> None:
    """One hostile connection: handshake, *data* with *count* descriptors, then (if
    *wait*) read until the listener closes it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    fds = [_memfd(128 * KiB, seal) for _ in range(count)]
    try:
        await loop.sock_connect(sock, path)
        body = handshake()
        greeting = PREAMBLE + struct.pack("<IQ", 1, len(body)) + body
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))] if fds else []
        sock.sendmsg([greeting + data], rights)
        received = 0
        while wait and received < MiB:
            chunk = await within(loop.sock_recv(sock, 64 * KiB), "the listener to react")
            if not chunk:
                break
            received += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        for fd in fds:
            os.close(fd)
        sock.close()


async def test_arena_attacks_cost_no_descriptors(tmp_path: Path) -> None:
    async with listener_child(Transport("unix"), tmp_path) as child:
        path = child.address.removeprefix("unix://")
        good = await comm_core.connect(child.address, timeout=10)
        large = await comm_core.connect(child.address, timeout=10)
        client = GoodClient(good)
        try:
            # Both arenas of the large comm made before the count starts.
            payload = bytes(range(256)) * (8 * KiB)  # 2 MiB
            await large.write({"data": payload})
            echo = await within(large.read(), "the echo of a large message")
            assert echo["data"] == payload
            assert echo["data"].readonly
            del echo
            client.start()
            await client.more(20, "warm-up")
            before = _descriptors(child.pid)
            held = _what(child.pid)
            for name, (data, count, seal) in ATTACKS.items():
                for _ in range(ROUNDS):
                    await _attack(path, data, count, seal, not name.endswith("gone"))
                await client.more(5, name)
                assert child.death() is None, child.death()
            # The listener sees each connection end soon after: wait on its round trips.
            assert await _descriptors_back(child.pid, before, client), (held, _what(child.pid))
            await large.write({"data": payload})
            echo = await within(large.read(), "the echo of a large message")
            assert echo["data"] == payload
            del echo
        finally:
            if client.running:
                await client.stop()
            await good.close()
            await large.close()
