"""What the conformance kit does not cover: socket paths, their files and directories,
and what importing the backend costs.

The ``async def`` tests run in a fresh event loop each, through comm-core's
pytest plugin (enabled in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

import comm_core
from comm_core.testing import echo_handler
from comm_unix import MAX_PATH_BYTES


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short-named temporary directory (socket paths must stay short)."""
    with tempfile.TemporaryDirectory(prefix="comm-unix-test-") as path:
        yield path


def exists(path: str) -> bool:
    return os.path.exists(path)


def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)


def read_text(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


async def ping(address: str) -> None:
    async with await comm_core.connect(address, timeout=5) as comm:
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}


async def test_empty_path_picks_a_private_path() -> None:
    first = comm_core.listen("unix://", echo_handler)
    second = comm_core.listen("unix://", echo_handler)
    async with first, second:
        paths = [first.extra_info["path"], second.extra_info["path"]]
        assert paths[0] != paths[1]
        for listener, path in zip([first, second], paths, strict=True):
            assert listener.contact_address == f"unix://{path}"
            assert stat.S_ISSOCK(os.stat(path).st_mode)
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
            await ping(listener.contact_address)
    for path in paths:
        assert not exists(path)
        assert not exists(os.path.dirname(path))


async def test_explicit_path_is_removed_on_stop(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "server.sock")
    async with comm_core.listen(f"unix://{path}", echo_handler) as listener:
        assert listener.contact_address == f"unix://{path}"
        await ping(listener.contact_address)
    assert not exists(path)
    assert exists(socket_dir)  # a directory the listener did not create stays


async def test_stale_socket_file_is_replaced(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gone:
        gone.bind(path)  # a socket file that nobody listens on
    async with comm_core.listen(f"unix://{path}", echo_handler) as listener:
        await ping(listener.contact_address)


async def test_live_socket_is_not_taken_over(socket_dir: str) -> None:
    address = f"unix://{os.path.join(socket_dir, 'busy.sock')}"
    async with comm_core.listen(address, echo_handler):
        with pytest.raises(comm_core.ConnectError, match="another listener"):
            await comm_core.listen(address, echo_handler).start()
        await ping(address)  # the first listener still serves


async def test_other_files_are_not_touched(socket_dir: str) -> None:
    path = os.path.join(socket_dir, "notes.txt")
    write_text(path, "keep me")
    with pytest.raises(comm_core.ConnectError, match="not a socket"):
        await comm_core.listen(f"unix://{path}", echo_handler).start()
    assert read_text(path) == "keep me"


@pytest.mark.parametrize(
    ("address", "match"),
    [
        ("unix://relative.sock", "relative path"),
        ("unix:///tmp/\0x", "NUL"),
        (f"unix:///{'x' * MAX_PATH_BYTES}", "bytes"),
    ],
)
def test_malformed_addresses(address: str, match: str) -> None:
    with pytest.raises(comm_core.AddressError, match=match):
        comm_core.listen(address, echo_handler)


async def test_connect_needs_a_path() -> None:
    with pytest.raises(comm_core.AddressError, match="only for listening"):
        await comm_core.connect("unix://")


async def test_nobody_listening_times_out(socket_dir: str) -> None:
    address = f"unix://{os.path.join(socket_dir, 'nobody.sock')}"
    with pytest.raises(comm_core.ConnectTimeoutError) as info:
        await comm_core.connect(address, timeout=0.2)
    assert isinstance(info.value.__cause__, comm_core.ConnectError)


def test_address_functions() -> None:
    address = "unix:///run/app.sock"
    assert comm_core.get_address_host(address) == socket.gethostname()
    assert comm_core.resolve_address(address) == address
    assert comm_core.get_local_address_for(address) == "unix://"
    with pytest.raises(comm_core.AddressError, match="no port"):
        comm_core.get_address_host_port(address)


async def test_connection_arguments(socket_dir: str) -> None:
    address = f"unix://{os.path.join(socket_dir, 'args.sock')}"
    async with comm_core.listen(address, echo_handler, max_message_size=1000, backlog=8) as lst:
        assert lst.extra_info["backlog"] == 8
        async with await comm_core.connect(address, max_message_size=2000) as comm:
            assert comm.extra_info["max_message_size"] == 2000
            assert comm.same_host
            await comm.write({"data": b"x" * 1500})  # more than the server accepts
            with pytest.raises(comm_core.CommClosedError):
                await comm.read()


async def test_a_comm_that_connect_returned_survives_an_immediate_stop() -> None:
    # The listener stops, and removes its socket file, right after connect() returned:
    # the comm it accepted is still served (a stopped listener serves what it accepted).
    served = asyncio.Event()

    async def handler(comm: comm_core.Comm) -> None:
        await echo_handler(comm)
        served.set()

    async with comm_core.listen("unix://", handler) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5)
    assert not exists(listener.extra_info["path"])
    async with comm:
        await comm.write({"op": "ping"})
        assert await asyncio.wait_for(comm.read(), 5) == {"op": "ping"}
    await asyncio.wait_for(served.wait(), 5)  # the handler saw the client close


