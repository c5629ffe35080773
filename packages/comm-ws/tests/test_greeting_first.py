"""The order of the two comm handshakes over ws://, which same-host selection relies on.

A comm listener sends its handshake (the greeting) with its upgrade response; a dialer
holds its own until it has read the greeting, so that what it decides on reading it
(taking a same-host path instead, and aborting) happens before any byte of its comm
has left. A listener then drops, without a word, a connection that went away after the
upgrade and before its first message, as comm-core's stream listeners drop one closed
before its preamble.

The peers here are raw sockets speaking just enough WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator

import pytest

import comm_core
from comm_core.protocol import encode_message
from comm_ws import _protocol
from comm_ws._upgrade import ClientUpgrade, ServerUpgrade
from ws_support import EVENT_TIMEOUT

pytestmark = pytest.mark.usefixtures("loop_name")

GREETING = {"protocol": comm_core.PROTOCOL_VERSION, "library": "raw", "version": "0"}


def binary_frame(msg: object) -> bytes:
    """A comm message in one unmasked binary frame, as a listener sends it."""
    payload = binary(msg)
    assert len(payload) < 126
    return bytes((0x82, len(payload))) + payload


def binary(msg: object) -> bytes:
    buffers, _ = encode_message(msg)
    return b"".join(bytes(b) for b in buffers)


def frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """The short masked frames a client sent in *data*: (first byte, mask, payload)."""
    out = []
    while data:
        first, second = data[0], data[1]
        assert second & 0x80, data  # masked
        assert (second & 0x7F) < 126, data  # short
        n = second & 0x7F
        out.append((first, data[2:6], data[6 : 6 + n]))
        data = data[6 + n :]
    return out


def unmasked(frame: tuple[int, bytes, bytes]) -> bytes:
    first, mask, payload = frame
    assert first == 0x82
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# -- the dialer waits for the greeting --------------------------------------------------------


@contextlib.asynccontextmanager
async def late_greeter(
    wait: float,
) -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """A server that answers the upgrade without its greeting, then waits *wait* seconds
    for the client's first bytes (which a dialer holding its handshake does not send),
    then sends the greeting, and records what came when: ``("before", data)`` for what
    came before the greeting, ``("after", data)`` for what came after."""
    events: list[tuple[str, bytes]] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            response, refused = ServerUpgrade("/").respond(head)
            assert refused is None
            writer.write(response)
            await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                early = await asyncio.wait_for(reader.read(4096), wait)
                events.append(("before", early))
            writer.write(binary_frame(GREETING))
            await writer.drain()
            events.append(("after", await asyncio.wait_for(reader.read(4096), EVENT_TIMEOUT)))
            await reader.read()  # until the client hangs up
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", events
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_a_dialer_sends_its_handshake_only_after_reading_the_greeting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Held much longer than the server waits: the server's wait must end by itself.
    monkeypatch.setattr(_protocol, "HOLD_HANDSHAKE", 30.0)
    async with late_greeter(wait=0.3) as (address, events):
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        try:
            assert comm.handshake_info["library"] == "raw"
            await comm.write("first")
            for _ in range(1000):  # bounded: until the server has recorded what came
                if events:
                    break
                await asyncio.sleep(0.01)
        finally:
            await comm.close()
    assert [when for when, _ in events] == ["after"], events
    # The handshake and the first message left together, once the greeting was read.
    assert [unmasked(frame) for frame in frames(events[0][1])][1:] == [binary("first")]


async def test_a_dialer_sends_its_handshake_anyway_to_a_silent_listener() -> None:
    """A peer that waits to be spoken to gets the dialer's handshake after
    HOLD_HANDSHAKE (and then answers)."""
    async with late_greeter(wait=EVENT_TIMEOUT) as (address, events):
        comm = await comm_core.connect(address, timeout=EVENT_TIMEOUT)
        await comm.close()
    assert [when for when, _ in events][:1] == ["before"]
    assert events[0][1][:1] == b"\x82"  # a binary frame: the dialer's handshake


# -- the listener drops a dialer gone after the upgrade, silently ------------------------------


async def _upgraded(address: str) -> socket.socket:
    """A raw client socket, upgraded, with the listener's greeting read."""
    host, port = comm_core.get_address_host_port(address)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, ClientUpgrade("ws", host, port, "/").request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) - data.index(b"\r\n\r\n") - 4 < 2:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), EVENT_TIMEOUT)
            assert chunk, data
            data += chunk
    except BaseException:
        sock.close()
        raise
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data[data.index(b"\r\n\r\n") + 4] == 0x82  # the greeting's frame
    return sock


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_gone_after_the_upgrade_is_dropped_without_a_word(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    handed: list[comm_core.Comm] = []

    async def handler(comm: comm_core.Comm) -> None:
        handed.append(comm)
        await comm.write(await comm.read())
        await comm.close()

    async with comm_core.listen("ws://127.0.0.1:0", handler, same_host=False) as listener:
        address = listener.contact_address
        for _ in range(12):
            sock = await _upgraded(address)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        pending = listener._pending  # type: ignore[attr-defined]
        for _ in range(1000):  # bounded: until the listener has seen every one of them go
            if not pending:
                break
            await asyncio.sleep(0.01)
        assert not pending
        # The listener still serves others.
        async with await comm_core.connect(address, timeout=EVENT_TIMEOUT) as comm:
            await comm.write("hello")
            assert await comm.read() == "hello"
    assert len(handed) == 1
    said = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("comm_core", "comm_ws")) and record.levelno >= logging.INFO
    ]
    assert not said


