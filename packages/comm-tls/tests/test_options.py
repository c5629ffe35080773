"""The tls connector works with the options connect() resolved: its TLS handshake is bounded
by ``connect(handshake_timeout=)``, not by the setting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import comm_core
from comm_core import ConnectTimeoutError
from comm_tls import Security

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte; its port."""
    done = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await done.wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        done.set()
        for writer in writers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_the_tls_handshake_gives_up_after_connects_handshake_timeout(
    temporary: Security,
) -> None:
    # The setting says 10 s; connect() says 0.2 s: each attempt's TLS handshake gives up
    # after 0.2 s and connect() tries again, several times within its 2 s budget. (Read
    # from the setting, the first attempt's handshake outlived the whole budget.)
    async with silent_server() as port:
        with pytest.raises(ConnectTimeoutError) as caught:
            await comm_core.connect(
                f"tls://127.0.0.1:{port}", timeout=2.0, handshake_timeout=0.2, security=temporary
            )
    assert caught.value.attempts >= 3, caught.value


async def test_options_given_to_connect_reach_the_tls_handshake(temporary: Security) -> None:
    options = comm_core.Options(handshake_timeout=0.2, connect_timeout=2.0)
    async with silent_server() as port:
        with pytest.raises(ConnectTimeoutError) as caught:
            await comm_core.connect(f"tls://127.0.0.1:{port}", options=options, security=temporary)
    assert caught.value.attempts >= 3, caught.value
    assert 1.5 <= caught.value.elapsed <= 4.0
