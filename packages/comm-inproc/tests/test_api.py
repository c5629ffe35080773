"""The inproc backend through comm_core.connect() and comm_core.listen()."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

import comm_core
from comm_core import (
    PROTOCOL_VERSION,
    AddressError,
    Capability,
    Comm,
    CommClosedError,
    ConnectError,
    ConnectTimeoutError,
    Listener,
)
from comm_inproc import InProcBackend, InProcComm, InProcConnector, InProcListener, __version__

HOST = socket.gethostname()
PID = os.getpid()
ADDRESS = re.compile(rf"inproc://{re.escape(HOST)}/{PID}/(\d+)")


class Echo:
    """A handler that echoes every message until the peer closes, then closes its end."""

    def __init__(self) -> None:
        self.comms: list[Comm] = []
        self.accepted = asyncio.Event()
        self.finished = asyncio.Event()

    async def __call__(self, comm: Comm) -> None:
        self.comms.append(comm)
        self.accepted.set()
        try:
            async for msg in comm:
                await comm.write(msg)
        finally:
            await comm.close()
            self.finished.set()


@asynccontextmanager
async def serving(addr: str = "inproc://") -> AsyncIterator[tuple[Listener, Echo]]:
    """Listen on *addr* with an :class:`Echo`; on exit, wait for its comms to finish."""
    echo = Echo()
    async with comm_core.listen(addr, echo) as listener:
        yield listener, echo
    if echo.comms:
        await asyncio.wait_for(echo.finished.wait(), 5)


def test_public_names() -> None:
    import comm_inproc

    assert set(comm_inproc.__all__) == {
        "InProcBackend",
        "InProcComm",
        "InProcConnector",
        "InProcListener",
        "__version__",
    }
    assert __version__ == "0.1.0.dev0"


def test_registry_finds_inproc_through_its_entry_point() -> None:
    info = comm_core.backends()["inproc"]
    assert info.backend_class is InProcBackend
    assert info.distribution == "comm-inproc"
    assert info.capabilities == frozenset({Capability.IN_PROCESS})
    backend = comm_core.get_backend("inproc")
    assert isinstance(backend, InProcBackend)
    assert isinstance(backend.get_connector(), InProcConnector)
    assert not backend.encrypted


async def test_echo_through_connect_and_listen() -> None:
    async with serving() as (listener, echo):
        assert isinstance(listener, InProcListener)
        async with await comm_core.connect(listener.contact_address, timeout=5) as comm:
            assert isinstance(comm, InProcComm)
            assert comm.handshake_info["protocol"] == PROTOCOL_VERSION
            for i in range(100):
                await comm.write({"i": i})
                assert await comm.read() == {"i": i}
        await asyncio.wait_for(echo.finished.wait(), 5)
        assert echo.comms[0].handshake_info["protocol"] == PROTOCOL_VERSION


async def test_round_trip_preserves_identity() -> None:
    async with (
        serving() as (listener, _),
        await comm_core.connect(listener.contact_address, timeout=5) as comm,
    ):
        msg = {"payload": bytearray(b"not copied"), "items": [object()]}
        await comm.write(msg)
        assert await comm.read() is msg


async def test_ordering_of_many_pipelined_messages() -> None:
    async with (
        serving() as (listener, _),
        await comm_core.connect(listener.contact_address, timeout=5) as comm,
    ):
        n = 20_000
        for i in range(n):
            await comm.write(i)
        assert [await comm.read() for _ in range(n)] == list(range(n))


async def test_addresses() -> None:
    async with serving() as (listener, echo), serving() as (other, _):
        assert ADDRESS.fullmatch(listener.contact_address)
        assert listener.listen_address == listener.contact_address
        assert other.contact_address != listener.contact_address
        assert ADDRESS.fullmatch(other.contact_address)
        async with await comm_core.connect(listener.contact_address, timeout=5) as comm:
            await asyncio.wait_for(echo.accepted.wait(), 5)
            server = echo.comms[0]
            assert comm.peer_address == listener.contact_address == server.local_address
            assert comm.local_address == server.peer_address
            assert ADDRESS.fullmatch(comm.local_address)
            assert comm.local_address not in (listener.contact_address, other.contact_address)
            assert comm.same_host
            assert server.same_host
            assert comm_core.get_address_host(comm.local_address) == HOST


async def test_each_listen_on_empty_location_picks_a_fresh_address() -> None:
    listeners = [comm_core.listen("inproc://", Echo()) for _ in range(5)]
    for listener in listeners:
        await listener
    try:
        addresses = [listener.contact_address for listener in listeners]
        assert len(set(addresses)) == 5
        assert all(ADDRESS.fullmatch(addr) for addr in addresses)
    finally:
        for listener in listeners:
            listener.stop()


async def test_listen_on_explicit_address() -> None:
    addr = f"inproc://{HOST}/{PID}/987654321"
    async with serving(addr) as (listener, _):
        assert listener.contact_address == addr
        async with await comm_core.connect(addr, timeout=5) as comm:
            await comm.write("x")
            assert await comm.read() == "x"


async def test_explicit_address_with_leading_zeros_is_the_same_address() -> None:
    async with serving(f"inproc://{HOST}/{PID}/0987654320") as (listener, _):
        assert listener.contact_address == f"inproc://{HOST}/{PID}/987654320"
        async with await comm_core.connect(listener.contact_address, timeout=5) as comm:
            await comm.write(1)
            assert await comm.read() == 1


async def test_listening_twice_on_one_address_raises() -> None:
    async with serving() as (listener, _):
        addr = listener.contact_address
        second = comm_core.listen(addr, Echo())
        with pytest.raises(ConnectError, match=re.escape(addr)) as info:
            await second.start()
        assert "in use" in str(info.value)
        second.stop()  # a listener that never started stops quietly
    # Free again once the first one stopped.
    async with serving(addr) as (again, _):
        assert again.contact_address == addr


async def test_listening_on_an_address_of_another_process_raises() -> None:
    addr = f"inproc://{HOST}/{PID + 1}/1"
    listener = comm_core.listen(addr, Echo())
    with pytest.raises(ConnectError, match=re.escape(addr)):
        await listener.start()
    listener.stop()


async def test_start_and_stop_are_idempotent() -> None:
    listener = comm_core.listen("inproc://", Echo())
    await listener.start()
    addr = listener.contact_address
    await listener.start()
    assert listener.contact_address == addr
    listener.stop()
    listener.stop()
    # A stopped listener may start again, on the same address.
    await listener.start()
    assert listener.contact_address == addr
    listener.stop()


async def test_connect_to_unserved_address_times_out_after_retries() -> None:
    addr = f"inproc://{HOST}/{PID}/999999999"
    with pytest.raises(ConnectTimeoutError) as info:
        await comm_core.connect(addr, timeout=0.2)
    assert info.value.attempts > 1
    assert info.value.address == addr
    cause = info.value.__cause__
    assert isinstance(cause, ConnectError)
    assert "refused" in str(cause)
    assert addr in str(cause)


async def test_connect_to_another_process_is_refused() -> None:
    addr = f"inproc://{HOST}/{PID + 1}/1"
    with pytest.raises(ConnectTimeoutError) as info:
        await comm_core.connect(addr, timeout=0.05)
    assert "process" in str(info.value.__cause__)


async def test_connect_to_a_stopped_listener_is_refused() -> None:
    async with serving() as (listener, _):
        addr = listener.contact_address
    with pytest.raises(ConnectTimeoutError) as info:
        await comm_core.connect(addr, timeout=0.2)
    assert info.value.attempts > 1
    assert "refused" in str(info.value.__cause__)


async def test_connect_succeeds_once_the_listener_starts() -> None:
    addr = f"inproc://{HOST}/{PID}/987654322"
    echo = Echo()
    listener = comm_core.listen(addr, echo)
    connecting = asyncio.ensure_future(comm_core.connect(addr, timeout=5))
    await asyncio.sleep(0)
    assert not connecting.done()  # refused so far, retrying
    await listener.start()
    try:
        async with await connecting as comm:
            await comm.write("late")
            assert await comm.read() == "late"
        await asyncio.wait_for(echo.finished.wait(), 5)
    finally:
        listener.stop()


async def test_stop_keeps_accepted_comms_open() -> None:
    echo = Echo()
    async with comm_core.listen("inproc://", echo) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
    # The listener is stopped; the comm still works.
    await comm.write("still here")
    assert await comm.read() == "still here"
    await comm.close()
    await asyncio.wait_for(echo.finished.wait(), 5)


async def test_server_close_wakes_client_read_and_client_sees_closed() -> None:
    accepted: asyncio.Future[Comm] = asyncio.get_running_loop().create_future()

    async def handler(comm: Comm) -> None:
        await comm.write("bye")
        await comm.close()
        accepted.set_result(comm)

    async with comm_core.listen("inproc://", handler) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
        await accepted
        assert comm.closed()  # without reading
        assert await comm.read() == "bye"  # written before the close
        with pytest.raises(CommClosedError):
            await comm.read()
        await comm.close()


async def test_client_close_ends_the_servers_async_for() -> None:
    async with serving() as (listener, echo):
        comm = await comm_core.connect(listener.contact_address, timeout=5)
        await comm.close()
        await asyncio.wait_for(echo.finished.wait(), 5)
        assert echo.comms[0].closed()


async def test_garbage_collected_client_comm_warns() -> None:
    async with serving() as (listener, echo):
        comm = await comm_core.connect(listener.contact_address, timeout=5)
        await asyncio.wait_for(echo.accepted.wait(), 5)
        cycle: list[object] = [comm]
        cycle.append(cycle)  # only the cycle collector can free the comm now
        del comm, cycle
        with pytest.warns(ResourceWarning, match="garbage-collected while open"):
            gc.collect()
        await asyncio.wait_for(echo.finished.wait(), 5)  # the server saw the abort


async def test_require_encryption_accepts_inproc() -> None:
    async with serving() as (listener, _):
        comm = await comm_core.connect(listener.contact_address, timeout=5, require_encryption=True)
        await comm.close()


@pytest.mark.parametrize(
    "loc",
    [
        "host",
        "host/1",
        "host/1/2/3",
        "/1/2",
        "host/x/2",
        "host/1/y",
        "host/-1/2",
        "host/1/2.0",
        "host/1/ 2",
        "host/\u0661/2",  # a non-ASCII digit
    ],
)
async def test_malformed_addresses_raise_address_error(loc: str) -> None:
    addr = f"inproc://{loc}"
    with pytest.raises(AddressError, match=re.escape(repr(addr))):
        await comm_core.connect(addr, timeout=5)
    with pytest.raises(AddressError, match=re.escape(repr(addr))):
        comm_core.listen(addr, Echo())
    with pytest.raises(AddressError, match=re.escape(repr(addr))):
        comm_core.get_address_host(addr)
    with pytest.raises(AddressError, match=re.escape(repr(addr))):
        comm_core.resolve_address(addr)


async def test_connect_to_empty_location_raises_address_error() -> None:
    with pytest.raises(AddressError, match="inproc://"):
        await comm_core.connect("inproc://", timeout=5)


def test_address_functions() -> None:
    addr = f"inproc://{HOST}/{PID}/7"
    assert comm_core.get_address_host(addr) == HOST
    assert comm_core.get_address_host("inproc://") == HOST
    assert comm_core.get_address_host("inproc://other/1/2") == "other"
    with pytest.raises(AddressError, match="no port"):
        comm_core.get_address_host_port(addr)
    assert comm_core.resolve_address(addr) == addr
    assert comm_core.get_local_address_for(addr) == f"inproc://{HOST}/{PID}/0"


def test_unstarted_listener_on_empty_location_has_no_address() -> None:
    listener = comm_core.listen("inproc://", Echo())
    with pytest.raises(ValueError, match="until started"):
        listener.contact_address  # noqa: B018
    assert "not started" in repr(listener)
    listener.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_forked_child_does_not_inherit_listeners() -> None:
    if threading.active_count() > 1:
        pytest.skip("fork() with other threads running is unsafe")

    async def start() -> Listener:
        return await comm_core.listen("inproc://", Echo())

    listener = asyncio.run(start())
    try:
        addr = listener.contact_address
        backend = comm_core.get_backend("inproc")
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            code = 1
            try:
                asyncio.run(backend.get_connector().connect(addr[len("inproc://") :]))
            except ConnectError as exc:
                code = 0 if "refused" in str(exc) else 2
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        listener.stop()
