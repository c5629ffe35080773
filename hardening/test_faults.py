"""Faults in the middle: a proxy cuts, resets, stalls or throttles live comms.

What must hold whatever the fault: a reader gets whole messages, in order,
each once, and then :class:`CommClosedError` (never part of a message, never
one twice); a writer is never blocked past its timeout; and every message
whose ``write()`` returned before an orderly ``close()`` arrives.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import pytest

from comm_core import Comm, CommClosedError
from proxy import Direction, FaultProxy, Link
from support import (
    KiB,
    MiB,
    Transport,
    connect,
    hold,
    percentile,
    record,
    serving,
    until,
    within,
)

#: The dead-peer timeout (TCP_USER_TIMEOUT and keepalive) of the stall tests.
DEAD_PEER_TIMEOUT = 1.0
#: How much later than a deadline an error may come on a busy 2-core machine.
SLACK = 3.0


def messages(seed: int) -> Iterator[dict[str, Any]]:
    """An endless stream of numbered messages of mixed sizes, in-body and out-of-band."""
    rng = random.Random(seed)
    seq = 0
    while True:
        kind = rng.random()
        if kind < 0.5:
            size = rng.randrange(0, 2 * KiB)
        elif kind < 0.8:
            size = rng.randrange(2 * KiB, 64 * KiB)
        else:
            size = rng.randrange(64 * KiB, MiB)
        data = rng.randbytes(size)
        yield {"seq": seq, "digest": hashlib.blake2b(data).hexdigest(), "data": data}
        seq += 1


def check_message(msg: Any, expected_seq: int) -> None:
    """*msg* is the whole message number *expected_seq*: not a part, not a repeat."""
    assert isinstance(msg, dict), msg
    assert msg["seq"] == expected_seq, f"expected message {expected_seq}, got {msg['seq']}"
    assert hashlib.blake2b(bytes(msg["data"])).hexdigest() == msg["digest"], (
        f"message {expected_seq} arrived damaged"
    )


async def read_all(comm: Comm, received: list[int], failed: list[float]) -> None:
    """Read and check messages until the comm fails; note when it did."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            msg = await comm.read()
            check_message(msg, len(received))
            received.append(msg["seq"])
    except CommClosedError:
        failed.append(loop.time())


#: Most messages a test writes into one faulty connection.
MAX_MESSAGES = 20_000


async def write_until_failure(comm: Comm, seed: int, written: list[int]) -> float:
    """Write messages until a write fails; return when it did."""
    loop = asyncio.get_running_loop()
    for msg in messages(seed):
        try:
            await comm.write(msg)
        except CommClosedError:
            return loop.time()
        written.append(msg["seq"])
        if len(written) >= MAX_MESSAGES:
            break
    raise AssertionError(f"{MAX_MESSAGES} writes into a faulty connection all succeeded")


async def proxied_pair(
    transport: Transport, served: Any, proxy: FaultProxy, **connect_args: Any
) -> tuple[Comm, Comm, Link]:
    """A client comm through *proxy*, the server's end of it, and the proxy's link."""
    client = await connect(transport, proxy.port, **connect_args)
    server = await served.accepted()
    link = await within(proxy.accepted(), "the proxy to accept")
    return client, server, link