async def test_a_client_that_breaks_the_protocol_after_the_upgrade_is_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a client that says nothing is dropped silently."""
    caplog.set_level(logging.INFO, logger="comm_core")

    async def handler(comm: comm_core.Comm) -> None:
        raise AssertionError("a broken client reached the handler")

    async with comm_core.listen("ws://127.0.0.1:0", handler, same_host=False) as listener:
        sock = await _upgraded(listener.contact_address)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, bytes((0x81, 0x80)) + b"abcd")  # a text frame
            while await asyncio.wait_for(loop.sock_recv(sock, 4096), EVENT_TIMEOUT):
                pass
        finally:
            sock.close()
        for _ in range(1000):  # bounded: until the line is there
            if caplog.records:
                break
            await asyncio.sleep(0.01)
    assert any("failed its handshake" in record.getMessage() for record in caplog.records)


async def test_a_comm_closed_right_after_connect_still_says_hello_and_goodbye() -> None:
    """What the dialer held (its comm handshake) leaves on close(), with the close frame:
    the handler gets the comm, and reads a clean close."""
    got: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(comm: comm_core.Comm) -> None:
        try:
            await comm.read()
        except Exception as exc:
            got.set_result(exc)
        else:
            got.set_result(None)

    async with comm_core.listen("ws://127.0.0.1:0", handler, same_host=False) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT)
        await comm.close()  # in the step connect() returned in: the handshake is held
        error = await asyncio.wait_for(got, EVENT_TIMEOUT)
    assert isinstance(error, comm_core.CommClosedError)
    assert "lost" not in str(error), error  # the peer closed, with a close frame


async def test_a_client_silent_after_the_upgrade_is_dropped_at_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Waiting for a first message is bounded by the handshake timeout, as before: the
    listener then closes the connection, and says why."""
    caplog.set_level(logging.INFO, logger="comm_core")

    async def handler(comm: comm_core.Comm) -> None:
        raise AssertionError("a silent client reached the handler")

    async with comm_core.listen(
        "ws://127.0.0.1:0", handler, same_host=False, handshake_timeout=0.3
    ) as listener:
        sock = await _upgraded(listener.contact_address)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while await asyncio.wait_for(loop.sock_recv(sock, 4096), EVENT_TIMEOUT):
                pass  # until the listener closes
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        assert 0.2 < loop.time() - start < 0.3 + 5
        for _ in range(1000):  # bounded: until the line is there
            if caplog.records:
                break
            await asyncio.sleep(0.01)
    assert any("did not complete the comm handshake" in r.getMessage() for r in caplog.records)
