"""A tls listener before its comms are handed over: TLS's handshake, the preamble and the
comm handshake share one deadline from the accept, count towards
``max_pending_handshakes`` (the oldest go first), and a peer that is not a comm
endpoint is a HandshakeError, an OSError, for connect()."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator

import pytest

import comm_core
from comm_core import HandshakeError, ProtocolError
from comm_core.protocol import PREAMBLE
from comm_core.stream import _GRACE
from comm_core.testing import until
from comm_tls import Security
from tls_support import (
    IPV4,
    connect_fails,
    connected,
    ping,
    serving,
    watching_logs,
    within,
)

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")


@pytest.fixture
def raw_sockets() -> Iterator[Callable[[], socket.socket]]:
    """A factory of non-blocking TCP sockets, all closed at teardown."""
    made: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        made.append(sock)
        sock.setblocking(False)
        return sock

    yield make
    for sock in made:
        sock.close()


async def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> None:
    """Wait until the peer of *sock* closes or resets it (what it sends is dropped)."""
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        while True:
            try:
                if not await loop.sock_recv(sock, 65536):
                    return
            except (ConnectionResetError, ConnectionAbortedError):
                return

    await within(drain(), "the listener to drop the connection", timeout)


def still_open(sock: socket.socket) -> bool:
    while True:
        try:
            if not sock.recv(65536):
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False


async def test_silent_peers_beyond_the_cap_are_dropped_oldest_first(
    temporary: Security, raw_sockets: Callable[[], socket.socket]
) -> None:
    """Peers that never start TLS count towards max_pending_handshakes: once they had
    their grace, newer ones drop them oldest first (not after the 60 s timeout), in one
    log line; a good TLS client gets in, and so does a burst of them."""
    loop = asyncio.get_running_loop()
    cap = 6

    async def silent() -> socket.socket:
        sock = raw_sockets()
        await within(loop.sock_connect(sock, (IPV4, served.port)), "a raw connect")
        return sock

    with watching_logs() as logs:
        async with serving(
            security=temporary, handshake_timeout=60, max_pending_handshakes=cap
        ) as served:
            assert served.listener is not None
            acceptor = served.listener.acceptor  # type: ignore[attr-defined]
            old = [await silent() for _ in range(cap)]
            await until(lambda: acceptor.pending == cap, "the listener to accept them")
            # Not a wait for an event: a connection is kept for its first _GRACE seconds
            # whatever the limit, since its answer may be on its way.
            await asyncio.sleep(_GRACE)
            new = []
            for index in range(cap):
                new.append(await silent())
                await closed_by_peer(old[index])
            async with connected(served.address(), security=temporary) as client:
                await ping(client)
            await closed_by_peer(new[0])
            assert all(still_open(sock) for sock in new[1:])
            burst = await within(
                asyncio.gather(
                    *(
                        comm_core.connect(served.address(), security=temporary, timeout=30)
                        for _ in range(2 * cap)
                    )
                ),
                "a burst of good clients",
            )
            try:
                await within(asyncio.gather(*(ping(comm) for comm in burst)), "their pings")
            finally:
                await asyncio.gather(*(comm.close() for comm in burst))
        drops = logs.matching("max_pending_handshakes")
        assert len(drops) == 1, [r.getMessage() for r in drops]


async def test_a_preamble_just_before_the_deadline_does_not_extend_it(
    temporary: Security,
) -> None:
    """TLS's handshake, the preamble and the comm handshake share the handshake timeout,
    counted from the accept: a client that completes TLS at once but sends its preamble
    near the end of that time is dropped at the same deadline."""
    loop = asyncio.get_running_loop()
    timeout = 1.0
    async with serving(security=temporary, handshake_timeout=timeout) as served:
        start = loop.time()
        reader, writer = await within(
            asyncio.open_connection(IPV4, served.port, ssl=temporary.client_context),
            "TLS to the listener",
        )
        try:
            assert await within(reader.readexactly(len(PREAMBLE)), "the greeting") == PREAMBLE
            # Not a wait for an event: the peer's own delay, most of the time it has.
            await asyncio.sleep(0.8 * timeout - (loop.time() - start))
            writer.write(PREAMBLE)
            await within(_until_eof(reader), "the listener to drop the client", 5)
            elapsed = loop.time() - start
        finally:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
        assert not served.comms
    assert timeout - 0.05 <= elapsed <= timeout + 0.35, elapsed


async def _until_eof(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError):
        pass


async def test_a_tcp_client_gets_a_handshake_error_that_is_an_oserror(
    temporary: Security, caplog: pytest.LogCaptureFixture
) -> None:
    """A tcp client dialling a tls listener learns it from connect() as a HandshakeError,
    which code catching OSError around connect() catches, with the same words as before,
    at once and without retrying."""
    caplog.set_level(logging.INFO)
    async with serving(security=temporary) as served:
        exc, elapsed = await connect_fails(served.address(scheme="tcp"))
        async with connected(served.address(), security=temporary) as client:
            await ping(client)
    assert isinstance(exc, HandshakeError), repr(exc)
    assert isinstance(exc, OSError), repr(exc)
    assert isinstance(exc, ProtocolError)
    assert "is not a comm endpoint: it sent b'\\x15\\x03" in str(exc)
    assert str(exc).endswith(
        "it looks like a TLS alert: is the peer a tls:// endpoint? Dial it with tls://"
    )
    assert elapsed < 5
