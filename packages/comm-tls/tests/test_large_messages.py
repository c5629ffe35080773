"""A message above 2 GiB over TLS: OpenSSL takes ``int`` sizes, so writes go in slices.

It runs on the loop ``--comm-loop`` names (asyncio by default): 20 s of
encryption is enough once, and both loops share the slicing, which
``test_comm.py`` checks on each.
"""

from __future__ import annotations

import asyncio
import mmap
import sys

import pytest

from comm_core import Comm, CommClosedError
from comm_tls import Security
from tls_support import MiB, connected, serving, within

# -- above 2 GiB ----------------------------------------------------------------------------

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
async def test_message_above_2_gib_round_trip(temporary: Security) -> None:
    """One 2 GiB + 1 MiB frame goes there and back over TLS (about 20 s, on one loop).

    Memory: the sender's buffer is zero pages but the marks; the server's copy
    is freed once echoed; so about two copies. Checked: the length, a mark in
    every MiB, and slices across the 2 GiB boundary and at the end.
    """
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
        serving(echo_once, security=temporary, max_message_size=limit) as served,
        connected(served.address(), security=temporary, max_message_size=limit) as client,
    ):
        write = asyncio.ensure_future(client.write({"huge": payload}))
        reply = await within(client.read(), "the echo of 2 GiB", timeout=180)
        assert await write > _HUGE

    huge = reply.pop("huge")
    assert reply == {}
    assert isinstance(huge, memoryview)
    assert huge.nbytes == _HUGE
    for offset in _marks(_HUGE):
        assert huge[offset : offset + 8] == offset.to_bytes(8, "little"), offset
    for start in (0, 2**31 - 4096, _HUGE - 3 * 4096):
        assert huge[start : start + 3 * 4096] == payload[start : start + 3 * 4096], start
