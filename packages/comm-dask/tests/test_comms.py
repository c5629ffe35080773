"""The behaviours Dask's own comm tests check (distributed/comm/tests/test_comms.py), over
comm+tcp, comm+tls and comm+inproc, through Dask's connect() and listen()."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from distributed.comm import (
    CommClosedError,
    connect,
    get_address_host,
    get_address_host_port,
    get_local_address_for,
    listen,
    parse_address,
    parse_host_port,
    resolve_address,
)
from distributed.comm.core import FatalCommClosedError
from distributed.comm.registry import backends, get_backend
from distributed.protocol import Serialized, ToPickle, deserialize, serialize, to_serialize
from distributed.protocol.utils_test import get_host_array
from distributed.utils import get_ip

import comm_core
import comm_dask
from comm_dask import CommBackend, DaskComm
from conftest import SCHEMES, Credentials, local_address

Args = tuple[dict[str, Any], dict[str, Any]]


async def comm_pair(scheme: str, args: Args, **kwargs: Any) -> tuple[Any, Any]:
    """(client comm, server comm): connected inside the listener's block, used after it."""
    listen_args, connect_args = args
    comms: asyncio.Queue[Any] = asyncio.Queue()
    async with listen(local_address(scheme), comms.put, **listen_args, **kwargs) as listener:
        client = await connect(listener.contact_address, **connect_args, **kwargs)
    return client, await asyncio.wait_for(comms.get(), 10)


# -- finding the backends ------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEMES)
def test_dask_finds_each_scheme_through_its_entry_point(name: str) -> None:
    backend = get_backend(name)
    assert isinstance(backend, CommBackend)
    assert backend.scheme == name
    assert backend.comm_scheme == name.removeprefix("comm+")
    assert comm_dask.dask_scheme(backend.comm_scheme) == name


def test_register_backends_adds_every_installed_comm_transport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("distributed.comm.registry.backends", {"comm+tcp": get_backend("tcp")})
    added = comm_dask.register_backends()
    assert "comm+tcp" not in added  # known already: left alone
    assert {"comm+tls", "comm+inproc"} <= set(added)
    from distributed.comm import registry

    assert registry.backends["comm+inproc"].comm_scheme == "inproc"


def test_an_uninstalled_comm_transport_is_named() -> None:
    backend = CommBackend("nosuch")
    with pytest.raises(comm_core.UnknownSchemeError, match="no comm backend for scheme 'nosuch'"):
        backend.get_address_host("x:1")


# -- addresses -------------------------------------------------------------------------------


def test_address_functions_answer_in_dask_conventions() -> None:
    assert get_address_host("comm+tcp://127.0.0.1:123") == "127.0.0.1"
    assert parse_host_port("comm+tcp://[::1]:123") == ("::1", 123)
    assert resolve_address("comm+tcp://localhost:456") == "comm+tcp://127.0.0.1:456"
    assert resolve_address("comm+tls://localhost:456") == "comm+tls://127.0.0.1:456"
    assert get_local_address_for("comm+tcp://127.0.0.1:80") == "comm+tcp://127.0.0.1"
    assert get_local_address_for("comm+tcp://8.8.8.8:4444") == "comm+tcp://" + get_ip()
    inproc = get_local_address_for("comm+inproc://host/1/2")
    assert inproc.startswith("comm+inproc://")
    with pytest.raises(ValueError, match="host and port"):
        get_address_host_port("comm+inproc://h/1/2")
    with pytest.raises(ValueError, match="brackets"):
        get_backend("comm+tcp").get_listener("::1:80", print, True)


