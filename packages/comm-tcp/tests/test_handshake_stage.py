"""Peers that stay in the handshake, or send a handshake meant to hurt.

A listener keeps at most ``max_pending_handshakes`` connections before their
handshake is done, dropping the oldest first; it gives each one deadline from
the accept for the preamble and the handshake together; what a peer's
handshake breaks is a :class:`HandshakeError` (an ``OSError``) on both sides,
logged in one bounded line; and what a peer says reaches logs and messages
escaped and cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import struct
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

import comm_core
from comm_core import (
    PROTOCOL_VERSION,
    CommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    IncompatibleProtocolError,
    ProtocolError,
    SerializationError,
)
from comm_core.protocol import PREAMBLE
from comm_core.stream import _GRACE
from comm_core.testing import until
from comm_tcp import _transport
from tcp_support import (
    EVENT_TIMEOUT,
    IPV4,
    Served,
    connected,
    hold,
    ping,
    read_until_closed,
    serving,
    tcp_address,
    within,
)

RawSocket = Callable[..., socket.socket]

#: The three ways a tcp listener accepts: comm-tcp's accept loop with its own transport
#: or with asyncio's, and uvloop's server.
_PATHS = [
    pytest.param("own", marks=pytest.mark.comm_loop("asyncio"), id="own-transport"),
    pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio"), id="asyncio-transport"),
    pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop"), id="uvloop"),
]


@pytest.fixture(params=_PATHS)
def accept_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path: str = request.param
    if path == "asyncio":
        monkeypatch.setenv(_transport.ENV, "asyncio")
    return path


def frame(body: bytes) -> bytes:
    """*body* (one msgpack object) as a comm message of one frame."""
    return struct.pack("<IQ", 1, len(body)) + body


def handshake_bytes(info: Any) -> bytes:
    """A handshake message (any msgpack value, or ready-made msgpack bytes), framed."""
    body = info if isinstance(info, bytes) else msgpack.packb(info, use_bin_type=True)
    return frame(body)


#: A custom-family value (extension 3) of a family no one installed.
UNKNOWN_FAMILY = msgpack.ExtType(3, msgpack.packb(["no-such-family\nCRITICAL:x", None, []]))
#: A peer's text that forges a log line.
FORGED = "comm-core\nCRITICAL:root:the listener was compromised"


async def raw_connect(raw_socket: RawSocket, port: int) -> tuple[socket.socket, str]:
    sock = raw_socket(socket.AF_INET)
    await within(asyncio.get_running_loop().sock_connect(sock, (IPV4, port)), "a raw connect")
    return sock, tcp_address(*sock.getsockname()[:2])


async def greeted(sock: socket.socket) -> None:
    """Wait for a listener's preamble on *sock*: the listener has accepted it."""
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < len(PREAMBLE):
        chunk = await within(loop.sock_recv(sock, len(PREAMBLE) - len(data)), "the greeting")
        assert chunk, "closed before the greeting"
        data += chunk
    assert data == PREAMBLE


async def silent_peer(raw_socket: RawSocket, port: int) -> socket.socket:
    """A raw connection the listener has accepted (and greeted), which then says nothing."""
    sock, _ = await raw_connect(raw_socket, port)
    await greeted(sock)
    return sock


def still_open(sock: socket.socket) -> bool:
    """Whether the peer of non-blocking *sock* has neither closed nor reset it (what it
    sent is read and dropped)."""
    while True:
        try:
            if not sock.recv(65536):
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False


async def hang_up(served: Served, socks: list[socket.socket]) -> None:
    """Close *socks*, and wait until the listener of *served* has let them go."""
    for sock in socks:
        sock.close()
    acceptor = served.listener.acceptor  # type: ignore[union-attr]
    await until(lambda: acceptor.pending == 0, "the listener to see its silent peers go")


