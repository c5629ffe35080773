"""InProcComm on its own: a connected pair, without listener or handshake."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comm_core import Comm, CommClosedError
from comm_core.testing.plugin import run
from comm_inproc import InProcComm


async def pending(aw: Any) -> asyncio.Future[Any]:
    """Start *aw* in a task and let it run until it suspends; it must not finish."""
    task: asyncio.Future[Any] = asyncio.ensure_future(aw)
    await asyncio.sleep(0)  # one loop iteration: the task runs up to its first suspension
    assert not task.done()
    return task


async def test_write_returns_zero_and_read_gets_the_same_object() -> None:
    a, b = InProcComm.pair()
    msg = {"op": "ping", "data": [1, 2, 3]}
    assert await a.write(msg) == 0
    got = await b.read()
    assert got is msg  # aliasing: no copy
    await a.close()
    await b.close()


async def test_unserializable_objects_pass_through() -> None:
    a, b = InProcComm.pair()
    obj = object()
    await a.write(obj, serializers=[], on_error="raise")
    assert await b.read(deserializers=[]) is obj
    await a.close()
    await b.close()


async def test_order_of_many_messages_both_ways() -> None:
    a, b = InProcComm.pair()
    n = 10_000
    for i in range(n):
        await a.write(i)
        await b.write(-i)
    assert [await b.read() for _ in range(n)] == list(range(n))
    assert [await a.read() for _ in range(n)] == [-i for i in range(n)]
    await a.close()
    await b.close()


async def test_pending_read_is_woken_by_a_write() -> None:
    a, b = InProcComm.pair()
    task = await pending(b.read())
    await a.write("hello")
    assert await task == "hello"
    await a.close()
    await b.close()


async def test_concurrent_reader_and_writer_tasks() -> None:
    a, b = InProcComm.pair()
    n = 5_000

    async def reader() -> list[int]:
        return [await b.read() for _ in range(n)]

    async def writer() -> None:
        for i in range(n):
            await a.write(i)
            if i % 7 == 0:
                await asyncio.sleep(0)  # interleave with the reader

    got, _ = await asyncio.gather(reader(), writer())
    assert got == list(range(n))
    await a.close()
    await b.close()


@pytest.mark.parametrize("closer", ["peer", "self"])
@pytest.mark.parametrize("how", ["close", "abort"])
async def test_close_wakes_a_pending_read(closer: str, how: str) -> None:
    a, b = InProcComm.pair()
    task = await pending(b.read())
    target = a if closer == "peer" else b
    if how == "close":
        await target.close()
    else:
        target.abort()
    with pytest.raises(CommClosedError):
        await task
    assert a.closed()
    assert b.closed()


async def test_peer_close_is_seen_at_once_without_reading() -> None:
    a, b = InProcComm.pair()
    assert not a.closed()
    assert not b.closed()
    await a.close()
    assert a.closed()
    assert b.closed()  # no read needed
    with pytest.raises(CommClosedError, match="peer"):
        await b.write("too late")


async def test_messages_written_before_close_are_still_read() -> None:
    a, b = InProcComm.pair()
    sent = [object() for _ in range(5)]
    for msg in sent:
        await a.write(msg)
    await a.close()
    assert b.closed()
    for msg in sent:
        assert await b.read() is msg
    with pytest.raises(CommClosedError):
        await b.read()
    with pytest.raises(CommClosedError):  # and again: it stays closed
        await b.read()


async def test_read_and_write_after_own_close_raise_at_once() -> None:
    a, b = InProcComm.pair()
    await b.write("unread")  # queued for a; dropped by a's own close
    await a.close()
    with pytest.raises(CommClosedError, match="this comm is closed"):
        await a.read()
    with pytest.raises(CommClosedError, match="this comm is closed"):
        await a.write("x")


async def test_close_and_abort_are_idempotent() -> None:
    a, b = InProcComm.pair()
    await a.close()
    await a.close()
    a.abort()
    b.abort()
    await b.close()
    assert a.closed()
    assert b.closed()


async def test_cancelled_read_aborts_the_comm() -> None:
    a, b = InProcComm.pair()
    task = await pending(b.read())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.closed()
    assert a.closed()
    with pytest.raises(CommClosedError):
        await a.write("x")


async def test_read_cancelled_after_its_wakeup_still_aborts() -> None:
    a, b = InProcComm.pair()
    task = await pending(b.read())
    await a.write("woken")  # the waiter is done, the task not yet resumed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.closed()


async def test_async_for_ends_when_the_peer_closes() -> None:
    a, b = InProcComm.pair()

    async def produce() -> None:
        for i in range(100):
            await a.write(i)
            if i % 10 == 0:
                await asyncio.sleep(0)
        await a.close()

    async def consume() -> list[Any]:
        return [msg async for msg in b]

    got, _ = await asyncio.gather(consume(), produce())
    assert got == list(range(100))
    await b.close()


async def test_async_with_closes() -> None:
    a, b = InProcComm.pair()
    async with a as entered:
        assert entered is a
    assert a.closed()
    assert b.closed()


async def test_addresses_and_same_host() -> None:
    a, b = InProcComm.pair()
    assert isinstance(a, Comm)
    assert a.local_address == b.peer_address
    assert b.local_address == a.peer_address
    assert a.local_address != b.local_address
    assert a.local_address.startswith("inproc://")
    assert a.same_host
    assert b.same_host
    assert "open" in repr(a)
    await a.close()
    assert "closed" in repr(a)
    await b.close()


async def test_garbage_collected_open_comm_warns_and_aborts_the_peer() -> None:
    a, b = InProcComm.pair()
    task = await pending(b.read())
    cycle: list[object] = [a]
    cycle.append(cycle)  # only the cycle collector can free the comm now
    del a, cycle
    with pytest.warns(ResourceWarning, match="garbage-collected while open"):
        gc.collect()
    with pytest.raises(CommClosedError):
        await task
    assert b.closed()


async def test_garbage_collected_closed_comm_does_not_warn() -> None:
    a, b = InProcComm.pair()
    await a.close()
    del a
    gc.collect()  # filterwarnings=error would turn a ResourceWarning into a failure
    await b.close()


# Messages that hypothesis generates: nested, mutable, and unhashable values.
_messages = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    msgs=st.lists(_messages, max_size=30),
    reads_between=st.lists(st.integers(min_value=0, max_value=3), max_size=30),
)
def test_any_interleaving_delivers_the_same_objects_in_order(
    msgs: list[Any], reads_between: list[int]
) -> None:
    async def scenario() -> None:
        a, b = InProcComm.pair()
        received: list[Any] = []
        steps = iter(reads_between)
        for written, msg in enumerate(msgs, 1):
            await a.write(msg)
            for _ in range(next(steps, 0)):
                if len(received) < written:
                    received.append(await b.read())
        await a.close()
        received.extend([m async for m in b])
        assert len(received) == len(msgs)
        assert all(got is sent for got, sent in zip(received, msgs, strict=True))

    run(scenario())