@pytest.mark.parametrize("name", ["comm+tcp", "comm+tls"])
@pytest.mark.parametrize(
    ("location", "listen_host", "contact_host"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("127.0.0.1:0", "127.0.0.1", "127.0.0.1"),
        ("", "0.0.0.0", "primary"),
        (":0", "0.0.0.0", "primary"),
        (":", "0.0.0.0", "primary"),
        ("*", "0.0.0.0", "primary"),
        ("*:*", "0.0.0.0", "primary"),
        ("0.0.0.0", "0.0.0.0", "primary"),
        ("[::1]", "::1", "::1"),
        ("[::]:0", "::", "primary6"),
    ],
)
async def test_listen_addresses_as_dask_writes_them(
    name: str, location: str, listen_host: str, contact_host: str, credentials: Credentials
) -> None:
    """No port, an empty port or "*" is a free port; no host or "*" is every interface, shown
    as 0.0.0.0 as Dask's tcp does; a wildcard's contact address names this machine's primary
    address of the family (for [::], issue 18's second defect)."""
    primary6 = parse_host_port(comm_core.get_local_address_for("tcp://[2001:db8::1]:80"), 0)[0]
    expected = {"primary": get_ip(), "primary6": primary6}.get(contact_host, contact_host)
    kwargs = credentials.listen_args() if name == "comm+tls" else {}
    connect_kwargs = credentials.connect_args() if name == "comm+tls" else {}
    async with listen(f"{name}://{location}", lambda comm: comm.abort(), **kwargs) as listener:
        scheme, bound = parse_address(listener.listen_address)
        assert scheme == name
        host, port = parse_host_port(bound)
        assert (host, listener.get_host_port()) == (listen_host, (listen_host, port))
        assert port > 0
        contact_scheme, contact = parse_address(listener.contact_address)
        assert (contact_scheme, parse_host_port(contact)) == (name, (expected, port))
        comm = await connect(listener.contact_address, **connect_kwargs)
        assert comm.peer_address == listener.contact_address
        comm.abort()


async def test_default_host_names_a_wildcard_listener() -> None:
    async with listen("comm+tcp://", print, default_host="127.0.0.1") as listener:
        port = listener.get_host_port()[1]
        assert listener.contact_address == f"comm+tcp://127.0.0.1:{port}"
        assert listener.prefix == "comm+tcp://"


async def test_inproc_addresses_are_comm_inprocs() -> None:
    async with listen("comm+inproc://", print) as listener:
        host, pid, _ = parse_address(listener.listen_address)[1].split("/")
        assert listener.contact_address == listener.listen_address
        assert int(pid) == os.getpid()
        assert host == socket.gethostname()
        with pytest.raises(ValueError, match="no port"):
            listener.get_host_port()


async def test_a_port_in_use_is_an_oserror_with_its_errno(comm_leak_check: Any) -> None:
    async with listen("comm+tcp://127.0.0.1:0", print) as first:
        port = first.get_host_port()[1]
        with pytest.raises(OSError, match=str(port)) as raised:
            await listen(f"comm+tcp://127.0.0.1:{port}", print)
        assert raised.value.errno == errno.EADDRINUSE


async def test_many_listeners_have_distinct_addresses(scheme: str, args: Args) -> None:
    listeners = [await listen(local_address(scheme), print, **args[0]) for _ in range(50)]
    try:
        assert len({listener.listen_address for listener in listeners}) == 50
        assert len({listener.contact_address for listener in listeners}) == 50
    finally:
        for listener in listeners:
            listener.stop()


# -- client and server -----------------------------------------------------------------------


async def test_client_server(scheme: str, args: Args, comm_leak_check: Any) -> None:
    """Ping-pong with one client, then 20 at once; arbitrary connection arguments are ignored;
    addresses match on both ends; the handshake info carries Dask's entries and addresses."""
    listen_args, connect_args = args
    server_peers: list[str] = []

    async def handle(comm: Any) -> None:
        try:
            assert isinstance(comm, DaskComm)
            server_peers.append(comm.peer_address)
            msg = await comm.read()
            msg["op"] = "pong"
            await comm.write(msg)
            assert (await comm.read())["op"] == "foobar"
        finally:
            await comm.close()

    listener = await listen(local_address(scheme), handle, xxx="bar", **listen_args)
    results = []

    async def client(key: int, delay: float = 0) -> None:
        comm = await connect(listener.contact_address, xxx="foo", **connect_args)
        try:
            assert comm.peer_address == listener.contact_address
            assert parse_address(comm.local_address)[0] == scheme
            assert comm.remote_info["address"] == comm.peer_address
            assert comm.local_info["address"] == comm.local_address
            assert comm.remote_info["pickle-protocol"] >= 5
            assert comm.handshake_options["pickle-protocol"] >= 5
            assert await comm.write({"op": "ping", "data": key}) > 0
            await comm.write({"op": "foobar"})
            if delay:
                await asyncio.sleep(delay)
            assert await comm.read() == {"op": "pong", "data": key}
            results.append(key)
        finally:
            await comm.close()

    try:
        await client(1234)
        await asyncio.gather(*(client(i, 0.01) for i in range(20)))
    finally:
        listener.stop()
    assert sorted(results) == sorted([1234, *range(20)])
    assert len(set(server_peers)) == 21


