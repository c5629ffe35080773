"""Hostile peers against the Unix socket a tls:// listener offers behind a token.

A tls:// listener (in a child process) offers its companion Unix socket only to
dialers that show a token its TLS greeting handed out (docs/paths.rst, "TLS and
encryption"). Processes of the same user can reach that socket without TLS: they
try it without a token, with forged ones, with handshakes that are not comm's,
and by saying nothing. Each is dropped before the listener says a byte of the
comm protocol, the handler never sees one of them, the child holds no descriptor
for them once they are gone, and a good TLS client keeps being served over the
same socket meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

import comm_core
from comm_core import selection
from comm_core.protocol import PREAMBLE
from hostile_msgpack import handshake
from support import KiB, Transport, linux_only, within
from test_arena_live import _descriptors, _descriptors_back
from test_hostile_live import GoodClient, listener_child

pytestmark = [
    linux_only,
    pytest.mark.skipif(
        importlib.util.find_spec("comm_unix") is None
        or importlib.util.find_spec("comm_tls") is None,
        reason="needs comm-unix and comm-tls",
    ),
]

#: Connections per attack.
ROUNDS = 6


def _message(body: bytes) -> bytes:
    return struct.pack("<IQ", 1, len(body)) + body


def _handshake_with(token: Any) -> bytes:
    """A comm handshake message holding ``same_host_token``: *token* (msgpack-encoded)."""
    import msgpack

    base = msgpack.unpackb(handshake())
    base["same_host_token"] = token
    return _message(msgpack.packb(base))


#: What each hostile connection sends (``None``: nothing; it waits to be dropped).
ATTACKS: dict[str, bytes | None] = {
    "no token": PREAMBLE + _message(handshake()),
    "a forged token": PREAMBLE + _handshake_with("0" * 32),
    "a token of the wrong type": PREAMBLE + _handshake_with(["0" * 32]),
    "a huge token": PREAMBLE + _handshake_with("f" * 4000),
    "not a comm handshake": PREAMBLE + _message(b"\x93\x01\x02\x03"),
    "HTTP": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "garbage frame header": PREAMBLE + b"\xff" * 64,
    "silence": None,
}


async def _attack(address: str, data: bytes | None) -> bytes:
    """One hostile connection to the companion socket; what the listener sent it
    before it closed the connection."""
    loop = asyncio.get_running_loop()
    name = address.removeprefix("unix://")
    sockaddr = "\0" + name[1:] if name.startswith("@") else name
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    received = b""
    try:
        await loop.sock_connect(sock, sockaddr)
        if data is not None:
            await loop.sock_sendall(sock, data)
        while len(received) < 64 * KiB:
            chunk = await within(loop.sock_recv(sock, 4096), "the listener to drop it")
            if not chunk:
                break
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return received


async def test_the_token_gate_holds_against_hostile_peers(
    tls_transport: Transport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMM_SAME_HOST", "1")  # this child offers its socket (and inherits it)
    selection.forget_paths()
    async with listener_child(tls_transport, tmp_path) as child:
        good = await comm_core.connect(child.address, timeout=10, **tls_transport.args)
        client = GoodClient(good)
        try:
            assert good.extra_info["path"] == "unix"
            companion = good.peer_address
            client.start()
            await client.more(20, "warm-up")
            stats = await _stats(child.address, tls_transport)
            before = _descriptors(child.pid)
            for name, data in ATTACKS.items():
                for _ in range(ROUNDS):
                    answer = await _attack(companion, data)
                    # Not a byte of the comm protocol (no preamble, no greeting).
                    assert answer == b"", (name, answer[:64])
                await client.more(5, name)
                assert child.death() is None, child.death()
            assert await _descriptors_back(child.pid, before, client)
            # The handler saw none of them: only the stats comm asked over TLS was new.
            after = await _stats(child.address, tls_transport)
            assert after["comms"] == stats["comms"] + 1
            # And a new good client still takes the socket.
            again = await comm_core.connect(child.address, timeout=10, **tls_transport.args)
            try:
                assert again.extra_info["path"] == "unix"
                await again.write("ok")
                assert await within(again.read(), "the echo") == "ok"
            finally:
                await again.close()
        finally:
            if client.running:
                await client.stop()
            await good.close()
            selection.forget_paths()


async def _stats(address: str, transport: Transport) -> dict[str, int]:
    comm = await comm_core.connect(address, timeout=10, same_host=False, **transport.args)
    try:
        await comm.write({"op": "stats"})
        stats: dict[str, int] = await within(comm.read(), "the listener's stats")
        return stats
    finally:
        with contextlib.suppress(comm_core.CommError):
            await comm.close()
