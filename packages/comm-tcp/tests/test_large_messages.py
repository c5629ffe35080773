"""Large messages: intact, received without copies into writable buffers, above 2 GiB too."""

from __future__ import annotations

import asyncio
import hashlib
import mmap
import os
import sys

import pytest

from comm_core import Comm, CommClosedError
from comm_core.protocol import OOB_THRESHOLD
from tcp_support import MiB, connected, serving, within

pytestmark = pytest.mark.usefixtures("loop_name")


async def test_64_mib_round_trip_intact() -> None:
    data = os.urandom(64 * MiB)
    digest = hashlib.sha256(data).digest()
    small = b"s" * (OOB_THRESHOLD - 1)
    async with serving() as served, connected(served.address()) as client:
        # Read while writing: the echo comes back before the write has returned.
        write = asyncio.ensure_future(client.write({"big": data, "small": small, "n": 1}))
        reply = await within(client.read(), "the echo of 64 MiB")
        assert await write > 64 * MiB
    big = reply["big"]
    assert isinstance(big, memoryview), type(big)
    assert not big.readonly
    assert (big.nbytes, big.format, big.ndim) == (64 * MiB, "B", 1)
    assert hashlib.sha256(big).digest() == digest
    assert type(reply["small"]) is bytes
    assert reply["small"] == small
    assert reply["n"] == 1


async def test_many_out_of_band_frames_in_one_message() -> None:
    parts = [os.urandom(OOB_THRESHOLD + i) for i in range(64)]
    async with serving() as served, connected(served.address()) as client:
        write = asyncio.ensure_future(client.write({"parts": parts, "tuple": tuple(parts[:2])}))
        reply = await within(client.read(), "the echo of 64 frames")
        await write
    assert [bytes(p) for p in reply["parts"]] == parts
    assert isinstance(reply["tuple"], tuple)
    assert [bytes(p) for p in reply["tuple"]] == parts[:2]


_FORK_CHILD_WRITES = r"""
import asyncio, os, sys
import comm_core
from comm_core.testing import echo_handler

async def main():
    async with comm_core.listen("tcp://127.0.0.1:0", echo_handler) as listener:
        address = f"tcp://127.0.0.1:{listener.port}"
        async with await comm_core.connect(address, timeout=10) as comm:
            await comm.write(bytes(4 << 20))
            view = await comm.read()
            pid = os.fork()
            if pid == 0:
                view[:4] = b"CHLD"
                os._exit(0)
            os.waitpid(pid, 0)
            print(bytes(view[:4]).hex())

asyncio.run(main())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
async def test_received_buffers_are_not_shared_with_forked_children() -> None:
    """A large frame is received into private memory: a forked child writing into it does
    not change the parent's message (as a shared mapping would)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FORK_CHILD_WRITES, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await within(child.communicate(), "the child process")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0
    assert out.strip() == b"00000000"


# -- above 2 GiB --------------------------------------------------------------------------

_HUGE = 2 * 1024 * MiB + MiB


def _marks(size: int) -> list[int]:
    """An offset in each MiB, at a different place in each, to catch lost or moved chunks."""
    return [k * MiB + (k * 4099) % (MiB - 8) for k in range(size // MiB)]


def _zeros(size: int) -> memoryview:
    """*size* zero bytes that use no memory until written (a private anonymous mapping)."""
    if sys.platform == "win32":
        return memoryview(bytearray(size))
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))


@pytest.mark.slow
@pytest.mark.large
async def test_message_above_2_gib_round_trip() -> None:
    """One 2 GiB + 1 MiB frame goes there and back. Memory: the sender's buffer is all
    zero pages but the marks; the server's copy is freed once echoed; so about two copies.
    Checked: the length, a mark in every MiB, and a few whole slices."""
    limit = 3 * 1024 * MiB
    payload = _zeros(_HUGE)
    for offset in _marks(_HUGE):
        payload[offset : offset + 8] = offset.to_bytes(8, "little")

    async def echo_once(comm: Comm) -> None:
        async with comm:
            msg = await comm.read()
            await comm.write(msg)
            del msg
            with pytest.raises(CommClosedError):
                await comm.read()

    async with (
        serving(echo_once, max_message_size=limit) as served,
        connected(served.address(), max_message_size=limit) as client,
    ):
        write = asyncio.ensure_future(client.write({"huge": payload}))
        reply = await within(client.read(), "the echo of 2 GiB", timeout=120)
        assert await write > _HUGE

    huge = reply.pop("huge")
    assert reply == {}
    assert isinstance(huge, memoryview)
    assert huge.nbytes == _HUGE
    for offset in _marks(_HUGE):
        assert huge[offset : offset + 8] == offset.to_bytes(8, "little"), offset
    for start in (0, 2**31 - 4096, _HUGE - 3 * 4096):  # across the 2 GiB boundary, the end
        assert huge[start : start + 3 * 4096] == payload[start : start + 3 * 4096], start