async def test_addresses_and_repr(scheme: str, args: Args) -> None:
    a, b = await comm_pair(scheme, args)
    assert a.peer_address == b.local_address
    assert a.local_address == b.peer_address
    assert a.same_host
    assert b.same_host
    assert "closed" not in repr(a)
    assert a.local_address in repr(a)
    assert a.peer_address in repr(a)
    await a.close()
    await b.close()
    assert "closed" in repr(a)
    assert "closed" in repr(b)


async def test_a_handler_may_be_a_plain_function(scheme: str, args: Args) -> None:
    seen: list[Any] = []
    async with listen(local_address(scheme), seen.append, **args[0]) as listener:
        comm = await connect(listener.contact_address, **args[1])
    await comm.write("hello")
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert await seen[0].read() == "hello"
    await comm.close()
    await seen[0].close()


async def test_tls_extra_info_is_dasks(credentials: Credentials) -> None:
    a, b = await comm_pair("comm+tls", (credentials.listen_args(), credentials.connect_args()))
    try:
        for comm in (a, b):
            info = comm.extra_info
            assert ("commonName", "localhost") not in info["peercert"].get("subject", ())
            assert info["peercert"]["subjectAltName"]
            _cipher, protocol, bits = info["cipher"]
            assert "TLS" in protocol
            assert bits >= 128
    finally:
        a.abort()
        b.abort()


async def test_tls_refuses_certificates_of_another_ca(
    credentials: Credentials, comm_leak_check: Any
) -> None:
    async def handle(comm: Any) -> None:
        await comm.close()

    async with listen("comm+tls://127.0.0.1", handle, **credentials.listen_args()) as listener:
        bad_client = credentials.other_ca_context(ssl.Purpose.SERVER_AUTH)
        with pytest.raises(FatalCommClosedError) as raised:
            await connect(listener.contact_address, ssl_context=bad_client, timeout=5)
        assert isinstance(raised.value.__cause__, comm_core.FatalCommClosedError)
        comm = await connect(listener.contact_address, **credentials.connect_args())
        await comm.close()
    bad_server = credentials.other_ca_context(ssl.Purpose.CLIENT_AUTH)
    async with listen("comm+tls://127.0.0.1", handle, ssl_context=bad_server) as listener:
        started = time.monotonic()
        with pytest.raises(FatalCommClosedError, match="certificate"):
            await connect(listener.contact_address, timeout=5, **credentials.connect_args())
        assert time.monotonic() - started < 4  # not retried


async def test_tls_without_a_context_says_so() -> None:
    with pytest.raises(ValueError, match="ssl_context"):
        await listen("comm+tls://127.0.0.1", print)


async def test_require_encryption_refuses_tcp(credentials: Credentials) -> None:
    with pytest.raises(comm_core.EncryptionRequiredError):
        await listen("comm+tcp://127.0.0.1", print, **credentials.listen_args())
    async with listen("comm+inproc://", lambda comm: comm.abort()) as listener:
        comm = await connect(listener.contact_address, **credentials.connect_args())
        comm.abort()  # inproc never leaves the process: allowed


async def test_security_extra_conn_args_reach_comm_tls(credentials: Credentials) -> None:
    """Security(extra_conn_args=...) passes comm-tls's own arguments through."""
    import comm_tls

    security = comm_tls.Security(ca=str(credentials.ca_file), cert=str(credentials.cert_file))
    listen_args = credentials.listen_args()
    async with listen("comm+tls://127.0.0.1", lambda c: c.abort(), **listen_args) as listener:
        # No ssl_context: comm-tls uses the comm_tls.Security of extra_conn_args.
        comm = await connect(listener.contact_address, extra_conn_args={"security": security})
        comm.abort()


# -- closing ---------------------------------------------------------------------------------


