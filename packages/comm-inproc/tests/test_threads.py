"""Comms whose ends run on different event loops, in different threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections import deque
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

import pytest

import comm_core
from comm_core import Comm, CommClosedError, ConnectTimeoutError
from comm_inproc import InProcComm

T = TypeVar("T")

TIMEOUT = 10  # seconds; only reached if a wakeup is lost


@pytest.fixture(autouse=True)
def _frequent_thread_switches() -> Iterator[None]:
    """Switch threads far more often than usual, to hit the wakeup races."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


class LoopThread:
    """An event loop running in a thread of its own, for the length of a ``with`` block.

    On exit the loop is stopped, its leftover tasks are cancelled (and reported),
    the loop is closed and the thread joined.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="loop-thread", daemon=True)
        self.leftover: list[asyncio.Task[Any]] = []

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.leftover = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in self.leftover:
            task.cancel()
        self.loop.run_until_complete(
            asyncio.gather(*self.leftover, self.loop.shutdown_asyncgens(), return_exceptions=True)
        )
        self.loop.close()

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the loop thread did not stop"
        if exc_type is None:
            assert not self.leftover, f"tasks left running in the loop thread: {self.leftover}"

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the thread's loop and await its result from the calling loop."""
        return await asyncio.wait_for(asyncio.wrap_future(self.submit(coro)), TIMEOUT)


async def echo_all(comm: Comm) -> int:
    """Echo until the peer closes; return the number of messages."""
    count = 0
    async for msg in comm:
        await comm.write(msg)
        count += 1
    await comm.close()
    return count


async def test_listener_in_another_thread() -> None:
    finished: concurrent.futures.Future[tuple[int, int]] = concurrent.futures.Future()

    async def handler(comm: Comm) -> None:
        count = await echo_all(comm)
        finished.set_result((threading.get_ident(), count))

    async def start_listener() -> comm_core.Listener:
        return await comm_core.listen("inproc://", handler)

    with LoopThread() as other:
        listener = await other.run(start_listener())
        try:
            comm = await comm_core.connect(listener.contact_address, timeout=TIMEOUT)
            for i in range(2_000):  # round trips
                await comm.write(i)
                assert await comm.read() == i
            sent = [[i] for i in range(10_000)]  # pipelined
            for msg in sent:
                await comm.write(msg)
            for msg in sent:
                assert await comm.read() is msg
            await comm.close()
            ident, count = await asyncio.wait_for(asyncio.wrap_future(finished), TIMEOUT)
        finally:
            await other.run(_stop(listener))
    assert ident == other.thread.ident  # the handler ran on the listener's loop
    assert count == 12_000


async def _stop(listener: comm_core.Listener) -> None:
    listener.stop()


async def test_connect_from_another_thread() -> None:
    served = asyncio.Event()

    async def handler(comm: Comm) -> None:
        await echo_all(comm)
        served.set()

    async def client(addr: str) -> list[Any]:
        async with await comm_core.connect(addr, timeout=TIMEOUT) as comm:
            got = []
            for i in range(1_000):
                await comm.write(i)
                got.append(await comm.read())
            return got

    async with comm_core.listen("inproc://", handler) as listener:
        with LoopThread() as other:
            got = await other.run(client(listener.contact_address))
        await asyncio.wait_for(served.wait(), TIMEOUT)
    assert got == list(range(1_000))


async def test_pair_split_across_threads_in_bursts() -> None:
    # Bursts of writes from each side, read on the other: exercises the wakeup
    # races (writer appends while the reader is about to wait) many times.
    a, b = InProcComm.pair()
    rounds, burst = 300, 25

    async def remote() -> None:
        for r in range(rounds):
            got = [await b.read() for _ in range(burst)]
            assert got == [(r, i) for i in range(burst)]
            for i in range(burst):
                await b.write((r, -i))

    with LoopThread() as other:
        done = asyncio.wrap_future(other.submit(remote()))
        for r in range(rounds):
            for i in range(burst):
                await a.write((r, i))
            got = [await asyncio.wait_for(a.read(), TIMEOUT) for _ in range(burst)]
            assert got == [(r, -i) for i in range(burst)]
        await asyncio.wait_for(done, TIMEOUT)
    await a.close()
    await b.close()


