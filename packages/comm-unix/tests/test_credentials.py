"""The peer's credentials (``peer_pid``, ``peer_uid``, ``peer_gid`` in ``comm.extra_info``)
and ``same_uid``, over real sockets between real processes.

Another user is played by a child process that turns into ``nobody`` after a
``fork()`` (which needs root) and speaks the wire protocol from bytes the
parent prepared: it can run no Python of its own (the interpreter may sit
where ``nobody`` cannot read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import comm_core
from comm_core.protocol import PREAMBLE, encode_message
from comm_core.session import local_handshake
from comm_core.testing import echo_handler
from comm_unix import ABSTRACT_NAMESPACE, UnixComm, peer_credentials
from unix_support import (
    OTHER_GID,
    OTHER_UID,
    as_other_user,
    needs_root,
    read_all,
    read_report,
    reap,
)


def fresh_address() -> str:
    return f"unix://@comm-unix-test-{uuid.uuid4().hex}"


def sockaddr(address: str) -> bytes:
    return b"\0" + os.fsencode(address.removeprefix("unix://@"))


# -- the same user, in this process and in another --------------------------------------------


async def test_both_ends_know_each_other(loop_name: str) -> None:
    seen: list[dict[str, object]] = []

    async def handler(comm: comm_core.Comm) -> None:
        seen.append(dict(comm.extra_info))
        await echo_handler(comm)

    mine = {"peer_pid": os.getpid(), "peer_uid": os.geteuid(), "peer_gid": os.getegid()}
    async with comm_core.listen("unix://", handler) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
        async with comm:
            assert isinstance(comm, UnixComm)
            await comm.write("x")
            assert await comm.read() == "x"
            assert {key: comm.extra_info[key] for key in mine} == mine
            assert comm.credentials is not None
            assert comm.credentials.uid == os.geteuid()
    assert [{key: info[key] for key in mine} for info in seen] == [mine]


_SERVER = """
import asyncio, json, os, sys
import comm_core

async def handler(comm):
    msg = await comm.read()
    await comm.write({"echo": msg, "peer_pid": comm.extra_info["peer_pid"]})
    await comm.close()

async def main():
    async with comm_core.listen(sys.argv[1], handler) as listener:
        print(json.dumps([os.getpid(), listener.contact_address]), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


@contextlib.contextmanager
def server_process(address: str) -> Iterator[tuple[int, str]]:
    """A comm listener on *address* in a child process: its pid and contact address."""
    with subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _SERVER, address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            pid, contact = json.loads(child.stdout.readline())
            yield pid, contact
        finally:
            assert child.stdin is not None
            child.stdin.close()  # the child stops when its stdin closes
            assert child.wait(timeout=30) == 0


@pytest.mark.parametrize("listen_at", ["unix://", "unix://@"])
async def test_credentials_across_processes(listen_at: str) -> None:
    if listen_at == "unix://@" and not ABSTRACT_NAMESPACE:
        pytest.skip("abstract names are Linux's")
    with server_process(listen_at) as (pid, contact):
        async with await comm_core.connect(contact, timeout=10) as comm:
            assert comm.extra_info["peer_pid"] == pid
            assert comm.extra_info["peer_uid"] == os.geteuid()
            await comm.write("ping")
            # The child saw this process as its peer.
            assert await comm.read() == {"echo": "ping", "peer_pid": os.getpid()}


def test_credentials_of_a_plain_socket_pair() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        credentials = peer_credentials(left)
    assert credentials is not None
    assert (credentials.uid, credentials.gid) == (os.geteuid(), os.getegid())


# -- another user --------------------------------------------------------------------------------


@needs_root
async def test_a_listener_drops_another_user_before_greeting_it(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    address = fresh_address()

    def dial(_: int) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(sockaddr(address))
            return b"received %d bytes" % len(read_all(sock))

    with caplog.at_level(logging.WARNING, logger="comm_unix"):
        async with comm_core.listen(address, echo_handler) as listener:
            pid, fd = as_other_user(dial)
            try:
                assert await read_report(fd) == b"received 0 bytes"  # not even the preamble
            finally:
                reap(pid, fd)
            assert listener.extra_info["refused"] == 1
            await ping_once(address)  # it still serves this user
    [record] = [r for r in caplog.records if r.name == "comm_unix"]
    assert f"refused a peer (pid {pid}, uid {OTHER_UID})" in record.getMessage()
    assert address in record.getMessage()


async def ping_once(address: str) -> None:
    async with await comm_core.connect(address, timeout=5) as comm:
        await comm.write("ping")
        assert await comm.read() == "ping"


def dialer_greeting() -> bytes:
    """What a comm dialer sends first: the preamble and its handshake message."""
    info = local_handshake(UnixComm())
    buffers, _ = encode_message(info)
    return PREAMBLE + b"".join(bytes(b) for b in buffers)


@needs_root
async def test_same_uid_false_serves_another_user(loop_name: str) -> None:
    address = fresh_address()
    greeting = dialer_greeting()
    seen: list[dict[str, object]] = []

    async def handler(comm: comm_core.Comm) -> None:
        seen.append(dict(comm.extra_info))
        await comm.write("welcome")
        await comm.close()

    def dial(_: int) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(sockaddr(address))
            sock.sendall(greeting)
            received = read_all(sock)
            return b"greeted" if received.startswith(PREAMBLE) else b"not greeted"

    async with comm_core.listen(address, handler, same_uid=False) as listener:
        pid, fd = as_other_user(dial)
        try:
            assert await read_report(fd) == b"greeted"
        finally:
            reap(pid, fd)
        assert listener.extra_info["refused"] == 0
    assert [(i["peer_pid"], i["peer_uid"], i["peer_gid"]) for i in seen] == [
        (pid, OTHER_UID, OTHER_GID)
    ]


@needs_root
async def test_a_dialer_refuses_a_listener_of_another_user(loop_name: str) -> None:
    address = fresh_address()

    def listen(report: int) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(sockaddr(address))
            sock.listen()
            os.write(report, b"listening")
            sock.settimeout(10)
            conn, _ = sock.accept()
            with conn:
                return b"received %d bytes" % len(read_all(conn))

    pid, fd = as_other_user(listen)
    try:
        assert await read_report(fd) == b"listening"
        with pytest.raises(comm_core.FatalCommClosedError, match=f"uid {OTHER_UID}"):
            await comm_core.connect(address, timeout=5)
        # Refused before anything was sent: the squatter learnt nothing.
        assert await read_report(fd) == b"received 0 bytes"
    finally:
        reap(pid, fd)
