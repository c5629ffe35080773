"""Helpers of comm-unix's tests: another user, played by a child process.

The child turns into ``nobody`` after a ``fork()`` (which needs root) and makes
system calls only: it can run no Python of its own (the interpreter may sit
where ``nobody`` cannot read), so it speaks the wire protocol, if at all, from
bytes the parent prepared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import warnings
from collections.abc import Callable

import pytest

from comm_unix import ABSTRACT_NAMESPACE


def other_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


OTHER_UID, OTHER_GID = other_user()
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not ABSTRACT_NAMESPACE,
    reason="playing another user needs root (setuid in a child), and an abstract name "
    "that user can reach (Linux)",
)


def as_other_user(work: Callable[[int], bytes]) -> tuple[int, int]:
    """Run ``work(report_fd)`` in a child that became ``nobody``; returns the child's pid
    and the read end of its pipe, on which *work* may report before its result."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads: the child only
        # makes system calls, then _exit()s.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, ever
        try:
            os.close(read_fd)
            os.setgid(OTHER_GID)
            os.setuid(OTHER_UID)
            os.write(write_fd, work(write_fd))
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(write_fd, f"error {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


async def read_report(fd: int, timeout: float = 10) -> bytes:
    """What the child wrote on its pipe next (waiting on the event loop)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 4096)


def reap(pid: int, fd: int) -> None:
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def read_all(sock: socket.socket) -> bytes:
    """Everything *sock* receives until EOF (10 s at most)."""
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)