# -- cut and reset -------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"], ids=["client-writes", "server-writes"])
@pytest.mark.parametrize("fault", ["cut", "reset"])
async def test_cut_or_reset_mid_frame(
    transport: Transport, fault: str, direction: Direction, scale: Any
) -> None:
    """The reader gets a whole prefix of the stream, then CommClosedError; the writer fails.

    Each round cuts (FIN) or resets (RST) the connection after a random number
    of bytes, nearly always in the middle of a frame.
    """
    rounds = scale.count(6)
    rng = random.Random(f"{transport.scheme}-{fault}-{direction}")
    read_delays: list[float] = []
    write_delays: list[float] = []
    delivered = 0
    async with serving(transport, hold) as served, FaultProxy(served.port) as proxy:
        for index in range(rounds):
            client, server, link = await proxied_pair(transport, served, proxy)
            writer, reader = (client, server) if direction == "up" else (server, client)
            try:
                link.inject(fault, direction, after=rng.randrange(1, 3 * MiB))
                received: list[int] = []
                written: list[int] = []
                failed: list[float] = []
                reading = asyncio.ensure_future(read_all(reader, received, failed))
                write_failed = await within(
                    write_until_failure(writer, index, written), "the writer to fail"
                )
                await within(reading, "the reader to fail")
                assert link.triggered.is_set()
                # Every message read was written, whole and in order (checked as read).
                assert received == written[: len(received)]
                delivered += len(received)
                assert link.triggered_at is not None
                read_delays.append(failed[0] - link.triggered_at)
                write_delays.append(write_failed - link.triggered_at)
            finally:
                client.abort()
                server.abort()
    where = {"transport": transport.scheme, "rounds": rounds}
    record(f"faults.{fault}.{direction}.messages_delivered_whole", delivered, "messages", **where)
    record(f"faults.{fault}.{direction}.reader_error_max", round(max(read_delays) * 1e3, 3), "ms",
           **where)  # fmt: skip
    record(f"faults.{fault}.{direction}.writer_error_max", round(max(write_delays) * 1e3, 3),
           "ms", **where)  # fmt: skip
    # Bounded: no reader or writer waits for a timeout to notice a cut or a reset.
    assert max(read_delays) < SLACK, read_delays
    assert max(write_delays) < SLACK, write_delays


async def test_cut_reader_fails_promptly(transport: Transport, scale: Any) -> None:
    """After a cut, a reader waiting for the next message fails at once, not later."""
    rounds = scale.count(10)
    delays: list[float] = []
    loop = asyncio.get_running_loop()
    async with serving(transport, hold) as served, FaultProxy(served.port) as proxy:
        for _ in range(rounds):
            client, server, link = await proxied_pair(transport, served, proxy)
            try:
                reading = asyncio.ensure_future(server.read())
                link.inject("cut", "up", after=100)  # inside the next message's body
                await client.write({"data": bytes(1000)})
                with pytest.raises(CommClosedError):
                    await within(reading, "the reader to fail after the cut")
                assert link.triggered_at is not None
                delays.append(loop.time() - link.triggered_at)
            finally:
                client.abort()
                server.abort()
    assert max(delays) < 1.0, delays
    record("faults.cut.reader_error_p50", round(percentile(delays, 50) * 1e3, 3), "ms",
           transport=transport.scheme, rounds=rounds)  # fmt: skip
    record("faults.cut.reader_error_max", round(max(delays) * 1e3, 3), "ms",
           transport=transport.scheme, rounds=rounds)  # fmt: skip


# -- stall -----------------------------------------------------------------------------------


async def test_stall_fails_the_writer_within_the_dead_peer_timeout(
    transport: Transport, scale: Any
) -> None:
    """A stalled proxy acknowledges nothing more once its buffers are full: the writer's
    TCP_USER_TIMEOUT (``dead_peer_timeout``) ends the connection, and both the blocked
    write and a pending read on that comm raise CommClosedError."""
    args = {"dead_peer_timeout": DEAD_PEER_TIMEOUT}
    loop = asyncio.get_running_loop()
    rounds = scale.count(2)
    async with (
        serving(transport, hold, **args) as served,
        FaultProxy(served.port) as proxy,
    ):
        for index in range(rounds):
            client, server, link = await proxied_pair(transport, served, proxy, **args)
            try:
                link.inject("stall", "up", after=0)
                client_read = asyncio.ensure_future(client.read())
                written: list[int] = []
                start = loop.time()
                failed_at = await within(
                    write_until_failure(client, index, written),
                    "the stalled writer to fail",
                    timeout=DEAD_PEER_TIMEOUT * 10 + 30,
                )
                with pytest.raises(CommClosedError):
                    await within(client_read, "the pending read on the stalled comm to fail")
                assert link.stalled
                # Writes return while the buffers fill; then one blocks until the
                # kernel gives up on the zero window after dead_peer_timeout.
                elapsed = failed_at - start
                assert elapsed <= DEAD_PEER_TIMEOUT + SLACK + 2, elapsed
            finally:
                client.abort()
                server.abort()
            record(
                "faults.stall.writer_error_after",
                round(elapsed, 3),
                "s",
                transport=transport.scheme,
                dead_peer_timeout=DEAD_PEER_TIMEOUT,
                buffered_messages=len(written),
            )


