"""Helpers shared by comm-tcp's tests: addresses, listeners, raw sockets, child processes.

Fixtures live in ``conftest.py``; this module holds what test modules import
(pytest discourages importing ``conftest``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

import comm_core
from comm_core import Comm, CommClosedError, Listener
from comm_core.protocol import PREAMBLE, FrameDecoder, decode_message
from comm_core.testing import echo_handler, within

_T = TypeVar("_T")

MiB = 2**20
IPV4 = "127.0.0.1"
IPV6 = "::1"
#: How long a test waits for something that should happen.
EVENT_TIMEOUT = 10.0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((IPV6, 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback")
needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def tcp_address(host: str, port: int) -> str:
    """``tcp://host:port``, with an IPv6 host in brackets."""
    return f"tcp://{comm_core.unparse_host_port(host, port)}"


async def hold(comm: Comm) -> None:
    """A handler that never reads; the comm stays open until the test ends (see Served)."""


class Served:
    """A started listener and the comms its handler was given.

    ``await served.accepted()`` returns the next server-side comm. The handler
    runs in the listener's task; when the ``serving`` block ends the listener
    stops, every handler must return, and comms still open are aborted.
    """

    def __init__(self, handler: Callable[[Comm], Awaitable[None]]) -> None:
        self.handler = handler
        self.listener: Listener | None = None
        self.calls = 0
        self.comms: list[Comm] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors: list[BaseException] = []
        self.ending = asyncio.Event()
        self._queue: asyncio.Queue[Comm] = asyncio.Queue()

    async def __call__(self, comm: Comm) -> None:
        self.calls += 1
        self.comms.append(comm)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self._queue.put_nowait(comm)
        try:
            if self.handler is hold:
                await self.ending.wait()
            else:
                await self.handler(comm)
        except CommClosedError:
            pass  # the peer went away: normal for a handler
        except BaseException as exc:
            self.errors.append(exc)
            raise

    @property
    def port(self) -> int:
        assert self.listener is not None
        port = self.listener.port  # type: ignore[attr-defined]
        assert isinstance(port, int)
        return port

    def address(self, host: str = IPV4) -> str:
        """The listener's address on the loopback host *host* (never its contact address)."""
        return tcp_address(host, self.port)

    async def accepted(self) -> Comm:
        return await within(self._queue.get(), "the listener to hand over a comm")

    async def finish(self, *, clean: bool) -> None:
        self.ending.set()
        pending = {t for t in self.tasks if not t.done() and t is not asyncio.current_task()}
        if pending and clean:
            _, pending = await asyncio.wait(pending, timeout=EVENT_TIMEOUT)
        for comm in self.comms:
            comm.abort()
        if pending:
            _, still = await asyncio.wait(pending, timeout=EVENT_TIMEOUT)
            for task in still:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if clean:
                raise AssertionError(f"{len(pending)} handler(s) did not return when asked to")
        if clean and self.errors:
            raise AssertionError(f"a handler failed: {self.errors[0]!r}") from self.errors[0]


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Comm], Awaitable[None]] = echo_handler,
    address: str = f"tcp://{IPV4}:0",
    **listen_kwargs: Any,
) -> AsyncIterator[Served]:
    """Listen on *address* with *handler* for the duration of the block.

    On exit, the listener stops and the handlers must return; their comms are
    aborted. Use :func:`hold` for a handler that keeps its comm and never reads.
    """
    served = Served(handler)
    listener = comm_core.listen(address, served, **listen_kwargs)
    served.listener = listener
    await listener.start()
    try:
        yield served
    except BaseException:
        listener.stop()
        await served.finish(clean=False)
        raise
    listener.stop()
    await served.finish(clean=True)


@contextlib.asynccontextmanager
async def connected(address: str, **kwargs: Any) -> AsyncIterator[Comm]:
    """A comm to *address* (short connect timeout), aborted if the block fails."""
    kwargs.setdefault("timeout", EVENT_TIMEOUT)
    comm = await comm_core.connect(address, **kwargs)
    try:
        yield comm
    except BaseException:
        comm.abort()
        raise
    await comm.close()


async def ping(comm: Comm, payload: Any = "ping") -> None:
    """Write a message to an echo server and check the reply."""
    msg = {"op": "ping", "payload": payload}
    await comm.write(msg)
    reply = await within(comm.read(), "the echo of a ping")
    assert reply == msg


async def read_until_closed(
    sock: socket.socket, limit: int = 1 << 20, timeout: float = EVENT_TIMEOUT
) -> tuple[bytes, str]:
    """Read from non-blocking *sock* until the peer closes it; ``(data, "eof"|"reset")``.

    Fails the test if the peer sends more than *limit* bytes or keeps the
    connection open for *timeout* seconds.
    """
    loop = asyncio.get_running_loop()
    data = bytearray()

    async def drain() -> str:
        while len(data) <= limit:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except (ConnectionResetError, ConnectionAbortedError):
                return "reset"
            if not chunk:
                return "eof"
            data.extend(chunk)
        pytest.fail(f"the peer sent more than {limit} bytes without closing", pytrace=False)

    how = await within(drain(), "the peer to close the raw connection", timeout)
    return bytes(data), how


def rss() -> int | None:
    """This process's resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def stream_messages(data: bytes) -> list[Any]:
    """The messages in *data*, which must be the comm preamble and whole messages."""
    messages: list[list[Any]] = []
    decoder = FrameDecoder(messages.append, max_message_size=1 << 20)
    view = memoryview(data)
    while view.nbytes:
        buf = decoder.get_buffer(view.nbytes)
        n = min(buf.nbytes, view.nbytes)
        buf[:n] = view[:n]
        decoder.buffer_updated(n)
        view = view[n:]
    assert data.startswith(PREAMBLE), data[:16]
    return [decode_message(frames) for frames in messages]


def server_greeting(data: bytes) -> dict[str, Any]:
    """What a listener sends before hearing from its peer: the preamble, then its handshake.

    Fails the test unless *data* is exactly that.
    """
    messages = stream_messages(data)
    assert len(messages) == 1, f"{len(messages)} messages after the preamble"
    info = messages[0]
    assert isinstance(info, dict), info
    assert info["protocol"] == 1, info
    return info


def sockopt(comm: Comm, level: int, name: int) -> int:
    """The value of a socket option on *comm*'s socket."""
    sock = comm.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    value = sock.getsockopt(level, name)
    assert isinstance(value, int)
    return value


async def listener_turns_options_off() -> None:
    """Check that a listener made with Nagle and keepalive off, and a dead-peer timeout
    of 12 s, accepts connections with those options, while its client keeps the defaults."""
    async with (
        serving(hold, nodelay=False, keepalive=False, dead_peer_timeout=12) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()
        assert sockopt(server, socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sockopt(server, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sockopt(server, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12_000
        assert sockopt(client, socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sockopt(client, socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
        assert server.extra_info["nodelay"] is False
