"""What a peer can make a reader hold: unread tiny messages, and headers announcing frames.

Flow control counts what queued messages cost in memory, not only their
payload, so that a flood of tiny messages to a comm that does not read
blocks the writer instead of growing the reader; and a header makes the
reader reserve memory only as the bytes it announces arrive.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import tracemalloc
from collections.abc import Callable

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm, CommClosedError
from comm_core.protocol import MAX_FIRST_MESSAGE, PREAMBLE, encode_message
from comm_core.stream import StreamComm, StreamProtocol, held_bytes
from comm_core.testing import until
from comm_tcp import _transport
from tcp_support import IPV4, MiB, connected, hold, serving, within

#: The reader's read_high_water in these tests (the default is 64 MiB).
READ_HIGH_WATER = 4 * MiB
#: The writer's write_high_water (the default is 4 MiB).
WRITE_HIGH_WATER = MiB
#: A flood stops after this many messages or seconds, blocked or not.
FLOOD_MESSAGES = 2_000_000
FLOOD_SECONDS = 20.0
#: How long a writer must make no progress, with its transport paused, to count as blocked.
QUIET = 0.3


@pytest.fixture(
    params=[
        pytest.param("comm-tcp", marks=pytest.mark.comm_loop("asyncio")),
        pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio")),
        pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop")),
    ]
)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs over comm-tcp's own transport, over asyncio's (on asyncio's loop),
    and over uvloop's."""
    name: str = request.param
    if name == "asyncio":
        monkeypatch.setenv(_transport.ENV, "asyncio")
    else:
        monkeypatch.delenv(_transport.ENV, raising=False)
    return name


async def flood_until_blocked(
    client: Comm, reader: StreamProtocol, progress: list[int]
) -> asyncio.Task[None]:
    """Write empty messages to *client* until its writes block because the *reader*
    stopped reading; return the writing task, still running. Fails the test if that does
    not happen within FLOOD_MESSAGES messages or FLOOD_SECONDS seconds."""
    protocol: StreamProtocol = client.protocol  # type: ignore[attr-defined]

    async def flood() -> None:
        for _ in range(FLOOD_MESSAGES):
            await client.write({})
            progress[0] += 1

    writer = asyncio.ensure_future(flood())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FLOOD_SECONDS
    while loop.time() < deadline and not writer.done():
        before = progress[0]
        await asyncio.wait({writer}, timeout=QUIET)
        blocked = protocol.write_paused and progress[0] == before
        if not writer.done() and blocked and reader.reading_paused:
            return writer
    writer.cancel()
    pytest.fail(
        f"{progress[0]:,} tiny messages were written without the reader pausing and the "
        "writer blocking"
    )


def small_buffers(comm: Comm, option: int) -> None:
    sock = comm.transport.get_extra_info("socket")  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, option, 64 * 1024)


async def test_a_flood_of_tiny_messages_blocks_the_writer(transport: str) -> None:
    """Regression: against a handler that does not read, 2 million empty messages (23 MiB
    on the wire) grew the listener by about 290 MiB and never blocked the writer, since
    read_high_water counted payload bytes only (one byte per message). Queued messages
    now count what they cost in memory: the reader pauses at read_high_water and the
    writer's write() stops completing; reading then resumes."""
    async with (
        serving(hold, read_high_water=READ_HIGH_WATER) as served,
        connected(served.address(), write_high_water=WRITE_HIGH_WATER) as client,
    ):
        server = await served.accepted()
        reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
        # Small socket buffers, so that the writer blocks after fewer messages.
        small_buffers(client, socket.SO_SNDBUF)
        small_buffers(server, socket.SO_RCVBUF)
        progress = [0]
        writer = await flood_until_blocked(client, reader, progress)
        try:
            assert reader.ready_bytes <= READ_HIGH_WATER + held_bytes([bytes(1)])
            # An empty message waiting unread takes more than 100 bytes of memory.
            queued = len(reader.ready)
            assert queued <= READ_HIGH_WATER // 100, queued
            # Reading resumes the transport: past what was queued.
            for index in range(queued + 1000):
                assert await within(server.read(), f"message {index}") == {}
        finally:
            writer.cancel()
            client.abort()
        with pytest.raises(asyncio.CancelledError):
            await writer


async def test_a_flood_of_empty_messages_keeps_the_reader_flat(
    transport: str, raw_socket: Callable[..., socket.socket]
) -> None:
    """The same flood from a raw peer (so that only the reader's memory is traced):
    empty messages, as fast as the socket takes them, after a valid handshake. The
    reader's memory grows by read_high_water and a little more, not by what the peer
    sends; its sends stop going through once the reader pauses."""
    chunk = bytes(encode_message({})[0][0]) * 80_000  # 1 MB of them
    handshake = b"".join(map(bytes, encode_message({"protocol": PROTOCOL_VERSION})[0]))
    loop = asyncio.get_running_loop()
    async with serving(hold, read_high_water=READ_HIGH_WATER) as served:
        peer = raw_socket()
        await within(loop.sock_connect(peer, (IPV4, served.port)), "a raw connect")
        await within(loop.sock_sendall(peer, PREAMBLE + handshake), "the handshake")
        server = await served.accepted()
        reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        small_buffers(server, socket.SO_RCVBUF)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            deadline = loop.time() + FLOOD_SECONDS
            sent = 0
            while sent < FLOOD_MESSAGES and loop.time() < deadline:
                sending = asyncio.ensure_future(loop.sock_sendall(peer, chunk))
                done, _ = await asyncio.wait({sending}, timeout=3 * QUIET)
                if not done and reader.reading_paused:
                    break  # the peer is blocked: the reader stopped reading
                await within(sending, "a chunk of the flood")
                sent += 80_000
            else:
                pytest.fail(f"{sent:,} empty messages went through without the peer blocking")
            traced = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        sending.cancel()
        # The queue, and the receive buffer with what arrived after the pause.
        assert traced < READ_HIGH_WATER + 2 * MiB, f"{traced:,} bytes traced, {sent:,} sent"
        assert reader.ready_bytes <= READ_HIGH_WATER + held_bytes([bytes(1)])


