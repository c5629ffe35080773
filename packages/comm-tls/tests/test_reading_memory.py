"""What a TLS peer can make a reader hold: unread tiny messages, and headers announcing frames.

As over tcp (comm-tcp's ``test_reading_memory.py``), over comm-tls's own
transport and over asyncio's TLS layer: queued messages count what they cost
in memory, so a flood of tiny messages to a comm that does not read blocks
the writer; pausing stops the TLS layer from handing over more; and a header
makes the reader reserve memory only as the bytes it announces arrive.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import tracemalloc

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm, CommClosedError
from comm_core.protocol import PREAMBLE, encode_message
from comm_core.stream import StreamProtocol, held_bytes
from comm_core.testing import until
from comm_tls import Security
from tls_support import IPV4, MiB, connected, serving, within

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")

#: The reader's read_high_water in these tests (the default is 64 MiB).
READ_HIGH_WATER = 4 * MiB
#: The writer's write_high_water (the default is 4 MiB).
WRITE_HIGH_WATER = MiB
#: A flood stops after this many messages or seconds, blocked or not.
FLOOD_MESSAGES = 2_000_000
FLOOD_SECONDS = 20.0
#: How long a writer must make no progress, with its transport paused, to count as blocked.
QUIET = 0.3


async def hold(comm: Comm) -> None:
    """A handler that never reads; its comm stays open until the listener's block ends."""


def small_buffers(comm: Comm, option: int) -> None:
    sock = comm.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, option, 64 * 1024)


async def flood_until_blocked(
    client: Comm, reader: StreamProtocol, progress: list[int]
) -> asyncio.Task[None]:
    """Write empty messages to *client* until its writes block because the *reader*
    stopped reading; return the writing task, still running."""
    protocol: StreamProtocol = client.protocol  # type: ignore[attr-defined]

    async def flood() -> None:
        for _ in range(FLOOD_MESSAGES):
            await client.write({})
            progress[0] += 1

    writer = asyncio.ensure_future(flood())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    while loop.time() < deadline and not writer.done():
        before = progress[0]
        await asyncio.wait({writer}, timeout=QUIET)
        blocked = protocol.write_paused and progress[0] == before
        if not writer.done() and blocked and reader.reading_paused:
            return writer
    writer.cancel()
    pytest.fail(
        f"{progress[0]:,} tiny messages were written without the reader pausing and the "
        "writer blocking"
    )


async def test_a_flood_of_tiny_messages_blocks_the_writer(temporary: Security) -> None:
    """Regression: 2 million empty messages to a handler that does not read grew a tls
    listener by about 300 MiB without ever blocking the writer (read_high_water counted
    payload bytes only). Now the reader pauses at read_high_water, through either TLS
    layer, and the writer's write() stops completing; reading then resumes."""
    async with (
        serving(hold, security=temporary, read_high_water=READ_HIGH_WATER) as served,
        connected(
            served.address(), security=temporary, write_high_water=WRITE_HIGH_WATER
        ) as client,
    ):
        server = await served.accepted()
        reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
        # Small socket buffers, so that the writer blocks after fewer messages.
        small_buffers(client, socket.SO_SNDBUF)
        small_buffers(server, socket.SO_RCVBUF)
        progress = [0]
        writer = await flood_until_blocked(client, reader, progress)
        try:
            assert reader.ready_bytes <= READ_HIGH_WATER + held_bytes([bytes(1)])
            # An empty message waiting unread takes more than 100 bytes of memory.
            queued = len(reader.ready)
            assert queued <= READ_HIGH_WATER // 100, queued
            for index in range(queued + 1000):
                assert await within(server.read(), f"message {index}") == {}
        finally:
            writer.cancel()
            client.abort()
        with pytest.raises(asyncio.CancelledError):
            await writer