async def test_comm_closed_by_the_peer(scheme: str, args: Args, comm_leak_check: Any) -> None:
    async def handle(comm: Any) -> None:
        await comm.close()

    listen_args, connect_args = args
    async with listen(local_address(scheme), handle, **listen_args) as listener:
        comm = await connect(listener.contact_address, **connect_args)
        with contextlib.suppress(CommClosedError):  # the peer may have closed already
            await comm.write({})
        with pytest.raises(CommClosedError):
            await comm.read()
        comm = await connect(listener.contact_address, **connect_args)
        with pytest.raises(CommClosedError) as raised:
            await comm.read()
        assert isinstance(raised.value.__cause__, comm_core.CommClosedError)
        for _ in range(200):
            if comm.closed():
                break
            await asyncio.sleep(0.01)
        assert comm.closed()


async def test_comm_closed_explicitly(scheme: str, args: Args, comm_leak_check: Any) -> None:
    a, b = await comm_pair(scheme, args)
    a_read = asyncio.ensure_future(a.read())
    b_read = asyncio.ensure_future(b.read())
    await asyncio.sleep(0)
    await a.close()
    with pytest.raises(CommClosedError):
        await a_read
    with pytest.raises(CommClosedError):
        await b_read
    for comm in (a, b):
        with pytest.raises(CommClosedError):
            await comm.read()
        with pytest.raises(CommClosedError):
            await comm.write({})
    await b.close()
    await b.close()
    a.abort()


async def test_a_cancelled_read_aborts_the_comm(scheme: str, args: Args) -> None:
    a, b = await comm_pair(scheme, args)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.read(), 0.01)
    assert a.closed()
    await b.close()


async def test_a_comm_that_connect_returned_outlives_the_listener(
    scheme: str, args: Args, comm_leak_check: Any
) -> None:
    """Issue 18's first defect, through Dask: connect inside the listener's block, then leave
    it; the comm still reaches the handler (Dask's get_comm_pair does exactly this)."""
    client, server = await comm_pair(scheme, args)
    await client.write({"op": "ping"})
    assert await server.read() == {"op": "ping"}
    await server.write("pong")
    assert await client.read() == "pong"
    await client.close()
    await server.close()


# -- connecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["comm+tcp", "comm+inproc"])
async def test_connect_timeout(name: str) -> None:
    if name == "comm+tcp":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            address = f"{name}://127.0.0.1:{sock.getsockname()[1]}"
    else:
        async with listen("comm+inproc://", print) as listener:
            address = listener.contact_address  # nobody listens there any more
    started = time.monotonic()
    with pytest.raises(OSError, match="Timed out trying to connect") as raised:
        await connect(address, timeout=0.3)
    assert 0.25 <= time.monotonic() - started <= 2
    assert isinstance(raised.value.__cause__, (OSError, asyncio.TimeoutError))


async def test_a_peer_that_is_not_comm_is_fatal_at_once(comm_leak_check: Any) -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(FatalCommClosedError, match="HTTP"):
            await connect(f"comm+tcp://127.0.0.1:{port}", timeout=5)
        assert time.monotonic() - started < 2
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dask_tcp_listener_is_not_a_comm_tcp_peer() -> None:
    async with listen("tcp://127.0.0.1", lambda comm: comm.abort()) as listener:
        address = listener.contact_address.replace("tcp://", "comm+tcp://")
        # Dask's listener speaks first (its handshake): not comm's preamble. Not retried.
        with pytest.raises(FatalCommClosedError, match="not a comm endpoint"):
            await connect(address, timeout=5)


# -- serialization ---------------------------------------------------------------------------

_BIG = os.urandom(1024**2) * 4  # 4 MiB, incompressible


def _small_message() -> dict[str, Any]:
    return {
        "op": "update",
        "x": b"abc",
        "to_ser": [to_serialize(123)],
        "ser": Serialized(*serialize(456)),
        "pickled": ToPickle(lambda: 789),
    }


def _check_small(deserialize_flag: bool, out: dict[str, Any]) -> None:
    assert out["op"] == "update"
    assert out["x"] == b"abc"
    if deserialize_flag:
        assert list(out["to_ser"]) == [123]
        assert out["ser"] == 456
    else:
        assert isinstance(out["ser"], Serialized)
        assert deserialize(out["ser"].header, out["ser"].frames) == 456
        (to_ser,) = out["to_ser"]
        assert isinstance(to_ser, Serialized)
        assert deserialize(to_ser.header, to_ser.frames) == 123
    assert out["pickled"]() == 789  # ToPickle is unpickled whatever the flag


