"""Backpressure on writes and flow control on reads: memory stays bounded, nothing is lost."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

import comm_core
from comm_core import Comm, CommClosedError
from comm_core.stream import StreamProtocol
from comm_core.testing import until
from tcp_support import EVENT_TIMEOUT, MiB, connected, hold, rss, serving, within

pytestmark = pytest.mark.usefixtures("loop_name")

#: StreamComm's default write_high_water.
WRITE_HIGH_WATER = 4 * MiB
#: How long a blocked writer must make no progress to count as blocked.
QUIET = 0.3


async def wait_until_blocked(
    task: asyncio.Task[Any], protocol: StreamProtocol, progress: list[int]
) -> None:
    """Wait until *task*'s writes are stuck on backpressure: paused and no progress for QUIET s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_TIMEOUT
    while loop.time() < deadline:
        await until(lambda: task.done() or protocol.write_paused, "the transport to pause writing")
        if task.done():
            pytest.fail(f"{progress[0]} writes completed without blocking: {task!r}")
        before = progress[0]
        await asyncio.wait({task}, timeout=QUIET)
        if not task.done() and protocol.write_paused and progress[0] == before:
            return
    pytest.fail(f"the writer kept making progress for {EVENT_TIMEOUT}s ({progress[0]} writes)")


@pytest.mark.parametrize("release", ["close", "abort", "peer-abort"])
async def test_write_blocks_on_a_peer_that_does_not_read(release: str) -> None:
    """Writing 1 GiB to a peer that never reads blocks early, with memory bounded; the
    blocked write then ends with CommClosedError when either side ends the comm. A close()
    on this side first waits for its flush (which the peer never lets end), as does the
    blocked write, whose message is whole with the transport: it ends with the abort."""
    msg = {"data": os.urandom(MiB)}
    attempts = 1024  # 1 GiB in all
    async with (
        serving(hold, read_high_water=MiB) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()
        transport = client.transport  # type: ignore[attr-defined]
        protocol = client.protocol  # type: ignore[attr-defined]
        rss_before = rss()
        progress = [0]
        largest_buffer = 0

        async def write_all() -> None:
            nonlocal largest_buffer
            for _ in range(attempts):
                await client.write(msg)
                progress[0] += 1
                largest_buffer = max(largest_buffer, transport.get_write_buffer_size())

        writer = asyncio.ensure_future(write_all())
        try:
            await wait_until_blocked(writer, protocol, progress)
            # Bounded by the high-water mark (plus the message that crossed it) ...
            buffered = transport.get_write_buffer_size() + protocol.out_size
            assert buffered <= WRITE_HIGH_WATER + 2 * MiB, buffered
            assert largest_buffer <= WRITE_HIGH_WATER + 2 * MiB, largest_buffer
            # ... and the peer, which holds what it received unread, paused reading.
            assert server.protocol.reading_paused  # type: ignore[attr-defined]
            assert server.protocol.ready_bytes <= 2 * MiB + 4096  # type: ignore[attr-defined]
            rss_after = rss()
            if rss_before is not None and rss_after is not None:
                assert rss_after - rss_before < 64 * MiB, (rss_before, rss_after)

            if release == "close":
                closing = asyncio.ensure_future(client.close())
                await until(lambda: protocol.closing, "close() to start")
                assert not writer.done()
                # close() would wait for the unread data to flush: abort to end it now.
                client.abort()
            elif release == "abort":
                client.abort()
            else:
                server.abort()
            with pytest.raises(CommClosedError):
                await within(writer, "the blocked write to end")
        finally:
            writer.cancel()
        if release == "close":
            await within(closing, "close() after abort()")
        assert progress[0] < attempts


async def test_reader_that_does_not_read_pauses_its_transport() -> None:
    """A reader that falls behind holds at most read_high_water; reading then gets every
    message, in order, and resumes the transport."""
    count = 48
    read_high_water = 4 * MiB

    def payload(index: int) -> bytes:
        return index.to_bytes(4, "little") * (MiB // 4)

    async def produce(comm: Comm) -> None:
        for index in range(count):
            await comm.write({"index": index, "data": payload(index)})
        await comm.close()

    async with (
        serving(produce) as served,
        connected(served.address(), read_high_water=read_high_water) as client,
    ):
        server = await served.accepted()
        protocol = client.protocol  # type: ignore[attr-defined]
        await until(lambda: protocol.reading_paused, "the client to pause reading")
        await until(
            lambda: server.protocol.write_paused,  # type: ignore[attr-defined]
            "the server's writes to block on backpressure",
        )
        assert not client.transport.is_reading()  # type: ignore[attr-defined]
        assert protocol.ready_bytes <= read_high_water + MiB + 4096, protocol.ready_bytes
        assert len(protocol.ready) < count  # so reading all of them needs a resume

        for index in range(count):
            msg = await within(client.read(), f"message {index}")
            assert msg["index"] == index
            assert msg["data"] == payload(index)
        with pytest.raises(CommClosedError):
            await within(client.read(), "the read after the server closed")


async def test_concurrent_writes_never_cut_into_a_large_message() -> None:
    """Small writes made while a large message is still going out wait for it to finish.

    The large message has two out-of-band frames, so its write waits for the
    transport in the middle of a frame and between frames; messages written
    meanwhile by other tasks arrive whole, after it, in order.
    """
    one, two = os.urandom(24 * MiB), os.urandom(24 * MiB)
    received: list[Any] = []
    async with serving(hold) as served, connected(served.address()) as client:
        server = await served.accepted()
        large = asyncio.ensure_future(client.write({"one": one, "two": two}))
        await until(lambda: client.protocol.write_paused, "the large write to wait")  # type: ignore[attr-defined]
        small = [asyncio.ensure_future(client.write({"n": n})) for n in range(20)]

        async def read_all() -> None:
            while len(received) < 21:
                received.append(await server.read())

        await within(asyncio.gather(large, *small, read_all()), "every message to arrive")
    big = received[0]
    assert bytes(big["one"]) == one
    assert bytes(big["two"]) == two
    assert received[1:] == [{"n": n} for n in range(20)]


async def test_concurrent_writers_blocked_on_backpressure_all_resume() -> None:
    """Several writers waiting on one full transport all go on once the peer reads."""
    payload = os.urandom(512 * 1024)  # below the size written apart: plain writes
    writers, count = 4, 32  # 64 MiB in all, far beyond what the buffers hold
    async with (
        serving(hold, read_high_water=MiB) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()

        async def write_many(w: int) -> None:
            for i in range(count):
                await client.write({"w": w, "i": i, "data": payload})

        tasks = [asyncio.ensure_future(write_many(w)) for w in range(writers)]
        protocol = client.protocol  # type: ignore[attr-defined]
        await until(
            lambda: len(protocol.drain_waiters) == writers, "every writer to wait for the transport"
        )
        got = [await within(server.read(), f"message {n}") for n in range(writers * count)]
        await within(asyncio.gather(*tasks), "every writer to finish")
    for w in range(writers):
        mine = [m for m in got if m["w"] == w]
        assert [m["i"] for m in mine] == list(range(count))
        assert all(bytes(m["data"]) == payload for m in mine)


@pytest.mark.parametrize("size", [48 * 1024, 2 * MiB], ids=["in-body", "out-of-band"])
async def test_a_write_racing_close_says_whether_its_message_went(size: int) -> None:
    """close() while a write waits on backpressure: a write that returns has handed its
    whole message over, and close() delivers it; a write that raises CommClosedError
    delivered nothing, so the peer never reads that message (at most once)."""
    go = asyncio.Event()
    received: list[int] = []

    async def read_later(comm: Comm) -> None:
        await go.wait()
        async for msg in comm:
            received.append(msg["index"])

    async with serving(read_later, read_high_water=MiB) as served:
        client = await within(
            comm_core.connect(served.address(), write_high_water=256 * 1024), "connect"
        )
        protocol = client.protocol  # type: ignore[attr-defined]
        index = 0
        while True:  # write until a write waits for the transport
            write = asyncio.ensure_future(client.write({"index": index, "data": bytes(size)}))
            await until(
                lambda w=write: w.done() or protocol.write_paused,
                "the write to go or wait",
            )
            if not write.done():
                break
            await write
            index += 1
            assert index < 4096, "no write ever waited"
        closing = asyncio.ensure_future(client.close())
        await until(lambda: protocol.closing, "close() to start")
        go.set()  # the peer reads now: close() can flush
        outcome = await within(asyncio.gather(write, return_exceptions=True), "the write")
        await within(closing, "close()")
        await until(lambda: served.tasks and all(t.done() for t in served.tasks), "the reader")
    if isinstance(outcome[0], BaseException):
        assert isinstance(outcome[0], CommClosedError), outcome
        assert received == list(range(index)), (index, received[-3:])
    else:
        assert outcome[0] > size
        assert received == list(range(index + 1)), (index, received[-3:])
    if size < 64 * 1024:
        # One buffer, all of it with the transport before the wait: the write keeps it.
        assert not isinstance(outcome[0], BaseException), outcome