async def test_a_flood_of_empty_messages_keeps_the_reader_flat(temporary: Security) -> None:
    """The same flood from a plain TLS peer (asyncio streams, so that only the reader's
    memory and the peer's TLS buffers are traced): the reader's memory grows by
    read_high_water and a little more, not by what the peer sends, and the peer's
    writes stop going through once the reader pauses."""
    chunk = bytes(encode_message({})[0][0]) * 80_000  # 1 MB of empty messages
    handshake = b"".join(map(bytes, encode_message({"protocol": PROTOCOL_VERSION})[0]))
    async with serving(hold, security=temporary, read_high_water=READ_HIGH_WATER) as served:
        _, peer = await within(
            asyncio.open_connection(
                IPV4, served.port, ssl=temporary.client_context, server_hostname=IPV4
            ),
            "a TLS connection",
        )
        try:
            peer.write(PREAMBLE + handshake)
            await within(peer.drain(), "the handshake")
            server = await served.accepted()
            reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
            peer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            small_buffers(server, socket.SO_RCVBUF)
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + FLOOD_SECONDS
                sent = 0
                while sent < FLOOD_MESSAGES and loop.time() < deadline:
                    peer.write(chunk)
                    draining = asyncio.ensure_future(peer.drain())
                    done, _ = await asyncio.wait({draining}, timeout=3 * QUIET)
                    if not done and reader.reading_paused:
                        break  # the peer is blocked: the reader stopped reading
                    await within(draining, "a chunk of the flood")
                    sent += 80_000
                else:
                    pytest.fail(f"{sent:,} empty messages went through without blocking")
                traced = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            draining.cancel()
            # The queue, the receive buffer, and the TLS layers' buffers at both ends.
            bound = READ_HIGH_WATER + 4 * MiB
            assert traced < bound, f"{traced:,} bytes traced, {sent:,} sent"
            assert reader.ready_bytes <= READ_HIGH_WATER + held_bytes([bytes(1)])
        finally:
            peer.transport.abort()


async def test_tiny_messages_paused_many_times_all_arrive_in_order(temporary: Security) -> None:
    """A reader with a small read_high_water pauses and resumes many times over a stream
    of tiny messages, and the writer closes meanwhile (TLS may hand over the last bytes
    and the end of the stream at once, while the reader is paused): every message
    arrives, in order, then the end of the comm."""
    count = 30_000
    async with (
        serving(hold, security=temporary, read_high_water=16 * 1024) as served,
        connected(served.address(), security=temporary) as client,
    ):
        server = await served.accepted()
        reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
        for index in range(count):
            await client.write(index)
        closing = asyncio.ensure_future(client.close())
        await until(lambda: reader.reading_paused, "the reader to pause")
        resumed = 0  # reads after which more messages wait than before: reading resumed
        for index in range(count):
            waiting = len(reader.ready)
            assert await within(server.read(), f"message {index}") == index
            resumed += len(reader.ready) >= waiting
        assert resumed > 50, resumed
        with pytest.raises(CommClosedError):
            await within(server.read(), "the end of the comm")
        await within(closing, "the writer's close")


def _virtual_memory() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.parametrize("claim", [MiB - 1, 1024 * MiB - 1])
async def test_headers_announcing_large_frames_reserve_little(
    temporary: Security, claim: int
) -> None:
    """Regression: after the handshake, a header announcing a frame just under 1 MiB made
    a tls listener allocate and zero 1 MiB per connection, held for as long as the peer
    liked; a larger claim mapped all of it. What a connection reserves now grows with
    what arrives."""
    peers = 10
    async with serving(hold, security=temporary) as served:
        clients: list[Comm] = []
        try:
            for _ in range(peers):
                clients.append(
                    await comm_core.connect(served.address(), security=temporary, timeout=10)
                )
            servers = [await served.accepted() for _ in range(peers)]
            gc.collect()
            vm_before = _virtual_memory()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for client in clients:
                    client.transport.write(struct.pack("<IQ", 1, claim))  # type: ignore[attr-defined]
                # Every reader has started receiving the frame its header announced.
                await until(
                    lambda: all(s.protocol.decoder._direct is not None for s in servers),  # type: ignore[attr-defined]
                    "every header to be read",
                )
                traced = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            vm_after = _virtual_memory()
        finally:
            for client in clients:
                client.abort()
    per_peer = traced / peers
    assert per_peer < 128 * 1024, f"{per_peer:,.0f} bytes traced per peer"
    if vm_before is not None and vm_after is not None:
        assert (vm_after - vm_before) / peers < MiB, (vm_before, vm_after)