def _big_message() -> dict[str, Any]:
    return {
        "op": "update",
        "x": _BIG,
        "to_ser": (to_serialize(_BIG),),
        "ser": Serialized(*serialize(_BIG)),
    }


def _check_big(deserialize_flag: bool, out: dict[str, Any]) -> None:
    # Large bytes arrive as bytes, as over Dask's tcp (not as comm's memoryview).
    assert type(out["x"]) is bytes
    assert out["x"] == _BIG
    if deserialize_flag:
        assert bytes(out["ser"]) == _BIG
        assert bytes(out["to_ser"][0]) == _BIG
    else:
        assert deserialize(out["ser"].header, out["ser"].frames) == _BIG
        (to_ser,) = out["to_ser"]
        assert deserialize(to_ser.header, to_ser.frames) == _BIG


@pytest.mark.parametrize(
    ("make", "check"), [(_small_message, _check_small), (_big_message, _check_big)]
)
@pytest.mark.parametrize("deserialize_flag", [True, False])
@pytest.mark.parametrize("side", ["listener", "connector"])
async def test_deserialize_flag(
    scheme: str,
    args: Args,
    make: Callable[[], dict[str, Any]],
    check: Callable[[bool, dict[str, Any]], None],
    deserialize_flag: bool,
    side: str,
) -> None:
    """The flag of the reading side decides, over every transport (inproc included)."""
    listen_args, connect_args = args
    if side == "listener":
        listen_args = {**listen_args, "deserialize": deserialize_flag}
    else:
        connect_args = {**connect_args, "deserialize": deserialize_flag}
    a, b = await comm_pair(scheme, (listen_args, connect_args))
    writer, reader = (a, b) if side == "listener" else (b, a)
    try:
        await writer.write(make())
        check(deserialize_flag, await reader.read())
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("deserialize_flag", [True, False])
async def test_deserialize_roundtrip(scheme: str, args: Args, deserialize_flag: bool) -> None:
    """A message read with deserialize=False is written on as it is, and arrives whole."""
    a, b = await comm_pair(scheme, args, deserialize=deserialize_flag)
    try:
        await a.write(_big_message())
        await b.write(await b.read())
        got = await a.read()
        assert got["x"] == _BIG
        if deserialize_flag:
            assert isinstance(got["to_ser"][0], (bytes, bytearray))
            assert isinstance(got["ser"], (bytes, bytearray))
        else:
            assert isinstance(got["ser"], Serialized)
            assert deserialize(got["ser"].header, got["ser"].frames) == _BIG
    finally:
        await a.close()
        await b.close()


def _raise_eof() -> None:
    raise EOFError


def _raise_value_error() -> None:
    raise ValueError("cannot rebuild this")


class _Unpickles:
    def __init__(self, fails_with: Callable[[], None]) -> None:
        self.fails_with = fails_with

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return self.fails_with, ()


async def test_a_truncated_message_aborts_the_comm(scheme: str, args: Args) -> None:
    """EOFError while deserializing closes the comm (as Dask's tcp)."""
    a, b = await comm_pair(scheme, args)
    await b.write({"data": to_serialize(_Unpickles(_raise_eof))})
    with pytest.raises(CommClosedError, match="truncated"):
        await a.read()
    assert a.closed()
    with pytest.raises(CommClosedError):
        await b.read()
    await b.close()


async def test_a_failed_deserialization_keeps_the_comm_open(scheme: str, args: Args) -> None:
    """Any other error while deserializing reaches the reader, and the comm goes on (as over
    Dask's tcp): the message was read whole."""
    a, b = await comm_pair(scheme, args)
    try:
        await b.write({"data": to_serialize(_Unpickles(_raise_value_error))})
        await b.write("next")
        with pytest.raises(Exception, match="cannot rebuild this"):
            await a.read()
        assert not a.closed()
        assert await a.read() == "next"
    finally:
        await a.close()
        await b.close()