async def test_tiny_messages_paused_many_times_all_arrive_in_order(transport: str) -> None:
    """A reader with a small read_high_water pauses and resumes many times over a stream
    of tiny messages, then the writer closes: every message arrives, in order, then the
    end of the comm."""
    count = 30_000
    async with (
        serving(hold, read_high_water=16 * 1024) as served,
        connected(served.address()) as client,
    ):
        server = await served.accepted()
        reader: StreamProtocol = server.protocol  # type: ignore[attr-defined]
        for index in range(count):
            await client.write(index)
        await within(client.close(), "the writer's close")
        await until(lambda: reader.reading_paused, "the reader to pause")
        resumed = 0  # reads after which more messages wait than before: reading resumed
        for index in range(count):
            waiting = len(reader.ready)
            assert await within(server.read(), f"message {index}") == index
            resumed += len(reader.ready) >= waiting
        assert resumed > 50, resumed
        with pytest.raises(CommClosedError):
            await within(server.read(), "the end of the comm")


async def accept_as(transport: str, listening: socket.socket, comm: StreamComm) -> None:
    """Accept a connection on *listening* and run *comm* over it, on *transport*."""
    loop = asyncio.get_running_loop()
    sock, _ = await within(loop.sock_accept(listening), "a connection to accept")
    if transport == "comm-tcp":
        _transport.SocketTransport(loop, sock, comm.protocol).start()
    else:
        await loop.connect_accepted_socket(lambda: comm.protocol, sock)


async def test_a_peer_is_held_to_64_kib_until_its_first_message_is_read(
    transport: str, raw_socket: Callable[..., socket.socket]
) -> None:
    """Until the comm's first message (the handshake) has been read, the messages behind
    it may take only 64 KiB: a peer that has not said who it is cannot make the comm
    hold read_high_water's worth (before, a flood sent with the handshake was queued up
    to read_high_water before the handshake was even looked at). Once it is read, the
    comm reads on, every message in order."""
    count = 100_000
    handshake = b"".join(map(bytes, encode_message({"protocol": PROTOCOL_VERSION})[0]))
    flood = b"".join(bytes(encode_message(i)[0][0]) for i in range(count))
    loop = asyncio.get_running_loop()
    listening = raw_socket()
    listening.bind((IPV4, 0))
    listening.listen()
    peer = raw_socket()
    comm = StreamComm(scheme="tcp")  # read_high_water: 64 MiB
    try:
        accepting = asyncio.ensure_future(accept_as(transport, listening, comm))
        await within(loop.sock_connect(peer, listening.getsockname()), "a raw connect")
        await within(accepting, "the accept")
        sending = asyncio.ensure_future(loop.sock_sendall(peer, PREAMBLE + handshake + flood))
        protocol = comm.protocol
        await until(lambda: protocol.reading_paused, "the comm to pause reading")
        assert protocol.ready_bytes <= MAX_FIRST_MESSAGE + held_bytes([bytes(9)])
        assert await within(comm.read(), "the first message") == {"protocol": PROTOCOL_VERSION}
        for index in range(count):
            assert await within(comm.read(), f"message {index}") == index
        await within(sending, "the raw peer's send")
    finally:
        comm.abort()


# -- what a header makes the reader reserve ------------------------------------------------


def _virtual_memory() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.mark.parametrize("claim", [MiB - 1, 1024 * MiB - 1])
async def test_headers_announcing_large_frames_reserve_little(transport: str, claim: int) -> None:
    """Regression: after the handshake, a 12-byte header announcing a frame just under
    1 MiB made the listener allocate and zero 1 MiB per connection, held for as long as
    the peer liked; a larger claim mapped (address space, and commit charge under strict
    overcommit) all of it. What a connection reserves now grows with what arrives."""
    peers = 20
    async with serving(hold) as served:
        clients: list[Comm] = []
        try:
            for _ in range(peers):
                clients.append(await comm_core.connect(served.address(), timeout=10))
            servers = [await served.accepted() for _ in range(peers)]
            gc.collect()
            vm_before = _virtual_memory()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                for client in clients:
                    client.transport.write(struct.pack("<IQ", 1, claim))  # type: ignore[attr-defined]
                # Every reader has started receiving the frame its header announced.
                await until(
                    lambda: all(s.protocol.decoder._direct is not None for s in servers),  # type: ignore[attr-defined]
                    "every header to be read",
                )
                traced = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            vm_after = _virtual_memory()
        finally:
            for client in clients:
                client.abort()
    per_peer = traced / peers
    assert per_peer < 128 * 1024, f"{per_peer:,.0f} bytes traced per peer"
    if vm_before is not None and vm_after is not None:
        assert (vm_after - vm_before) / peers < MiB, (vm_before, vm_after)
