"""Opening and accepting connections on asyncio's selector loop without create_connection
or create_server (``comm_tcp._direct``), and the public API that every other loop uses.

The rest of the suite runs on asyncio (the direct path) and uvloop (the public API);
here the public API is also forced on asyncio, and the direct path's own cases are
provoked for real: a burst of connections, running out of descriptors, a connect that
the listener's full queue leaves pending.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm, ConnectError
from comm_core.protocol import PREAMBLE, encode_message
from comm_core.sockets import AcceptLoop
from comm_core.stream import StreamComm
from comm_core.testing import until
from comm_tcp import SocketOptions, TCPListener, _direct
from tcp_support import (
    HAS_IPV6,
    IPV4,
    IPV6,
    connected,
    hold,
    needs_ipv6,
    needs_linux,
    ping,
    serving,
    stream_messages,
    tcp_address,
    within,
)

asyncio_only = pytest.mark.comm_loop("asyncio")


def _hello() -> bytes:
    """What a minimal comm client sends first: the preamble and its handshake message."""
    [handshake], _ = encode_message({"protocol": PROTOCOL_VERSION, "library": "test"})
    return PREAMBLE + handshake


async def _receive(sock: socket.socket, size: int) -> bytes:
    """*size* bytes from non-blocking *sock* (fails the test on an early end)."""
    loop = asyncio.get_running_loop()
    received = b""
    while len(received) < size:
        chunk = await within(loop.sock_recv(sock, 1 << 16), "the greeting and message")
        assert chunk, f"the connection ended after {len(received)} of {size} bytes"
        received += chunk
    return received


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["direct", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test on asyncio's loop with the direct path, then with the public API forced."""
    if request.param == "public":
        monkeypatch.setattr(_direct, "socket_transport_factory", lambda loop: None)
    return request.param


# -- which loops take the direct path ---------------------------------------------------


@pytest.mark.parametrize(
    "loop_name",
    [
        pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio")),
        pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop")),
    ],
)
async def test_only_asyncio_selector_loops_take_the_direct_path(loop_name: str) -> None:
    factory = _direct.socket_transport_factory(asyncio.get_running_loop())
    assert (factory is not None) == (loop_name == "asyncio")


def test_numeric_addresses_are_dialled_directly_names_are_resolved() -> None:
    assert _direct.ip_family("127.0.0.1") == socket.AF_INET
    assert _direct.ip_family("::1") == socket.AF_INET6
    assert _direct.ip_family("localhost") is None
    assert _direct.ip_family("127.1") is None  # inet_aton's shorthand: left to getaddrinfo
    assert _direct.ip_family("fe80::1%lo") is None  # scoped: left to getaddrinfo


# -- both paths behave alike --------------------------------------------------------------


@asyncio_only
@pytest.mark.parametrize("host", [IPV4, pytest.param(IPV6, marks=needs_ipv6)])
async def test_round_trip_and_facts_on_both_paths(path: str, host: str) -> None:
    address = tcp_address(host, 0)
    async with serving(hold, address) as served, connected(served.address(host)) as client:
        server = await served.accepted()
        await client.write("hello")
        assert await within(server.read(), "the client's message") == "hello"
        await server.write("back")
        assert await within(client.read(), "the server's message") == "back"
        assert client.extra_info["peername"][:2] == server.extra_info["sockname"][:2]
        assert server.extra_info["peername"][:2] == client.extra_info["sockname"][:2]
        assert client.peer_address == server.local_address
        assert server.peer_address == client.local_address
        for comm in (client, server):
            sock = comm.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            assert comm.extra_info["dead_peer_timeout"] == 30.0
        await server.close()


@asyncio_only
async def test_wildcard_listener_serves_both_families_on_both_paths(path: str) -> None:
    async with serving(address="tcp://:0") as served:
        hosts = [IPV4, IPV6] if HAS_IPV6 else [IPV4]
        for host in hosts:
            async with connected(served.address(host)) as comm:
                await ping(comm)