async def read_until_closed(comm: Comm, into: list[Any]) -> None:
    """Append what *comm* reads to *into* until a read raises."""
    while True:
        into.append(await asyncio.wait_for(comm.read(), TIMEOUT))


async def test_close_from_another_loop_ends_the_readers_stream() -> None:
    # The other thread writes k messages then closes; this side must read all k,
    # then CommClosedError, whichever of the read and the close comes first.
    for k in range(100):
        a, b = InProcComm.pair()

        async def produce(count: int = k, comm: InProcComm = b) -> None:
            for i in range(count):
                await comm.write(i)
            await comm.close()

        with LoopThread() as other:
            other.submit(produce())
            got: list[Any] = []
            with pytest.raises(CommClosedError):
                await read_until_closed(a, got)
        assert got == list(range(k))
        assert a.closed()
        await a.close()


@pytest.mark.parametrize("side", ["peer", "self"])
async def test_abort_from_a_thread_without_a_loop_wakes_a_pending_read(side: str) -> None:
    a, b = InProcComm.pair()
    task = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    assert not task.done()
    thread = threading.Thread(target=(a if side == "peer" else b).abort)
    thread.start()
    with pytest.raises(CommClosedError):
        await asyncio.wait_for(task, TIMEOUT)
    thread.join(TIMEOUT)
    assert a.closed()
    assert b.closed()


async def test_listener_whose_loop_closed_refuses() -> None:
    async def start_listener() -> comm_core.Listener:
        return await comm_core.listen("inproc://", echo_all)

    with LoopThread() as other:
        listener = await other.run(start_listener())
    # That loop is closed now, and the listener was never stopped.
    try:
        with pytest.raises(ConnectTimeoutError) as info:
            await comm_core.connect(listener.contact_address, timeout=0.1)
        assert "closed" in str(info.value.__cause__)
    finally:
        listener.stop()


class _RacingDeque(deque):  # type: ignore[type-arg]
    """A deque whose ``n``-th truth test runs *action* just after finding it empty."""

    def __init__(self, n: int, action: Any) -> None:
        super().__init__()
        self.tests = 0
        self.n = n
        self.action = action

    def __bool__(self) -> bool:
        result = len(self) > 0
        self.tests += 1
        if self.tests == self.n:
            self.action()
        return result


async def test_write_from_another_thread_just_before_the_reader_waits_is_not_lost() -> None:
    # Forces the lost-wakeup interleaving: the reader finds its queue empty,
    # then, before it publishes its waiter, a writer on another thread appends
    # and finds no waiter to wake. The reader's second check must catch it.
    a, b = InProcComm.pair()

    def write_from_another_thread() -> None:
        thread = threading.Thread(target=asyncio.run, args=(a.write("raced"),))
        thread.start()
        thread.join(TIMEOUT)

    racing = _RacingDeque(2, write_from_another_thread)  # 1: fast path, 2: slow path
    b._in.queue = b._rq = a._wq = racing
    assert await asyncio.wait_for(b.read(), TIMEOUT) == "raced"
    assert racing.tests >= 3
    await a.close()
    await b.close()


async def test_a_write_racing_close_from_another_thread_keeps_its_word() -> None:
    """Writes on one thread while another thread closes the comm: each write that returned
    is read by the peer, none that raised CommClosedError is (at most once, as for
    stream comms: see Comm.write)."""
    a, b = InProcComm.pair()
    returned: list[int] = []
    closed = threading.Event()

    async def write_until_closed() -> None:
        for index in range(1_000_000):
            try:
                await a.write(index)
            except CommClosedError:
                return
            returned.append(index)
            if index == 1000:
                closed.set()  # let the other thread close now, amid the writes
        raise AssertionError("close() never came")

    with LoopThread() as other:
        writing = other.submit(write_until_closed())
        await asyncio.wait_for(asyncio.to_thread(closed.wait, TIMEOUT), TIMEOUT)
        a.abort()  # from this thread, while the writes go on in the other
        await asyncio.wait_for(asyncio.wrap_future(writing), TIMEOUT)
    received = []
    async for msg in b:
        received.append(msg)
    assert received == returned
    assert len(returned) > 1000
