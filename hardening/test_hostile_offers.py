"""Hostile same-host offers: a tcp:// listener that tries to pull a dialer elsewhere.

A listener's greeting may offer a Unix socket on this host (``same_host_*`` entries,
see docs/paths.rst); every byte of it is the listener's word. The listeners here are
hostile: a comm listener in this process whose ``handshake_overrides`` fake the
entries (they win over the real ones), or a raw server speaking just enough of comm's
stream protocol. They name sockets of other processes (squatters, in child processes
of the same user), this process's own pid, another kernel or user, values of the wrong
type or size, files that are not sockets, a directory the dialer cannot enter, sockets
that accept and then close or say nothing, and an offer that changes once a dialer
remembered it.

For each, ``connect()`` (with same-host selection on: this suite turns it off
elsewhere) returns a working comm to the listener it was asked for (or a clear comm
error where the listener itself breaks the protocol), within a bounded time, and the
listener's handler sees exactly one comm per ``connect()``. The suite's autouse
fixture fails any test that leaks a comm, a listener or a descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import comm_core
from comm_core import Comm, selection
from hostile_msgpack import PREAMBLE, handshake, one_frame
from support import IPV4, linux_only, within

pytestmark = [
    linux_only,  # the boot id, abstract socket names, SO_PEERCRED
    pytest.mark.skipif(importlib.util.find_spec("comm_unix") is None, reason="needs comm-unix"),
]

_LINUX = sys.platform.startswith("linux")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip() if _LINUX else ""
UID = os.geteuid() if hasattr(os, "geteuid") else -1

#: The connect budget of the dialer in these tests, and its handshake timeout.
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 2.0
#: How long a connect() whose offer is refused at once may take (it dials TCP once).
PROMPT = 2.0


@pytest.fixture(autouse=True)
def _fresh_paths() -> Iterator[None]:
    selection.forget_paths()
    yield
    selection.forget_paths()


# -- squatters: sockets of other processes of this user ----------------------------------------

SQUATTER = textwrap.dedent(
    """
    import asyncio, json, os, socket, sys, threading

    mode = sys.argv[1]
    name = "comm-hostile-offer-" + os.urandom(6).hex()
    if mode == "comm":
        # A genuine comm listener of this user, on a Unix socket: a working impostor.
        import comm_core

        async def main():
            async def handler(comm):
                async for msg in comm:
                    await comm.write(["squatter", msg])

            async with comm_core.listen("unix://@" + name, handler) as listener:
                print(json.dumps([os.getpid(), listener.contact_address]), flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

        asyncio.run(main())
        sys.exit(0)

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(b"\\0" + name.encode())
    held = []
    if mode == "full":
        # A backlog of 0, filled by a connection nobody accepts: connect() gets EAGAIN.
        server.listen(0)
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.connect(b"\\0" + name.encode())
        held.append(filler)
    else:
        server.listen(16)

    def serve():
        while True:
            conn, _ = server.accept()
            if mode == "close":
                conn.close()
            elif mode == "garbage":
                conn.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n" * 4)
                held.append(conn)
            else:  # "silent": accept, read nothing, say nothing
                held.append(conn)

    if mode != "full":
        threading.Thread(target=serve, daemon=True).start()
    print(json.dumps([os.getpid(), "unix://@" + name]), flush=True)
    sys.stdin.read()
    """
)


@contextlib.contextmanager
def squatter(
    mode: str, *, user: int | None = None, python: str = sys.executable
) -> Iterator[tuple[int, str]]:
    """A process of this user (or of *user*) listening on a fresh abstract Unix socket:
    its pid and address. *mode*: ``comm`` (a comm listener answering ``["squatter",
    msg]``), ``close`` (accepts, closes at once), ``silent`` (accepts, never answers),
    ``garbage`` (accepts, answers HTTP), ``full`` (its backlog is full)."""
    extra: dict[str, Any] = {} if user is None else {"user": user, "group": user, "cwd": "/"}
    with subprocess.Popen(
        [python, "-c", SQUATTER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **extra,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, "the squatter did not start"
            pid, address = json.loads(line)
            yield pid, address
        finally:
            _, err = child.communicate(timeout=30)
            assert child.returncode == 0, err


def offer(pid: int, address: str, /, **changes: Any) -> dict[str, Any]:
    """A well-formed unix offer naming *address* and *pid* on this kernel and for this
    user, with *changes* (keys without the ``same_host_`` prefix)."""
    entries: dict[str, Any] = {
        "same_host_boot_id": BOOT_ID,
        "same_host_unix": address,
        "same_host_pid": pid,
        "same_host_uid": UID,
    }
    for key, value in changes.items():
        entries[f"same_host_{key}"] = value
    return entries


# -- the hostile listener, and the dialer ------------------------------------------------------


class Hostile:
    """A tcp:// comm listener in this process whose greeting carries a fake offer; its
    handler answers ``["requested", msg]`` and records each comm it is handed."""

    def __init__(self) -> None:
        self.handed: list[str] = []
        self.listener: comm_core.Listener | None = None

    async def handler(self, comm: Comm) -> None:
        self.handed.append(comm.local_address.partition("://")[0])
        async for msg in comm:
            await comm.write(["requested", msg])

    @property
    def address(self) -> str:
        assert self.listener is not None
        return self.listener.contact_address


@contextlib.asynccontextmanager
async def hostile(overrides: dict[str, Any], port: int = 0) -> AsyncIterator[Hostile]:
    served = Hostile()
    # same_host=False: no real offer; the overrides are the whole of it.
    async with comm_core.listen(
        f"tcp://{IPV4}:{port}", served.handler, handshake_overrides=overrides, same_host=False
    ) as listener:
        served.listener = listener
        yield served


async def dial(address: str, **kwargs: Any) -> tuple[Comm, float]:
    """``connect()`` with same-host selection on; the comm and the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    kwargs.setdefault("timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("handshake_timeout", HANDSHAKE_TIMEOUT)
    comm = await within(comm_core.connect(address, same_host=True, **kwargs), "connect")
    return comm, loop.time() - start


async def reaches_the_requested_listener(comm: Comm, address: str) -> None:
    """*comm* is a tcp comm to *address* that works."""
    try:
        assert "requested" not in comm.extra_info, comm.extra_info
        assert comm.peer_address == address
        await comm.write({"ping": b"x" * 1000})
        assert await within(comm.read(), "the echo") == ["requested", {"ping": b"x" * 1000}]
    finally:
        await comm.close()


async def keeps_tcp(served: Hostile, connects: int = 2, bound: float = PROMPT) -> None:
    """*connects* connects to *served* each stay on TCP, work, take less than *bound*
    seconds, and reach its handler once each; nothing is remembered."""
    for _ in range(connects):
        comm, took = await dial(served.address)
        assert took < bound, f"connect() took {took:.2f}s"
        await reaches_the_requested_listener(comm, served.address)
    assert selection.known_offer(served.address) is None
    assert served.handed == ["tcp"] * connects


# -- sockets of other processes -----------------------------------------------------------------


async def test_a_squatted_socket_is_not_taken_for_the_pid_the_offer_names() -> None:
    """The offer names a working comm listener's socket (a squatter's) and the pid of
    another process (the one a real listener would have, say): the kernel's word on
    who listens there disagrees, and the dialer keeps TCP."""
    with squatter("comm") as (squatter_pid, address), squatter("silent") as (other_pid, _):
        assert squatter_pid != other_pid
        async with hostile(offer(other_pid, address)) as served:
            await keeps_tcp(served)


async def test_an_offer_of_the_dialers_own_pid_is_not_taken() -> None:
    with squatter("comm") as (_, address):
        async with hostile(offer(os.getpid(), address)) as served:
            await keeps_tcp(served)


async def test_a_squatter_of_another_user_is_not_taken() -> None:
    """A squatter running as another user (nobody): whether the offer says this user or
    the squatter's, the dialer keeps TCP (root only: it starts the squatter as nobody,
    with the system's python, which nobody may run)."""
    if UID != 0:
        pytest.skip("needs root, to run a squatter as another user")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("needs a system python3 that user nobody may run")
    nobody = 65534
    with squatter("silent", user=nobody, python=python) as (pid, address):
        for uid in (UID, nobody):
            async with hostile(offer(pid, address, uid=uid)) as served:
                await keeps_tcp(served)


# -- another kernel, another user, values of the wrong type or size ----------------------------

#: Offers of a working comm listener's socket (a squatter's, with its true pid) with one
#: entry wrong: each must keep TCP. ``None`` stands for the squatter's pid or address.
WRONG: dict[str, dict[str, Any]] = {
    "boot id of another kernel": {"boot_id": "00000000-0000-0000-0000-000000000000"},
    "boot id in capitals": {"boot_id": BOOT_ID.upper()},
    "boot id with a newline": {"boot_id": BOOT_ID + "\n"},
    "boot id empty": {"boot_id": ""},
    "boot id as bytes": {"boot_id": BOOT_ID.encode()},
    "uid of another user": {"uid": 65534 if UID != 65534 else 0},
    "uid plus 2**32": {"uid": UID + 2**32},
    "uid -1": {"uid": -1},
    "uid as str": {"uid": str(UID)},
    "uid as bool": {"uid": bool(UID)},
    "uid as float": {"uid": float(UID)},
    "pid as str": {"pid": "PID"},
    "pid as bool": {"pid": True},
    "pid None": {"pid": None},
    "pid in a list": {"pid": ["PID"]},
    "pid as float": {"pid": "PID.0"},
    "pid plus 2**32": {"pid": "PID+2**32"},
    "pid 2**64 - 1": {"pid": 2**64 - 1},
    "pid -2**63": {"pid": -(2**63)},
    "pid 0": {"pid": 0},
    "address None": {"unix": None},
    "address in a list": {"unix": ["ADDRESS"]},
    "address as bytes": {"unix": "ADDRESS.bytes"},
    "address of 1000 characters": {"unix": "unix://@" + "a" * 992},
    "address of 1000 slashes": {"unix": "unix://" + "/" * 993},
    "address with a NUL": {"unix": "ADDRESS\0"},
    "address relative": {"unix": "unix://comm-hostile-offer"},
    "address of another scheme": {"unix": "tcp://127.0.0.1:1"},
    "address empty": {"unix": "unix://"},
    "address of the abstract namespace alone": {"unix": "unix://@"},
}


def _resolve(value: Any, pid: int, address: str) -> Any:
    if value == "PID":
        return str(pid)
    if value == ["PID"]:
        return [pid]
    if value == "PID.0":
        return float(pid)
    if value == "PID+2**32":
        return pid + 2**32
    if value == ["ADDRESS"]:
        return [address]
    if value == "ADDRESS.bytes":
        return address.encode()
    if value == "ADDRESS\0":
        return address + "\0"
    return value


async def test_the_well_formed_offer_is_taken() -> None:
    """The control of the test below: the squatter's own offer (its true pid, this user,
    this kernel) is taken. This is the residual risk docs/paths.rst accepts: a listener
    may send a dialer to another comm endpoint *of the dialer's own user*; it cannot
    send it to another user's."""
    with squatter("comm") as (pid, address):
        async with hostile(offer(pid, address)) as served:
            comm, _ = await dial(served.address)
            try:
                assert comm.extra_info["path"] == "unix"
                assert comm.extra_info["peer_pid"] == pid
                await comm.write("hello")
                assert await within(comm.read(), "the echo") == ["squatter", "hello"]
            finally:
                await comm.close()
            assert served.handed == []  # its TCP connection was dropped before its preamble


@pytest.mark.parametrize("wrong", list(WRONG))
async def test_an_offer_with_one_wrong_entry_keeps_tcp(wrong: str) -> None:
    with squatter("comm") as (pid, address):
        changes = {key: _resolve(value, pid, address) for key, value in WRONG[wrong].items()}
        async with hostile(offer(pid, address, **changes)) as served:
            await keeps_tcp(served)


@pytest.mark.parametrize("missing", ["boot_id", "unix", "pid", "uid"])
async def test_an_offer_missing_an_entry_keeps_tcp(missing: str) -> None:
    with squatter("comm") as (pid, address):
        entries = offer(pid, address)
        del entries[f"same_host_{missing}"]
        async with hostile(entries) as served:
            await keeps_tcp(served)


# -- paths that are not sockets, or not open to the dialer -------------------------------------


@pytest.mark.parametrize("kind", ["regular file", "directory", "fifo", "absent", "dangling link"])
async def test_an_offer_of_a_path_that_is_not_a_socket_keeps_tcp(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "offered"
    if kind == "regular file":
        path.write_bytes(b"not a socket")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    with squatter("silent") as (pid, _):
        async with hostile(offer(pid, f"unix://{path}")) as served:
            await keeps_tcp(served)


DIALER = textwrap.dedent(
    """
    import asyncio, json, sys
    import comm_core

    async def main():
        address = sys.argv[1]
        loop = asyncio.get_running_loop()
        start = loop.time()
        comm = await comm_core.connect(
            address, timeout=10, handshake_timeout=2, same_host=True
        )
        took = loop.time() - start
        await comm.write("hello")
        echo = await comm.read()
        report = {"requested": "requested" in comm.extra_info, "peer": comm.peer_address,
                  "echo": echo, "took": took}
        await comm.close()
        print(json.dumps(report), flush=True)

    asyncio.run(main())
    """
)


async def test_a_socket_in_a_directory_the_dialer_cannot_enter_keeps_tcp(tmp_path: Path) -> None:
    """The offered socket is a comm listener's (this process's, with its true pid) in a
    directory of mode 0: the dialer's connect() is refused by the file system (EACCES),
    and it keeps TCP; with the directory open, the same offer is taken (the control).
    The dialer runs in a child process (the offer names this process); as root, without
    the capabilities that let root enter any directory."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    command = [sys.executable, "-c", DIALER]
    if UID == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("as root, needs setpriv to drop CAP_DAC_OVERRIDE")
        drop = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", *command]

    async def run_dialer(address: str) -> dict[str, Any]:
        child = await asyncio.create_subprocess_exec(
            *command,
            address,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COMM_SAME_HOST": "1"},
        )
        out, err = await within(child.communicate(), "the dialer child", 60)
        assert child.returncode == 0, err.decode()
        report: dict[str, Any] = json.loads(out)
        return report

    async def locked_handler(comm: Comm) -> None:
        async for msg in comm:
            await comm.write(["locked", msg])

    async with comm_core.listen(f"unix://{locked / 'sock'}", locked_handler) as target:
        entries = offer(os.getpid(), target.contact_address)
        async with hostile(entries) as served:
            report = await run_dialer(served.address)
            assert report["requested"] is True  # the control: an open directory
            assert report["echo"] == ["locked", "hello"]
            locked.chmod(0)
            try:
                report = await run_dialer(served.address)
            finally:
                locked.chmod(0o700)
            assert report["requested"] is False
            assert report["peer"] == served.address
            assert report["echo"] == ["requested", "hello"]
            assert report["took"] < PROMPT
            assert served.handed == ["tcp"]


# -- sockets that accept and then fail the dialer -----------------------------------------------


@pytest.mark.parametrize("mode", ["close", "garbage", "full"])
async def test_an_offered_socket_that_fails_at_once_keeps_tcp(mode: str) -> None:
    """The socket is the offer's process's own (same user, true pid): the kernel's proof
    holds, but it closes at once, speaks HTTP, or has no room. The dialer dials the
    listener again over TCP at once: the connect works, and the handler sees one comm."""
    with squatter(mode) as (pid, address):
        async with hostile(offer(pid, address)) as served:
            await keeps_tcp(served)


async def test_an_offered_socket_that_never_answers_costs_at_most_the_handshake_timeout() -> None:
    """Accepted, then silence: the comm handshake over it times out, and the dialer
    dials the listener again over TCP, well within its connect budget."""
    with squatter("silent") as (pid, address):
        async with hostile(offer(pid, address)) as served:
            comm, took = await dial(served.address)
            assert took < HANDSHAKE_TIMEOUT + PROMPT, f"connect() took {took:.2f}s"
            await reaches_the_requested_listener(comm, served.address)
            assert served.handed == ["tcp"]
            assert selection.known_offer(served.address) is None


async def test_an_offered_socket_that_never_answers_leaves_time_for_tcp() -> None:
    """The same with a connect budget shorter than the handshake timeout (a caller in a
    hurry, with the default 10 s handshake timeout): the silent socket may not take the
    whole budget; TCP, which worked, must still be dialled in time."""
    with squatter("silent") as (pid, address):
        async with hostile(offer(pid, address)) as served:
            comm, took = await dial(served.address, timeout=3.0, handshake_timeout=10.0)
            assert took < 3.0
            await reaches_the_requested_listener(comm, served.address)
            assert served.handed == ["tcp"]


# -- an offer that changes once remembered -----------------------------------------------------


async def test_a_remembered_offer_is_proved_again_when_the_listener_changes_it() -> None:
    """A listener's offer leads to a working socket (remembered); then the listener
    restarts on the same port with another offer, and another process squats the
    remembered socket's name: the next connect() proves the remembered offer again,
    finds another process there, forgets it, dials TCP, and refuses the new offer too."""
    with squatter("comm") as (first_pid, first):
        async with hostile(offer(first_pid, first)) as served:
            address = served.address
            port = comm_core.get_address_host_port(address)[1]
            comm, _ = await dial(address)
            try:
                assert comm.extra_info["peer_pid"] == first_pid
            finally:
                await comm.close()
            assert selection.known_offer(address) == offer(first_pid, first)
    # The first socket's process is gone: a squatter takes its name.
    name = first.removeprefix("unix://@").encode()
    squat = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squat.bind(b"\0" + name)
        squat.listen(4)
        with squatter("silent") as (_, other):
            # The listener is back, on the same port, offering a socket with a pid
            # that is not its owner's.
            async with hostile(offer(first_pid, other), port=port) as served:
                assert served.address == address
                # The remembered offer (first_pid at `first`) no longer proves itself:
                # this process holds the name now.
                comm, took = await dial(address)
                assert took < PROMPT
                await reaches_the_requested_listener(comm, address)
                assert served.handed == ["tcp"]
                assert selection.known_offer(address) is None
    finally:
        squat.close()


# -- a raw listener: entries a comm listener would not even send ---------------------------------


@contextlib.asynccontextmanager
async def raw_greeter(greeting: bytes) -> AsyncIterator[str]:
    """A server that answers each connection with comm's preamble and *greeting* (a
    handshake message body), then reads until the dialer goes away."""
    tasks: set[asyncio.Task[Any]] = set()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        writer.write(PREAMBLE + one_frame(greeting))
        with contextlib.suppress(ConnectionError, OSError):
            await reader.read()
        writer.transport.abort()

    server = await asyncio.start_server(greet, IPV4, 0)
    try:
        yield f"tcp://{IPV4}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        # Each connection ends when the dialer, which refused the greeting, drops it.
        await within(asyncio.gather(*tasks), "the dialers to hang up")
        await server.wait_closed()


@pytest.mark.parametrize(
    "entry",
    ["address of 4000 characters", "address of invalid UTF-8", "a dict for the pid"],
)
async def test_an_offer_that_breaks_the_handshake_rules_is_a_handshake_error(entry: str) -> None:
    """Entries a handshake may not hold (a str over 1024 characters, bytes that are not
    UTF-8 in a str, a map): the whole greeting is refused, at once, with a clear
    HandshakeError; no socket is tried."""
    from hostile_msgpack import Raw, pack, string

    with squatter("comm") as (pid, address):
        entries: dict[str, Any] = {
            "same_host_boot_id": BOOT_ID,
            "same_host_unix": address,
            "same_host_pid": pid,
            "same_host_uid": UID,
        }
        if entry == "address of 4000 characters":
            entries["same_host_unix"] = "unix://@" + "a" * 3992
        elif entry == "address of invalid UTF-8":
            entries["same_host_unix"] = Raw(string(b"unix://@\xff\xfe"))
        else:
            entries["same_host_pid"] = Raw(pack({"pid": pid}))
        async with raw_greeter(handshake(**entries)) as address_:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(comm_core.HandshakeError):
                await within(
                    comm_core.connect(address_, timeout=CONNECT_TIMEOUT, same_host=True),
                    "connect",
                )
            assert loop.time() - start < PROMPT
            assert selection.known_offer(address_) is None
