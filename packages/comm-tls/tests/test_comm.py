"""A tls comm's facts, its contexts, and large messages."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import ssl
from typing import Any

import pytest

from comm_tls import Security, TLSComm
from tls_support import IPV6, MiB, connected, needs_ipv6, ping, serving, within

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")


async def test_extra_info_has_the_peer_certificate_cipher_and_version(temporary: Security) -> None:
    async with (
        serving(security=temporary) as served,
        connected(served.address(), security=temporary) as client,
    ):
        await ping(client)
        server = await served.accepted()
        for comm in (client, server):
            assert isinstance(comm, TLSComm)
            info = comm.extra_info
            subject = dict(item[0] for item in info["peercert"]["subject"])
            assert subject["commonName"] == "comm node"
            assert ("IP Address", "127.0.0.1") in info["peercert"]["subjectAltName"]
            name, version, bits = info["cipher"]
            assert version == info["tls_version"] == "TLSv1.3"
            assert isinstance(name, str)
            assert bits >= 128
            assert info["nodelay"] is True  # TCP's facts are there too
            assert info["peername"]
        assert client.peer_address == served.address()
        assert server.local_address == served.address()


async def test_contexts_are_built_once_and_shared(temporary: Security) -> None:
    async with serving(security=temporary) as served:
        for _ in range(3):
            async with connected(served.address(), security=temporary) as client:
                await ping(client)
                server = await served.accepted()
                assert isinstance(client, TLSComm)
                assert isinstance(server, TLSComm)
                assert client.transport is not None
                assert server.transport is not None
                assert client.transport.get_extra_info("sslcontext") is temporary.client_context
                assert server.transport.get_extra_info("sslcontext") is temporary.server_context


async def test_user_ssl_contexts(temporary: Security, tmp_path: pathlib.Path) -> None:
    """Plain ssl.SSLContext objects work too; the listener's gets comm's SSL object class."""
    chain = tmp_path / "node.pem"
    chain.write_text(f"{temporary.cert}{temporary.key}")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(chain)
    client_context = ssl.create_default_context(cadata=str(temporary.ca))
    async with (
        serving(ssl_context=server_context) as served,
        connected(served.address(), ssl_context=client_context) as client,
    ):
        await ping(client)
        assert (await served.accepted()).extra_info["peercert"] == {}
    assert server_context.sslobject_class is not ssl.SSLObject
    assert issubclass(server_context.sslobject_class, ssl.SSLObject)


@needs_ipv6
async def test_ipv6_with_hostname_checking(temporary: Security) -> None:
    async with (
        serving(security=temporary, address=f"tls://[{IPV6}]:0") as served,
        connected(served.address(host=IPV6), security=temporary) as client,
    ):
        await ping(client)
        assert client.extra_info["peercert"]


async def test_64_mib_round_trip_intact(temporary: Security) -> None:
    data = os.urandom(64 * MiB)
    digest = hashlib.sha256(data).digest()
    async with (
        serving(security=temporary) as served,
        connected(served.address(), security=temporary) as client,
    ):
        write = asyncio.ensure_future(client.write({"big": data, "n": 1}))
        reply = await within(client.read(), "the echo of 64 MiB")
        assert await write > 64 * MiB
    assert isinstance(reply["big"], memoryview)
    assert hashlib.sha256(reply["big"]).digest() == digest
    assert reply["n"] == 1


class _Recording:
    """Passes everything to a transport, noting the size of each buffer written."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def write(self, data: Any) -> None:
        self.sizes.append(memoryview(data).nbytes)
        self.inner.write(data)

    def writelines(self, items: Any) -> None:
        items = list(items)
        self.sizes.extend(memoryview(item).nbytes for item in items)
        self.inner.writelines(items)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_large_buffers_reach_the_tls_transport_in_slices(temporary: Security) -> None:
    """OpenSSL takes int sizes: no buffer above the comm's cap goes to the TLS transport,
    whatever the Python version (3.12+ hands whole buffers to plain TCP transports)."""
    async with (
        serving(security=temporary) as served,
        connected(served.address(), security=temporary) as client,
    ):
        assert isinstance(client, TLSComm)
        cap = client.protocol.max_write_chunk
        assert cap is not None
        assert 0 < cap < 2**31
        transport = client.protocol.transport
        recording = client.protocol.transport = _Recording(transport)
        try:
            big = os.urandom(5 * cap + 3)
            reply_to = asyncio.ensure_future(client.read())
            await client.write({"big": big})
            await client.write(b"x" * (cap + 1))  # one frame, one buffer, above the cap
            assert bytes((await within(reply_to, "the echo"))["big"]) == big
            assert await within(client.read(), "the second echo") == b"x" * (cap + 1)
        finally:
            client.protocol.transport = transport
    assert max(recording.sizes) <= cap
    assert sum(recording.sizes) > 6 * cap
