"""Helpers of the hardening suite: transports, listeners, waiting, and process figures.

Fixtures live in ``conftest.py``; this module holds what test modules import.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

import comm_core
from comm_core import Comm, CommClosedError, Listener, testing

_T = TypeVar("_T")

MiB = 2**20
KiB = 2**10
IPV4 = "127.0.0.1"
#: How long a test waits for something that should happen.
EVENT_TIMEOUT = 20.0
#: The handshake timeout of the listeners that hostile peers attack.
HANDSHAKE_TIMEOUT = 2.0

#: Every figure measured in this run, written to hardening/results/ at its end.
FIGURES: list[dict[str, Any]] = []


def record(name: str, value: float, unit: str, **context: Any) -> None:
    """Keep one measured figure for the results files (and print it, seen with ``-s``)."""
    FIGURES.append({"name": name, "value": value, "unit": unit, **context})
    print(f"FIGURE {name} = {value:g} {unit} {context or ''}")


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux only)"
)


@dataclass(frozen=True)
class Transport:
    """A transport under test: its scheme and the arguments both ends need."""

    scheme: str
    args: dict[str, Any] = field(default_factory=dict)
    #: For raw peers of a tls listener: a client context that completes the handshake.
    client_context: ssl.SSLContext | None = None

    def listen_address(self) -> str:
        return f"{self.scheme}://{IPV4}:0"

    def address(self, port: int) -> str:
        return f"{self.scheme}://{IPV4}:{port}"


async def within(aw: Awaitable[_T], what: str, timeout: float = EVENT_TIMEOUT) -> _T:
    """:func:`comm_core.testing.within`, with this suite's longer default timeout."""
    return await testing.within(aw, what, timeout)


async def until(predicate: Callable[[], bool], what: str, timeout: float = EVENT_TIMEOUT) -> float:
    """:func:`comm_core.testing.until`, with this suite's longer default timeout."""
    return await testing.until(predicate, what, timeout, interval=0.01)


class Served:
    """A started listener, the comms its handler got, and the handler tasks."""

    def __init__(self, handler: Callable[[Comm], Awaitable[None]]) -> None:
        self.handler = handler
        self.listener: Listener | None = None
        self.comms: list[Comm] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors: list[BaseException] = []
        self.queue: asyncio.Queue[Comm] = asyncio.Queue()
        #: Set when the serving block ends: handlers that hold their comm return.
        self.ending = asyncio.Event()

    async def __call__(self, comm: Comm) -> None:
        self.comms.append(comm)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        self.queue.put_nowait(comm)
        try:
            if self.handler is hold:
                await self.ending.wait()
            else:
                await self.handler(comm)
        except CommClosedError:
            pass  # the peer went away: normal for a handler
        except asyncio.CancelledError:
            raise  # the end of the serving block stops handlers that hold their comm
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def forget(self) -> None:
        """Drop the references to the comms handed over so far (closed or closing)."""
        self.comms.clear()
        while not self.queue.empty():
            self.queue.get_nowait()

    @property
    def port(self) -> int:
        assert self.listener is not None
        port = self.listener.port  # type: ignore[attr-defined]
        assert isinstance(port, int)
        return port

    async def accepted(self) -> Comm:
        return await within(self.queue.get(), "the listener to hand over a comm")


async def echo(comm: Comm) -> None:
    """Write back every message; close when the peer closes."""
    async with comm:
        async for msg in comm:
            await comm.write(msg)


async def hold(comm: Comm) -> None:
    """Keep the comm without reading it until the ``serving`` block ends (see Served)."""
    raise AssertionError("Served runs this handler itself")


@contextlib.asynccontextmanager
async def serving(
    transport: Transport,
    handler: Callable[[Comm], Awaitable[None]] = echo,
    **listen_kwargs: Any,
) -> AsyncIterator[Served]:
    """Listen on the loopback with *handler* for the duration of the block.

    On exit the listener stops, the comms given to the handler are aborted and
    the handler tasks must end.
    """
    served = Served(handler)
    listener = comm_core.listen(
        transport.listen_address(), served, **{**transport.args, **listen_kwargs}
    )
    served.listener = listener
    await listener.start()
    try:
        yield served
    finally:
        listener.stop()
        served.ending.set()
        for comm in served.comms:
            comm.abort()
        pending = set(served.tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=EVENT_TIMEOUT)
            for task in still:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    if served.errors:
        raise AssertionError(f"a handler failed: {served.errors[0]!r}") from served.errors[0]


async def connect(transport: Transport, port: int, **kwargs: Any) -> Comm:
    """A comm to the listener on *port* (a short connect budget)."""
    kwargs.setdefault("timeout", EVENT_TIMEOUT)
    return await comm_core.connect(transport.address(port), **{**transport.args, **kwargs})


async def round_trips(comm: Comm, count: int, payload: Any = "ping") -> list[float]:
    """Make *count* round trips through an echo server; return each one's seconds."""
    loop = asyncio.get_running_loop()
    times = []
    for index in range(count):
        msg = {"i": index, "p": payload}
        start = loop.time()
        await comm.write(msg)
        reply = await comm.read()
        times.append(loop.time() - start)
        assert reply == msg
    return times


def percentile(values: Sequence[float], q: float) -> float:
    """The *q*-th percentile (0-100) of *values*, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def fd_count() -> int:
    """How many file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_of(pid: int) -> int:
    """Resident set size of process *pid* in bytes (Linux)."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def other_tasks() -> set[asyncio.Task[Any]]:
    """The tasks of the running loop other than the current one."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current}


async def settle(baseline_fds: int, baseline_tasks: int, what: str) -> tuple[int, int, float]:
    """Wait until descriptors and tasks are back to their baselines; return them and the time.

    Closing is asynchronous (transports close on the next loop iteration,
    handlers return after their peer's EOF), so this polls, bounded in time.
    """
    seconds = await until(
        lambda: fd_count() <= baseline_fds and len(other_tasks()) <= baseline_tasks,
        f"{what}: descriptors back to {baseline_fds} (now {fd_count()}) and tasks back to "
        f"{baseline_tasks} (now {len(other_tasks())})",
    )
    return fd_count(), len(other_tasks()), seconds
