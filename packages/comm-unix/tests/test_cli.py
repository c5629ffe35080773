"""``comm doctor unix://...``: its ``unix connect`` step says who listens, or why nobody can
be reached. The command runs in a child process, as users run it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid

import pytest

import comm_core
from comm_core.testing import echo_handler
from comm_unix import ABSTRACT_NAMESPACE
from unix_support import OTHER_UID, as_other_user, needs_root, read_all, read_report, reap


async def doctor(address: str) -> tuple[int, str]:
    """Run ``comm doctor ADDRESS`` in a child process: its status and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "comm_core", "doctor", address, "--timeout", "3",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_names_the_listener() -> None:
    async with comm_core.listen("unix://", echo_handler) as listener:
        status, out = await doctor(listener.contact_address)
    assert status == 0, out
    assert "unix connect" in out
    assert f"uid {os.geteuid()}, this user" in out
    assert "comm handshake" in out


async def test_doctor_without_a_socket_file() -> None:
    status, out = await doctor(f"unix:///tmp/comm-unix-none-{uuid.uuid4().hex}.sock")
    assert status != 0
    assert "no socket at /tmp/comm-unix-none-" in out
    assert "comm serve unix:///tmp/comm-unix-none-" in out


async def test_doctor_with_a_socket_file_left_behind() -> None:
    path = f"/tmp/comm-unix-stale-{uuid.uuid4().hex}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(path)  # nobody listens on it
    try:
        status, out = await doctor(f"unix://{path}")
    finally:
        os.unlink(path)
    assert status != 0
    assert f"nobody listens at {path} (a socket file left behind)" in out


@pytest.mark.skipif(not ABSTRACT_NAMESPACE, reason="abstract names are Linux's")
async def test_doctor_with_an_abstract_name_nobody_has() -> None:
    status, out = await doctor(f"unix://@comm-unix-none-{uuid.uuid4().hex}")
    assert status != 0
    assert "(no socket has that name)" in out


@needs_root
async def test_doctor_with_a_listener_of_another_user() -> None:
    address = f"unix://@comm-unix-test-{uuid.uuid4().hex}"

    def listen(report: int) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(b"\0" + address.removeprefix("unix://@").encode())
            sock.listen()
            os.write(report, b"listening")
            sock.settimeout(30)
            conn, _ = sock.accept()
            with conn:
                return b"received %d bytes" % len(read_all(conn))

    pid, fd = as_other_user(listen)
    try:
        assert await read_report(fd) == b"listening"
        status, out = await doctor(address)
        assert await read_report(fd) == b"received 0 bytes"
    finally:
        reap(pid, fd)
    assert status != 0
    assert f"the listener (pid {pid}, uid {OTHER_UID}) runs as another user" in out
    assert "same_uid=False" in out