def one_line_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every message logged; each must be one line of bounded length."""
    messages = [record.getMessage() for record in caplog.records]
    for message in messages:
        assert "\n" not in message, message[:300]
        assert "\r" not in message, message[:300]
        assert len(message) <= 1500, (len(message), message[:300])
    return messages


# -- max_pending_handshakes: the oldest connections go first -------------------------------


async def test_silent_peers_beyond_the_cap_are_dropped_oldest_first(
    accept_path: str, raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    """With room for 8 connections before their handshake: 8 newer silent peers drop the
    8 older ones, oldest first, once those had their grace to answer (not after the 60 s
    timeout); one more, while all are recent, is refused at once without a greeting; a
    good client gets in (its connect() retries) and the oldest silent peer goes for it.
    The drops are logged in one line, not one each."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    cap = 8
    async with serving(handshake_timeout=60, max_pending_handshakes=cap) as served:
        old = [await silent_peer(raw_socket, served.port) for _ in range(cap)]
        # Not a wait for an event: a connection is kept for its first _GRACE seconds
        # whatever the limit, since its answer to the greeting may be on its way.
        await asyncio.sleep(_GRACE)
        new = []
        for index in range(cap):
            new.append(await silent_peer(raw_socket, served.port))
            await read_until_closed(old[index], limit=4096, timeout=5)
            assert all(still_open(sock) for sock in old[index + 1 :])
        extra, _ = await raw_connect(raw_socket, served.port)
        data, _ = await read_until_closed(extra, limit=4096, timeout=5)
        assert data == b""  # refused before its greeting
        start = loop.time()
        async with connected(served.address()) as client:
            await ping(client)
        assert loop.time() - start < 2 + _GRACE
        await read_until_closed(new[0], limit=4096, timeout=5)
        assert all(still_open(sock) for sock in new[1:])
        assert served.calls == 1
        drops = [m for m in one_line_records(caplog) if "max_pending_handshakes" in m]
        # A stopped listener keeps what it accepted until its deadline: end them first.
        await hang_up(served, new)
    assert len(drops) == 1, drops
    assert f"keeps at most {cap} connections" in drops[0]