_IMPORT_PROBE = """
import json, sys
import comm_core
backend = comm_core.get_backend("unix")
heavy = ("asyncio", "socket", "comm_core.stream", "comm_unix._connector", "comm_unix._listener")
print(json.dumps([type(backend).__name__, sorted(m for m in heavy if m in sys.modules)]))
"""


def test_looking_up_the_backend_imports_no_asyncio() -> None:
    # comm-core imports every installed transport's plugin and backend class the first
    # time it needs any backend: those of comm-unix import neither asyncio nor socket.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _IMPORT_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["UnixBackend", []]


def os_limit() -> int:
    """The largest send buffer the OS grants (Linux: net.core.wmem_max)."""
    try:
        return int(read_text("/proc/sys/net/core/wmem_max"))
    except OSError:
        return 2**31 - 1


def send_buffer_of(comm: comm_core.Comm) -> int:
    transport = comm.transport  # type: ignore[attr-defined]
    size: int = transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    return size


@pytest.mark.parametrize("send_buffer", [None, 0, 3 * 1024 * 1024])
async def test_send_buffer(loop_name: str, send_buffer: int | None) -> None:
    """Both ends' sockets get the send buffer asked for (1 MiB by default; 0: the OS's)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as plain:
        os_default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    wanted = 1024 * 1024 if send_buffer is None else send_buffer
    served: list[int] = []

    async def handler(comm: comm_core.Comm) -> None:
        served.append(send_buffer_of(comm))
        await echo_handler(comm)

    args = {} if send_buffer is None else {"send_buffer": send_buffer}
    async with comm_core.listen("unix://", handler, **args) as listener:
        comm = await comm_core.connect(listener.contact_address, timeout=5, **args)
        async with comm:
            await comm.write("x")
            assert await comm.read() == "x"
            assert comm.extra_info["send_buffer"] == wanted
            dialer = send_buffer_of(comm)
    # Linux caps it at net.core.wmem_max and reports twice what it set (its bookkeeping).
    expected = os_default if wanted == 0 else min(wanted, os_limit())
    assert dialer in (expected, 2 * expected)
    assert served == [dialer]


@pytest.mark.parametrize("bad", [-1, 1.5, "big"])
def test_send_buffer_must_be_bytes(bad: object) -> None:
    with pytest.raises(ValueError, match="send_buffer"):
        comm_core.listen("unix://", echo_handler, send_buffer=bad)


async def test_a_full_backlog_is_retried_not_refused(loop_name: str, socket_dir: str) -> None:
    """A listener whose backlog is full makes a non-blocking connect fail with EAGAIN: that
    attempt is retried (ConnectError), never taken for a peer of another user."""
    path = os.path.join(socket_dir, "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(0)  # never accepts
        waiting = []
        try:
            for _ in range(64):  # bounded: Linux fills a backlog of 0 after one or two
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                waiting.append(client)
                try:
                    client.connect(path)
                except BlockingIOError:
                    break
            else:
                pytest.skip("this OS never reported a full backlog")
            with pytest.raises(comm_core.ConnectTimeoutError) as info:
                await comm_core.connect(f"unix://{path}", timeout=0.3)
            assert isinstance(info.value.__cause__, comm_core.ConnectError)
            assert not isinstance(info.value.__cause__, comm_core.FatalCommClosedError)
        finally:
            for client in waiting:
                client.close()


async def test_an_os_without_unix_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Python has no AF_UNIX (Windows), listen() and connect() say so, at once."""
    monkeypatch.delattr(socket, "AF_UNIX")
    with pytest.raises(comm_core.BackendError, match="needs Unix domain sockets"):
        comm_core.listen("unix://", echo_handler)
    with pytest.raises(comm_core.BackendError, match="needs Unix domain sockets"):
        await comm_core.connect("unix:///run/app.sock", timeout=5)
