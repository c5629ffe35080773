"""What a peer at a ws:// or wss:// address can be instead of a comm listener, and the
errors comm-ws makes of it: fatal ones at once, transient ones retried by connect()."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
import trustme

import comm_core
from comm_core import (
    AddressError,
    ConnectTimeoutError,
    FatalCommClosedError,
    HandshakeError,
)
from comm_core.testing import echo_handler
from comm_tls import Security

pytestmark = pytest.mark.usefixtures("loop_name")

_SECURITY = Security.temporary()
#: A connect() budget long enough that failing fast proves no retry happened.
LONG = 30.0


@contextlib.asynccontextmanager
async def _http_server(answer: Callable[[int], bytes]) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server that reads a request head and answers ``answer(n)`` (n: the
    connection's number), then closes; yields its ws:// address and the count of
    connections."""
    count = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        count[0] += 1
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer(count[0]))
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/comm", count
    finally:
        server.close()
        await server.wait_closed()


def _response(status: str, body: bytes = b"", headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n"
    ).encode() + body


async def _fails_fast(address: str, error: type[BaseException], match: str, **kw: object) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(error, match=match):
        await comm_core.connect(address, timeout=LONG, **kw)
    assert loop.time() - start < LONG / 3, "a fatal failure was retried"


async def test_404_is_fatal_and_names_the_path() -> None:
    async with comm_core.listen("ws://127.0.0.1:0/scheduler", echo_handler) as listener:
        host_port = listener.contact_address.removesuffix("/scheduler")
        await _fails_fast(f"{host_port}/worker", FatalCommClosedError, r"404.*serves /scheduler")
        await _fails_fast(host_port, FatalCommClosedError, "404")
        async with await comm_core.connect(listener.contact_address) as comm:  # still serving
            await comm.write("ping")
            assert await comm.read() == "ping"


async def test_a_plain_http_server_is_fatal() -> None:
    async with _http_server(lambda n: _response("200 OK", b"<html>hello</html>")) as (addr, _):
        await _fails_fast(addr, FatalCommClosedError, "plain HTTP server")


async def test_a_redirect_is_fatal() -> None:
    answer = _response("302 Found", headers="Location: https://example.invalid/\r\n")
    async with _http_server(lambda n: answer) as (addr, _):
        await _fails_fast(addr, FatalCommClosedError, "redirect to https://example.invalid/")


@pytest.mark.parametrize("status", ["502 Bad Gateway", "503 Service Unavailable"])
async def test_a_proxy_with_nothing_behind_it_is_retried(status: str) -> None:
    async with _http_server(lambda n: _response(status, b"no upstream")) as (addr, count):
        with pytest.raises(ConnectTimeoutError, match=status.split()[0]) as info:
            await comm_core.connect(addr, timeout=1.0)
        assert info.value.attempts > 1
        assert count[0] > 1


async def test_a_proxy_that_comes_up_is_retried_until_it_does() -> None:
    """503 twice, then the proxy passes the upgrade to a real comm listener."""
    async with comm_core.listen("ws://127.0.0.1:0", echo_handler) as listener:
        target = comm_core.get_address_host_port(listener.contact_address)

        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count[0] += 1
            if count[0] <= 2:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_response("503 Service Unavailable"))
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(*target)

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            piped.set()

        count = [0]
        piped = asyncio.Event()
        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            comm = await comm_core.connect(f"ws://127.0.0.1:{port}", timeout=LONG)
            async with comm:
                await comm.write({"via": "proxy"})
                assert await comm.read() == {"via": "proxy"}
            assert count[0] == 3
            await asyncio.wait_for(piped.wait(), LONG)  # the proxy saw both ends close
        finally:
            server.close()
            await server.wait_closed()


async def test_a_tcp_comm_listener_is_fatal() -> None:
    async with comm_core.listen("tcp://127.0.0.1:0", echo_handler) as listener:
        port = comm_core.get_address_host_port(listener.contact_address)[1]
        await _fails_fast(f"ws://127.0.0.1:{port}", FatalCommClosedError, "tcp://")


async def test_a_tcp_comm_client_at_a_ws_listener_fails_at_once() -> None:
    async with comm_core.listen("ws://127.0.0.1:0", echo_handler) as listener:
        port = comm_core.get_address_host_port(listener.contact_address)[1]
        await _fails_fast(f"tcp://127.0.0.1:{port}", HandshakeError, "HTTP")


async def test_ws_at_a_wss_listener_is_fatal() -> None:
    async with comm_core.listen("wss://127.0.0.1:0", echo_handler, security=_SECURITY) as listener:
        address = listener.contact_address.replace("wss://", "ws://")
        await _fails_fast(address, FatalCommClosedError, "wss://")
        async with await comm_core.connect(listener.contact_address, security=_SECURITY) as comm:
            await comm.write(1)
            assert await comm.read() == 1


async def test_wss_at_a_ws_listener_is_fatal() -> None:
    async with comm_core.listen("ws://127.0.0.1:0", echo_handler) as listener:
        address = listener.contact_address.replace("ws://", "wss://")
        await _fails_fast(address, FatalCommClosedError, "TLS", security=_SECURITY)


async def test_wss_certificate_errors_are_comm_tls_errors() -> None:
    other = trustme.CA()  # the client trusts another CA
    client = Security(ca=other.cert_pem.bytes().decode())
    async with comm_core.listen("wss://127.0.0.1:0", echo_handler, security=_SECURITY) as listener:
        await _fails_fast(
            listener.contact_address,
            FatalCommClosedError,
            r"TLS handshake with wss://127\.0\.0\.1:\d+ failed: .*unknown CA",
            security=client,
        )


async def test_wss_needs_tls_options() -> None:
    with pytest.raises(comm_core.BackendError, match="needs certificates"):
        comm_core.listen("wss://127.0.0.1:0", echo_handler)
    with pytest.raises(comm_core.BackendError, match="needs certificates"):
        await comm_core.connect("wss://127.0.0.1:1", timeout=1)


async def test_wss_accepts_an_ssl_context() -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with (
        comm_core.listen("wss://127.0.0.1:0/x", echo_handler, ssl_context=server) as lst,
        await comm_core.connect(lst.contact_address, ssl_context=client) as comm,
    ):
        await comm.write({"tls": True})
        assert await comm.read() == {"tls": True}
        assert comm.extra_info["tls_version"].startswith("TLS")
        assert comm.extra_info["path"] == "/x"


@pytest.mark.parametrize(
    "loc", ["127.0.0.1:1/a b", "127.0.0.1:1/a?b", "[::1]:1/x#y", "h:1/" + "a" * 2000]
)
async def test_malformed_paths(loc: str) -> None:
    with pytest.raises(AddressError, match="not a valid HTTP path"):
        await comm_core.connect(f"ws://{loc}", timeout=1)
    with pytest.raises(AddressError):
        comm_core.listen(f"ws://{loc}", echo_handler)


async def test_a_broken_peer_frame_is_a_protocol_error() -> None:
    """A server that answers the upgrade, then sends a frame with reserved bits set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from comm_ws._upgrade import ServerUpgrade

        head = await reader.readuntil(b"\r\n\r\n")
        response, refused = ServerUpgrade("/").respond(head)
        assert refused is None
        writer.write(response + b"\xf2\x00")  # FIN, RSV1-3, binary, empty
        await writer.drain()
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeError, match="reserved bits"):
            await comm_core.connect(f"ws://127.0.0.1:{port}", timeout=LONG)
    finally:
        server.close()
        await server.wait_closed()