async def test_peers_that_stop_after_the_preamble_count_too(
    accept_path: str, raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    """Peers in the comm handshake (preamble sent, handshake not) are dropped oldest first
    as well, without a line each and without a task failing unseen."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    cap = 4
    async with serving(handshake_timeout=60, max_pending_handshakes=cap) as served:
        old = []
        for _ in range(cap):
            sock = await silent_peer(raw_socket, served.port)
            await loop.sock_sendall(sock, PREAMBLE)
            old.append(sock)
        await asyncio.sleep(_GRACE)  # as above: their grace
        new = []
        for index in range(cap):
            sock = await silent_peer(raw_socket, served.port)
            await loop.sock_sendall(sock, PREAMBLE)
            new.append(sock)
            await read_until_closed(old[index], limit=4096, timeout=5)
        async with connected(served.address()) as client:
            await ping(client)
        assert all(still_open(sock) for sock in new[1:])
        gc.collect()  # a task that failed unseen says so when collected
        messages = one_line_records(caplog)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        # A stopped listener keeps what it accepted until its deadline: end them first.
        await hang_up(served, new)
    assert len([m for m in messages if "max_pending_handshakes" in m]) == 1, messages
    assert not [m for m in messages if "failed its handshake" in m], messages
    assert not errors, messages


async def test_a_burst_of_good_clients_beyond_the_cap_all_get_in(accept_path: str) -> None:
    """Good clients are never dropped once greeted (they may believe their comm is up):
    three times max_pending_handshakes connecting at once all get working comms, those
    beyond the limit after a retry."""
    cap = 8
    async with serving(max_pending_handshakes=cap) as served:
        clients = await within(
            asyncio.gather(
                *(comm_core.connect(served.address(), timeout=30) for _ in range(3 * cap))
            ),
            "every client to connect",
        )
        try:
            await within(asyncio.gather(*(ping(client) for client in clients)), "the pings")
        finally:
            await asyncio.gather(*(client.close() for client in clients))
        assert served.calls == 3 * cap


_CHILD = textwrap.dedent(
    """
    import asyncio, resource, sys
    import comm_core
    from comm_core.testing import echo_handler

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    async def main():
        listener = comm_core.listen(
            "tcp://127.0.0.1:0", echo_handler, handshake_timeout=4, max_pending_handshakes=16
        )
        async with listener:
            print(listener.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)


@pytest.mark.comm_loop("asyncio")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE, Linux")
async def test_a_listener_short_of_descriptors_still_serves_a_good_client(
    raw_socket: RawSocket,
) -> None:
    """A listener process allowed 64 descriptors, and 100 peers that connect and stay
    silent: with max_pending_handshakes=16 it never runs out, and a good client gets in
    at once, not after the silent ones' 4 s handshake timeout."""
    loop = asyncio.get_running_loop()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        port = int(await within(child.stdout.readline(), "the child's port"))
        for _ in range(100):
            await raw_connect(raw_socket, port)
        start = loop.time()
        async with connected(tcp_address(IPV4, port)) as client:
            elapsed = loop.time() - start
            await ping(client)
        assert elapsed < 1.5, f"the good client waited {elapsed:.2f}s"
    finally:
        if child.returncode is None:
            await within(child.communicate(b""), "the child to end", EVENT_TIMEOUT)


# -- one deadline from the accept ----------------------------------------------------------


async def test_a_preamble_just_before_the_deadline_does_not_extend_it(
    accept_path: str, raw_socket: RawSocket, caplog: pytest.LogCaptureFixture
) -> None:
    """The preamble and the comm handshake share the handshake timeout, counted from the
    accept: a peer that sends its preamble near the end is dropped at the same deadline."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    timeout = 1.0
    async with serving(handshake_timeout=timeout) as served:
        sock, peer = await raw_connect(raw_socket, served.port)
        start = loop.time()
        await greeted(sock)
        # Not a wait for an event: the peer's own delay, most of the time it has.
        await asyncio.sleep(0.8 * timeout)
        await loop.sock_sendall(sock, PREAMBLE)
        await read_until_closed(sock, limit=4096, timeout=5)
        elapsed = loop.time() - start
        assert served.calls == 0
    assert timeout - 0.05 <= elapsed <= timeout + 0.35, elapsed
    lines = [m for m in one_line_records(caplog) if peer in m]
    assert len(lines) == 1, lines
    assert "within 1s" in lines[0], lines


# -- what a failed handshake raises and logs ---------------------------------------------


class RawServer:
    """A raw listening socket that answers its first client with *greeting*."""

    def __init__(self, raw_socket: RawSocket, greeting: bytes) -> None:
        self.sock = raw_socket(socket.AF_INET)
        self.sock.bind((IPV4, 0))
        self.sock.listen(8)
        self.address = tcp_address(*self.sock.getsockname()[:2])
        self.task = asyncio.ensure_future(self._serve(greeting))

    async def _serve(self, greeting: bytes) -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        conn.setblocking(False)
        with conn:
            await loop.sock_sendall(conn, greeting)
            while await loop.sock_recv(conn, 65536):
                pass

    async def more_clients(self) -> int:
        """Once the first client has gone, how many others connected since."""
        await within(self.task, "the first client to go")
        count = 0
        while True:
            try:
                extra, _ = self.sock.accept()
            except BlockingIOError:
                return count
            extra.close()
            count += 1


async def _connect_fails(address: str) -> BaseException:
    try:
        comm = await comm_core.connect(address, timeout=30)
    except OSError as exc:  # what Dask's callers catch around connect()
        return exc
    comm.abort()
    pytest.fail("connect() succeeded")


@pytest.mark.comm_loop("asyncio")
@pytest.mark.parametrize(
    ("greeting", "error", "text"),
    [
        pytest.param(
            PREAMBLE + handshake_bytes({"protocol": PROTOCOL_VERSION, "x": UNKNOWN_FAMILY}),
            HandshakeError,
            "the peer's handshake holds a value this side cannot decode: peer sent a value of "
            "serializer family 'no-such-family\\nCRITICAL:x'",
            id="unknown-family",
        ),
        pytest.param(
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            HandshakeError,
            "is not a comm endpoint: it sent b'HTTP/1.1' instead of the comm preamble",
            id="http",
        ),
        pytest.param(
            PREAMBLE + handshake_bytes({"protocol": 99, "library": FORGED, "version": "v" * 60000}),
            IncompatibleProtocolError,
            "the peer speaks comm protocol 99 ('comm-core\\nCRITICAL:root:the listener was "
            "compromised' 'vvvv",
            id="forged-text",
        ),
        pytest.param(
            PREAMBLE + handshake_bytes({"protocol": PROTOCOL_VERSION, "pad": [0] * 20000}),
            HandshakeError,
            "refused the peer's comm handshake: entry 'pad' is a list of 20000 items",
            id="long-list",
        ),
        pytest.param(
            # 20 KB that would decode to 1.6 MB of dicts: refused before they are built.
            PREAMBLE + handshake_bytes({"protocol": PROTOCOL_VERSION, "pad": [{}] * 20000}),
            HandshakeError,
            "sent a message that breaks the protocol: message body of 20018 bytes would "
            "decode to more than",
            id="padded",
        ),
    ],
)
async def test_connect_raises_a_handshake_error_that_is_an_oserror(
    raw_socket: RawSocket, greeting: bytes, error: type[Exception], text: str
) -> None:
    """What a handshake cannot accept is a HandshakeError (an OSError, as every failure of
    connect() to establish a comm), raised at once, not retried, in one bounded line."""
    loop = asyncio.get_running_loop()
    server = RawServer(raw_socket, greeting)
    start = loop.time()
    exc = await within(_connect_fails(server.address), "connect() to fail")
    assert loop.time() - start < 5
    assert type(exc) is error, repr(exc)
    assert isinstance(exc, HandshakeError)
    assert isinstance(exc, ProtocolError)
    assert not isinstance(exc, SerializationError)
    assert text in str(exc), str(exc)[:500]
    assert "\n" not in str(exc), str(exc)[:500]
    assert len(str(exc)) <= 1000, str(exc)[:500]
    assert await server.more_clients() == 0  # not retried


@pytest.mark.comm_loop("asyncio")
@pytest.mark.parametrize(
    ("handshake", "logged"),
    [
        pytest.param(
            {"protocol": PROTOCOL_VERSION, "x": UNKNOWN_FAMILY},
            "cannot decode: peer sent a value of serializer family 'no-such-family\\nCRITICAL:x'",
            id="unknown-family",
        ),
        pytest.param(
            {"protocol": 99, "library": FORGED, "version": "v" * 60000},
            "speaks comm protocol 99 ('comm-core\\nCRITICAL:root:the listener was compromised' "
            "'vvvv",
            id="forged-text",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, "library": "x" * 60000},
            "entry 'library' is a str of 60000 characters",
            id="huge-string",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, **{f"k{i}": i for i in range(1000)}},
            "it has 1001 entries, more than 64",
            id="many-keys",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, "junk": [[[{"a": [{}]}]]]},
            "entry 'junk' holds a value of type list",
            id="nested",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, "pad": [0] * 20000},
            "entry 'pad' is a list of 20000 items, more than 64",
            id="long-list",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, "pad": [{}] * 20000},
            "would decode to more than",
            id="padded",
        ),
        pytest.param(
            {"protocol": PROTOCOL_VERSION, 7: "int key"},
            "it has a key of type int, 7; keys are str",
            id="int-key",
        ),
    ],
)
async def test_a_listener_drops_a_bad_handshake_in_one_line(
    raw_socket: RawSocket,
    caplog: pytest.LogCaptureFixture,
    handshake: dict[Any, Any],
    logged: str,
) -> None:
    """A handshake the listener cannot accept costs one bounded, escaped log line: no
    traceback, no forged line, no comm handed to the handler, and the listener serves on."""
    caplog.set_level(logging.INFO)
    loop = asyncio.get_running_loop()
    async with serving(hold) as served:
        sock, peer = await raw_connect(raw_socket, served.port)
        await greeted(sock)
        await loop.sock_sendall(sock, PREAMBLE + handshake_bytes(handshake))
        await read_until_closed(sock, limit=4096)
        async with connected(served.address()) as client:
            server = await served.accepted()
            await server.write("still serving")
            assert await within(client.read(), "a message") == "still serving"
        assert served.calls == 1
    gc.collect()  # a task that failed unseen says so when collected
    messages = one_line_records(caplog)
    about = [m for m in messages if peer in m]
    assert len(about) == 1, messages
    assert "dropped a comm that failed its handshake" in about[0], about
    assert logged in about[0], about[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], messages


@pytest.mark.comm_loop("asyncio")
async def test_a_slow_peer_is_a_handshake_timeout(raw_socket: RawSocket) -> None:
    """Mapping errors to HandshakeError keeps the timeout's own class and message."""
    server = RawServer(raw_socket, PREAMBLE)
    with pytest.raises(HandshakeTimeoutError, match=r"within 0\.3s") as info:
        await comm_core.connect(server.address, timeout=30, handshake_timeout=0.3)
    assert isinstance(info.value, OSError)
    assert await server.more_clients() == 0


# -- what a handshake may hold --------------------------------------------------------------


@pytest.mark.comm_loop("asyncio")
async def test_what_applications_announce_still_goes_through() -> None:
    """Scalars, short strings and bytes, and short lists and tuples of them (what Dask
    announces) reach the peer's handshake_info as they were."""
    overrides = {
        "compression": None,
        "python": (3, 11, 7),
        "pickle-protocol": 5,
        "name": "worker-1",
        "token": b"\x00" * 32,
        "ratio": 0.5,
        "flags": [True, False],
        "long": "x" * 1024,
    }
    async with (
        serving(hold, handshake_overrides={"role": "scheduler"}) as served,
        connected(served.address(), handshake_overrides=overrides) as client,
    ):
        server = await served.accepted()
        info = dict(server.handshake_info)
        assert {k: info[k] for k in overrides} == overrides
        assert client.handshake_info["role"] == "scheduler"


@pytest.mark.comm_loop("asyncio")
@pytest.mark.parametrize(
    "overrides",
    [
        {"nested": {"a": 1}},
        {"long": "x" * 1025},
        {f"k{i}": i for i in range(62)},
        {"items": list(range(65))},
    ],
    ids=["nested", "long-string", "too-many", "long-list"],
)
async def test_overrides_a_peer_would_refuse_are_refused_here(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="handshake_overrides cannot be sent"):
        comm_core.listen(f"tcp://{IPV4}:0", hold, handshake_overrides=overrides)
    async with serving(hold) as served:
        with pytest.raises(ValueError, match="handshake_overrides cannot be sent"):
            await comm_core.connect(served.address(), handshake_overrides=overrides)
        assert served.calls == 0


@pytest.mark.comm_loop("asyncio")
async def test_the_comm_closed_error_of_a_peer_gone_in_the_handshake_is_retried(
    raw_socket: RawSocket,
) -> None:
    """A peer that closes during the handshake is still a transient failure: connect()
    tries again and reaches the listener that answers."""
    loop = asyncio.get_running_loop()
    server = raw_socket(socket.AF_INET)
    server.bind((IPV4, 0))
    server.listen(8)
    address = tcp_address(*server.getsockname()[:2])
    connecting = asyncio.ensure_future(comm_core.connect(address, timeout=30))
    try:
        conn, _ = await within(loop.sock_accept(server), "the first attempt")
        conn.close()  # gone during the handshake: retried
        conn, _ = await within(loop.sock_accept(server), "the second attempt")
        with conn:
            conn.setblocking(False)
            greeting = PREAMBLE + handshake_bytes({"protocol": PROTOCOL_VERSION})
            await loop.sock_sendall(conn, greeting)
            comm = await within(connecting, "connect() to succeed")
            assert comm.handshake_info["protocol"] == PROTOCOL_VERSION
            comm.abort()
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, CommClosedError):
                await connecting