@asyncio_only
async def test_a_host_name_is_resolved_on_both_paths(path: str) -> None:
    async with serving() as served, connected(tcp_address("localhost", served.port)) as comm:
        await ping(comm)


@asyncio_only
async def test_refused_connection_on_both_paths(path: str) -> None:
    with socket.socket() as probe:
        probe.bind((IPV4, 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        connector = comm_core.get_backend("tcp").get_connector()
        with pytest.raises(ConnectError, match="refused"):
            await within(connector.connect(f"{IPV4}:{port}"), "the refusal")


@asyncio_only
async def test_stopped_listener_closes_its_sockets_on_both_paths(path: str) -> None:
    async with serving() as served:
        listener = served.listener
        assert listener is not None
        address = served.address()
        async with connected(address) as comm:
            await ping(comm)
    assert listener.extra_info["sockets"]
    connector = comm_core.get_backend("tcp").get_connector()
    with pytest.raises(ConnectError):
        await within(connector.connect(address.split("://", 1)[1]), "the refusal")


# -- accepting -----------------------------------------------------------------------------


@asyncio_only
async def test_a_burst_of_connections_is_accepted_in_one_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callbacks = 0
    accept = AcceptLoop.accept_pending

    def counted(self: AcceptLoop) -> None:
        nonlocal callbacks
        callbacks += 1
        accept(self)

    monkeypatch.setattr(AcceptLoop, "accept_pending", counted)
    burst = 50
    clients: list[socket.socket] = []
    try:
        async with serving(hold) as served:
            # The loop does not run until the await below: every connection waits in
            # the listening socket's queue when it is first seen readable.
            for _ in range(burst):
                sock = socket.create_connection((IPV4, served.port))
                clients.append(sock)
                sock.sendall(_hello())
            for _ in range(burst):
                await served.accepted()
            assert callbacks == 1
            assert served.calls == burst
    finally:
        for sock in clients:
            sock.close()


@asyncio_only
@needs_linux
async def test_running_out_of_descriptors_pauses_accepting_then_resumes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    resource = pytest.importorskip("resource")
    caplog.set_level(logging.WARNING, logger="comm_tcp")
    monkeypatch.setattr(TCPListener, "accept_retry_delay", 0.05)

    def paused() -> bool:
        return any("accepting again in" in r.getMessage() for r in caplog.records)

    async with serving(hold) as served:
        client = socket.create_connection((IPV4, served.port))  # waits in the queue
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 8
            fillers: list[int] = []
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            try:
                for _ in range(limit):  # take every descriptor below the limit
                    try:
                        fillers.append(os.dup(client.fileno()))
                    except OSError:
                        break
                await until(paused, "the listener to report that accepting failed")
            finally:
                for fd in fillers:
                    os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            message = next(r.getMessage() for r in caplog.records if "accepting" in r.getMessage())
            assert "Too many open files" in message
            assert str(served.port) in message
            # Once descriptors are free again, the waiting connection is served.
            client.sendall(_hello())
            server = await served.accepted()
            assert not server.closed()
        finally:
            client.close()
        # And so are new ones.
        async with connected(served.address()) as comm:
            await comm.write("still serving")
            server = await served.accepted()
            assert await within(server.read(), "a message") == "still serving"


@asyncio_only
async def test_a_connection_that_cannot_be_set_up_is_dropped_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="comm_tcp")
    make_protocol = TCPListener._make_protocol
    failures = 0

    def fail_once(self: TCPListener) -> asyncio.BaseProtocol:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("no protocol for you")
        return make_protocol(self)

    monkeypatch.setattr(TCPListener, "_make_protocol", fail_once)
    loop = asyncio.get_running_loop()
    async with serving() as served:
        with socket.socket() as sock:
            sock.setblocking(False)
            await within(loop.sock_connect(sock, (IPV4, served.port)), "a raw connect")
            # The listener closed it without a byte.
            assert await within(loop.sock_recv(sock, 100), "the connection to close") == b""
        records = [r for r in caplog.records if "could not set up" in r.getMessage()]
        assert len(records) == 1
        assert records[0].exc_info is not None
        async with connected(served.address()) as comm:
            await ping(comm)


@pytest.mark.parametrize("size", [100, 1 << 20])
async def test_a_greeting_sent_before_the_transport_is_not_sent_again(
    loop_name: str, size: int
) -> None:
    """send_greeting() sends the preamble and greeting on the raw socket; the transport
    sends only what the socket did not take (a large greeting, a small send buffer)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    comm = StreamComm(scheme="test")
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        theirs.setblocking(False)
        greeting = bytes(range(256)) * (size // 256)
        comm.protocol.greeting = greeting
        comm.protocol.send_greeting(ours)
        await loop.connect_accepted_socket(lambda: comm.protocol, ours)
        await comm.write("after")
        expected = PREAMBLE + greeting + encode_message("after")[0][0]
        assert await _receive(theirs, len(expected)) == expected
    finally:
        comm.abort()
        ours.close()
        theirs.close()


@asyncio_only
async def test_a_known_greeting_leaves_before_the_comm_is_made(
    raw_socket: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From the second connection on, the listener sends its greeting (the same for
    every comm) as soon as it accepts, before it makes the comm: the peer waits for it,
    not for the comm. It is sent once, and the comm works."""
    loop = asyncio.get_running_loop()
    seen: list[bool] = []
    sock = raw_socket(socket.AF_INET)
    spying = False
    make_protocol = TCPListener._make_protocol

    def spy(self: TCPListener) -> asyncio.BaseProtocol:
        if spying:
            try:
                seen.append(len(sock.recv(4096, socket.MSG_PEEK)) > 0)
            except BlockingIOError:
                seen.append(False)
        return make_protocol(self)

    monkeypatch.setattr(TCPListener, "_make_protocol", spy)
    async with serving() as served:
        listener = served.listener
        assert isinstance(listener, TCPListener)
        async with connected(served.address()) as comm:  # the first: greeting encoded
            await ping(comm)
            first_info = dict(comm.handshake_info)
        spying = True
        await within(loop.sock_connect(sock, (IPV4, served.port)), "a raw connect")
        await until(lambda: bool(seen), "the listener to accept")
        assert seen == [True], "the comm was made before the greeting was sent"

        async def messages(count: int, received: bytes = b"") -> tuple[list[Any], bytes]:
            while len(stream_messages(received) if received else ()) < count:
                received += await within(loop.sock_recv(sock, 4096), "the listener's bytes")
            return stream_messages(received), received

        [greeting], received = await messages(1)
        assert greeting == first_info  # what the first comm's client was sent
        await loop.sock_sendall(sock, _hello() + encode_message({"op": "ping"})[0][0])
        everything, _ = await messages(2, received)
        assert everything == [first_info, {"op": "ping"}]  # the greeting once, then the echo
        sock.close()


async def test_a_greeting_the_listener_sent_in_part_is_finished_by_the_transport(
    loop_name: str,
) -> None:
    """greeted(): what the listener sent of the greeting is not sent again, the rest is;
    a greeting that is not the comm's own is refused."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    comm = StreamComm(scheme="test")
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        greeting = b"greeting!" * 10
        comm.protocol.greeting = greeting
        with pytest.raises(RuntimeError, match="not this comm's"):
            comm.protocol.greeted(PREAMBLE + b"another", 0)
        data = PREAMBLE + greeting
        sent = ours.send(data[:20])
        comm.protocol.greeted(data, sent)
        await loop.connect_accepted_socket(lambda: comm.protocol, ours)
        await comm.write("after")
        expected = data + encode_message("after")[0][0]
        assert await _receive(theirs, len(expected)) == expected
    finally:
        comm.abort()
        ours.close()
        theirs.close()


# -- connecting -----------------------------------------------------------------------------


def _full_listener() -> tuple[socket.socket, socket.socket]:
    """A listening socket whose accept queue is full, and the connection that fills it.

    A connect to it stays pending (its SYN is dropped) until the queue has room and the
    SYN is sent again, about a second later.
    """
    server = socket.socket()
    try:
        server.bind((IPV4, 0))
        server.listen(0)  # Linux queues one connection
        first = socket.create_connection(server.getsockname())
    except BaseException:
        server.close()
        raise
    return server, first


@asyncio_only
@needs_linux
async def test_a_pending_connect_completes_when_the_peer_accepts() -> None:
    server, first = _full_listener()
    accepted: list[socket.socket] = []
    try:
        connector = comm_core.get_backend("tcp").get_connector()
        host, port = server.getsockname()
        dialling = asyncio.ensure_future(connector.connect(f"{host}:{port}"))
        await asyncio.sleep(0)  # one step: the connect is now waiting for the socket
        assert not dialling.done()
        accepted.append(server.accept()[0])  # room in the queue for the retried SYN
        comm: Any = await within(dialling, "the pending connect to complete")
        try:
            accepted.append(server.accept()[0])
            assert comm.extra_info["peername"] == (host, port)
            assert comm.peer_address == tcp_address(host, port)
        finally:
            comm.abort()
    finally:
        for sock in (*accepted, first, server):
            sock.close()


@asyncio_only
@needs_linux
async def test_cancelling_a_pending_connect_closes_its_socket() -> None:
    server, first = _full_listener()
    try:
        before = _open_fds()
        connector = comm_core.get_backend("tcp").get_connector()
        host, port = server.getsockname()
        dialling = asyncio.ensure_future(connector.connect(f"{host}:{port}"))
        await asyncio.sleep(0)  # one step: the connect is now waiting for the socket
        assert _open_fds() == before + 1
        dialling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dialling
        assert _open_fds() == before
    finally:
        first.close()
        server.close()


@asyncio_only
@needs_linux
async def test_connect_timeout_while_pending_closes_the_socket() -> None:
    server, first = _full_listener()
    try:
        before = _open_fds()
        host, port = server.getsockname()
        with pytest.raises(comm_core.ConnectTimeoutError):  # bounded by its own timeout
            await comm_core.connect(tcp_address(host, port), timeout=0.2)
        assert _open_fds() == before
    finally:
        first.close()
        server.close()


@asyncio_only
async def test_the_handshake_completes_over_a_direct_connection(path: str) -> None:
    comms: list[Comm] = []
    async with serving() as served:
        for _ in range(20):
            comm = await comm_core.connect(served.address(), timeout=10)
            comms.append(comm)
            assert comm.handshake_info["library"] == "comm-core"
        for comm in comms:
            await ping(comm)
            await comm.close()


# -- memory ---------------------------------------------------------------------------------


async def test_closed_comms_are_freed_without_the_garbage_collector(loop_name: str) -> None:
    """A comm, its protocol, decoder and encoder are in no reference cycle: closing frees
    them at once, not at the garbage collector's next run."""
    async with serving() as served:
        gc.disable()
        try:
            comm = await comm_core.connect(served.address(), timeout=10)
            await ping(comm)
            protocol = comm.protocol  # type: ignore[attr-defined]
            refs = [
                weakref.ref(obj)
                for obj in (comm, protocol, protocol.decoder, comm._encoder)  # type: ignore[attr-defined]
            ]
            del protocol
            await comm.close()
            del comm
            await until(lambda: all(ref() is None for ref in refs), "the comm to be freed")
        finally:
            gc.enable()


@asyncio_only
@needs_linux
async def test_listening_socket_options_that_fail_name_the_address_and_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The listening socket carries the options its connections inherit: a failure there
    is the listener's own, a ConnectError naming the address, not a bare OSError."""

    def refuse(self: SocketOptions, sock: Any) -> None:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(SocketOptions, "apply", refuse)
    before = _open_fds()
    listener = comm_core.listen(tcp_address(IPV4, 0), hold)
    with pytest.raises(
        ConnectError, match=r"cannot listen on tcp://127\.0\.0\.1:0: setting"
    ) as info:
        await listener.start()
    assert "Invalid argument" in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert _open_fds() == before  # the bound sockets are closed again