async def test_stall_a_reader_bounds_its_wait_and_the_comm_is_closed(
    transport: Transport,
) -> None:
    """A quiet stall looks like an idle peer at the TCP level (the proxy's kernel answers
    keepalives), so a reader bounds its wait itself; the timeout aborts the comm, and
    every later read or write raises CommClosedError."""
    loop = asyncio.get_running_loop()
    async with serving(transport, hold) as served, FaultProxy(served.port) as proxy:
        client, server, link = await proxied_pair(transport, served, proxy)
        try:
            await client.write({"before": 1})
            assert await within(server.read(), "the message before the stall") == {"before": 1}
            link.inject("stall", "up", after=0)
            await client.write({"after": 2})  # swallowed by the stall
            start = loop.time()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(server.read(), DEAD_PEER_TIMEOUT)
            waited = loop.time() - start
            assert server.closed()
            with pytest.raises(CommClosedError):
                await server.read()
            with pytest.raises(CommClosedError):
                await server.write("after the timeout")
        finally:
            client.abort()
            server.abort()
    record("faults.stall.bounded_read_gave_up_after", round(waited, 3), "s",
           transport=transport.scheme, read_timeout=DEAD_PEER_TIMEOUT)  # fmt: skip


async def test_stall_close_gives_up_after_its_timeout(transport: Transport) -> None:
    """close() flushes what was written, but not for ever: on a stalled connection with
    data still queued it aborts after ``close_timeout`` (10 s by default; 1 s here)."""
    loop = asyncio.get_running_loop()
    async with serving(transport, hold) as served, FaultProxy(served.port) as proxy:
        client, server, link = await proxied_pair(transport, served, proxy)
        try:
            link.inject("stall", "up", after=0)
            client.close_timeout = 1.0  # type: ignore[attr-defined]
            # Write until a write waits for the stalled peer (backpressure)...
            written: list[int] = []
            writing = asyncio.ensure_future(write_until_failure(client, 3, written))
            protocol = client.protocol  # type: ignore[attr-defined]
            await until(lambda: protocol.write_paused, "the writer to wait for the stall")
            # ...then close while data is still queued: the waiting write fails at once.
            start = loop.time()
            await within(client.close(), "close() on a stalled connection", timeout=10)
            took = loop.time() - start
            assert client.closed()
            await within(writing, "the waiting write to fail")
        finally:
            client.abort()
            server.abort()
    assert 0.5 <= took <= 1.0 + SLACK, took
    record("faults.stall.close_returned_after", round(took, 3), "s",
           transport=transport.scheme, close_timeout=1.0)  # fmt: skip


# -- throttle and orderly close -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["pass-through", "throttle"])
async def test_everything_written_before_close_arrives(
    transport: Transport, path: str, scale: Any
) -> None:
    """Every message whose write() returned before close() arrives, whole, in order, once."""
    total_bytes = scale.count(6 * MiB)
    rate = 8 * MiB  # bytes per second through the throttle
    loop = asyncio.get_running_loop()
    async with serving(transport, hold) as served, FaultProxy(served.port) as proxy:
        client, server, link = await proxied_pair(transport, served, proxy)
        try:
            if path == "throttle":
                link.inject("throttle", "up", rate=rate)
            received: list[int] = []
            failed: list[float] = []
            reading = asyncio.ensure_future(read_all(server, received, failed))
            written: list[int] = []
            size = 0
            start = loop.time()
            write_times = []
            for msg in messages(7):
                before = loop.time()
                await client.write(msg)
                write_times.append(loop.time() - before)
                written.append(msg["seq"])
                size += len(msg["data"])
                if size >= total_bytes:
                    break
            await within(client.close(), "close() to flush")
            await within(reading, "the reader to get everything and then the end")
            elapsed = loop.time() - start
            assert received == written
        finally:
            client.abort()
            server.abort()
    record(f"faults.{path}.close_delivered_messages", len(received), "messages",
           transport=transport.scheme, megabytes=round(size / MiB, 1),
           seconds=round(elapsed, 2))  # fmt: skip
    record(f"faults.{path}.write_p99", round(percentile(write_times, 99) * 1e3, 3), "ms",
           transport=transport.scheme)  # fmt: skip