async def test_unserializable_values_follow_on_error(scheme: str, args: Args) -> None:
    a, b = await comm_pair(scheme, args)
    try:
        with pytest.raises(Exception, match="lock"):
            await a.write({"x": to_serialize(threading.Lock())}, on_error="raise")
        assert not a.closed()
        # on_error="message" (Dask's default): the reader gets the error, and goes on.
        await a.write({"x": to_serialize(threading.Lock())})
        await a.write("next")
        with pytest.raises(TypeError, match="Could not serialize object of type lock"):
            await b.read()
        assert await b.read() == "next"
    finally:
        await a.close()
        await b.close()


async def test_compressed_frames(scheme: str, args: Args) -> None:
    """Dask compresses frames when the handshake agreed on a compression (between hosts);
    comm carries what Dask produced, and the reader decompresses by the frames' header."""
    a, b = await comm_pair(scheme, args)
    try:
        a.handshake_options = {**a.handshake_options, "compression": "zlib"}
        payload = np.zeros(10_000_000, dtype="u1")
        sent = await a.write({"x": to_serialize(payload)})
        assert np.array_equal((await b.read())["x"], payload)
        if scheme != "comm+inproc":
            assert sent < payload.nbytes // 10
    finally:
        await a.close()
        await b.close()


# -- buffers ---------------------------------------------------------------------------------


async def test_large_frames_go_to_comm_uncopied(scheme: str, args: Args) -> None:
    """The frames Dask makes of a numpy array are handed to comm as views of the array (comm
    then sends buffers of 64 KiB or more without copying them)."""
    a, b = await comm_pair(scheme, args)
    array = np.arange(1_000_000, dtype="u8")
    handed: list[Any] = []
    write = a.comm.write

    async def spy(msg: Any, *more: Any, **kwargs: Any) -> int:
        handed.append(msg)
        return int(await write(msg, *more, **kwargs))

    a.comm.write = spy
    try:
        await a.write({"x": to_serialize(array)})
        got = (await b.read())["x"]
        assert np.array_equal(got, array)
        (frames,) = handed
        assert any(np.shares_memory(np.frombuffer(f, "u1"), array) for f in frames if len(f))
        if scheme != "comm+inproc":
            assert not np.shares_memory(got, array)
            assert got.flags.writeable
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("list_cls", [list, type("OpaqueList", (list,), {})])
async def test_two_arrays_do_not_share_a_buffer(
    scheme: str, args: Args, list_cls: type[list[Any]]
) -> None:
    a, b = await comm_pair(scheme, args)
    try:
        arrays = [np.arange(100_000), np.arange(100_000, 200_000)]
        await a.write({"data": to_serialize(list_cls(arrays))})
        x, y = (await b.read())["data"]
        assert np.array_equal(x, arrays[0])
        assert np.array_equal(y, arrays[1])
        if scheme != "comm+inproc":
            assert get_host_array(x) is not get_host_array(y)
    finally:
        await a.close()
        await b.close()


async def test_a_sharded_array_arrives_whole(scheme: str, args: Args) -> None:
    a, b = await comm_pair(scheme, args)
    try:
        a.max_shard_size = 250_000
        array = np.random.default_rng(0).integers(0, 256, 1_000_000, dtype="u1")
        await a.write({"x": to_serialize(array)})
        assert np.array_equal((await b.read())["x"], array)
    finally:
        await a.close()
        await b.close()


async def test_a_peer_that_sends_other_messages_is_cut_off(comm_leak_check: Any) -> None:
    """A comm peer (not comm-dask) that writes something else than frames: the reader
    aborts the comm, saying why."""
    backend = get_backend("comm+tcp")

    async def handle(comm: Any) -> None:
        await comm.write({"not": "frames"})
        await comm.close()

    async with comm_core.listen("tcp://127.0.0.1:0", handle) as listener:
        raw = await comm_core.connect(listener.contact_address)
    comm = DaskComm(raw, backend)
    with pytest.raises(CommClosedError, match="not a list of Dask frames"):
        await comm.read()
    assert comm.closed()


def test_backends_are_not_registered_under_dasks_names() -> None:
    assert not isinstance(backends.get("tcp"), CommBackend)


async def test_dialing_a_wildcard_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ValueError, match="only for listening"):
        await connect("comm+tcp://0.0.0.0:8786", timeout=5)
    assert time.monotonic() - started < 2
