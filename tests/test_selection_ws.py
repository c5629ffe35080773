"""Same-host selection over ``ws://``: a plain WebSocket listener offers its companion Unix
socket as a tcp one does, and ``connect("ws://...")`` from another process of this host
and user takes it; the listener's handler sees exactly one comm per ``connect()``, and
the WebSocket connection dialled first goes away without a log line. ``wss://`` offers
it behind a token, as ``tls://`` does.

The listener runs in a child process (the pid check means something), logging at INFO
level; the dialer runs here. See ``test_selection.py`` for the tcp tests, whose shape
these follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import comm_core
from comm_core import selection
from selection_support import child_listener as _child_listener
from selection_support import doctor_same_host, round_trip, seen_by

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("comm_unix") is None
        or importlib.util.find_spec("comm_ws") is None,
        reason="needs comm-unix and comm-ws",
    ),
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="the unix offer is tested on Linux (boot id, abstract names, SO_PEERCRED)",
    ),
]


@contextmanager
def child_listener(
    loop: str = "asyncio", overrides: dict[str, Any] | None = None, **more: Any
) -> Iterator[tuple[int, str, list[str]]]:
    """A ws listener (``ws://127.0.0.1:0/comm`` unless *more* has an ``address``) in a
    child process with selection on, logging comm's lines at INFO: its pid, contact
    address, and (after the block) the lines it logged."""
    more.setdefault("address", "ws://127.0.0.1:0/comm")
    with _child_listener(
        loop, env={"COMM_SAME_HOST": "1"}, overrides=overrides, log=True, **more
    ) as child:
        yield child


@pytest.fixture(autouse=True)
def _clean(selection_clean: None) -> None:
    """Each test starts without settings from the environment or remembered offers."""


def said(stderr: list[str]) -> list[str]:
    """What the child's comm logged (INFO and above)."""
    return [line for line in stderr if line.split(" ")[1:2] in (["comm_core"], ["comm_ws"])]


# -- the path is taken -------------------------------------------------------------------------


async def test_ws_to_a_listener_in_another_process_takes_its_unix_socket(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with child_listener(loop_name) as (pid, address, stderr):
        assert address.startswith("ws://")
        assert address.endswith("/comm")
        for n in range(3):
            selection.forget_paths()  # each connect dials ws first
            comm = await comm_core.connect(address, timeout=10)
            try:
                info = comm.extra_info
                assert info["path"] == "unix"
                assert info["requested"] == address
                assert info["peer_pid"] == pid
                assert comm.peer_address == comm.handshake_info["same_host_unix"]
                await round_trip(comm, {"n": n, "x": b"y" * 100_000})
            finally:
                await comm.close()
        # Later connects go straight to the remembered path, without dialling ws.
        ws = comm_core.get_backend("ws").get_connector()

        async def no_ws(*args: Any, **kwargs: Any) -> comm_core.Comm:
            raise AssertionError("dialled ws although a verified path was known")

        with monkeypatch.context() as patch:
            patch.setattr(ws, "connect", no_ws)
            comm = await comm_core.connect(address, timeout=10)
            try:
                assert comm.extra_info["path"] == "unix"
            finally:
                await comm.close()
        # One comm per connect, over unix: the WebSocket connections dialled first never
        # reached the handler ...
        assert await seen_by(address) == ["unix"] * 4
    # ... and went away without a word in the listener's log.
    assert not said(stderr), stderr


async def test_same_host_false_keeps_ws(loop_name: str) -> None:
    with child_listener(loop_name) as (_, address, stderr):
        comm = await comm_core.connect(address, timeout=10, same_host=False)
        try:
            assert "requested" not in comm.extra_info  # (its "path" is the HTTP path)
            assert comm.peer_address.startswith("ws://")
            assert selection.offer_of(comm.handshake_info)  # offered, not taken
            await round_trip(comm, "ws")
        finally:
            await comm.close()
        assert await seen_by(address) == ["ws"]
    assert not said(stderr), stderr


@pytest.mark.parametrize(
    "fake",
    [
        {"same_host_unix": "unix://@comm-selection-test-nobody-listens-here"},
        {"same_host_pid": 1},
        {"same_host_boot_id": "00000000-0000-0000-0000-000000000000"},
    ],
    ids=["absent", "another pid", "another boot"],
)
async def test_a_ws_offer_that_does_not_prove_itself_keeps_ws(
    loop_name: str, fake: dict[str, Any]
) -> None:
    with child_listener(loop_name, overrides=fake) as (_, address, stderr):
        for n in range(2):
            comm = await comm_core.connect(address, timeout=10)
            try:
                assert "requested" not in comm.extra_info  # (its "path" is the HTTP path)
                assert comm.peer_address.startswith("ws://")
                await round_trip(comm, n)
            finally:
                await comm.close()
        assert selection.known_offer(address) is None
        assert await seen_by(address) == ["ws", "ws"]
    assert not said(stderr), stderr


# -- a greeting that comes apart from the upgrade's response -----------------------------------


@contextlib.asynccontextmanager
async def splitting_proxy(target: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A TCP proxy to *target* (a ws:// address) that forwards the listener's upgrade
    response at once, and what follows it (the comm greeting) only once the client has
    sent something after its upgrade request, or after 0.3 s. Yields the proxy's ws://
    address, and a list that says, per connection, whether the client spoke before the
    greeting (``"client first"``) or not (``"greeting first"``)."""
    host, port = comm_core.get_address_host_port(target)
    path = target.split("/", 3)[3]
    order: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        spoke = asyncio.Event()
        ureader, uwriter = await asyncio.open_connection(host, port)

        async def up() -> None:
            head = b""
            while data := await creader.read(65536):
                if b"\r\n\r\n" not in head:
                    head += data
                    if b"\r\n\r\n" in head and not head.endswith(b"\r\n\r\n"):
                        spoke.set()
                else:
                    spoke.set()
                uwriter.write(data)
            uwriter.close()

        async def down() -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await ureader.read(65536)
                if not chunk:
                    return
                data += chunk
            end = data.index(b"\r\n\r\n") + 4
            cwriter.write(data[:end])
            await cwriter.drain()
            try:
                await asyncio.wait_for(spoke.wait(), 0.3)
            except (asyncio.TimeoutError, TimeoutError):
                order.append("greeting first")
            else:
                order.append("client first")
            cwriter.write(data[end:])
            while chunk := await ureader.read(65536):
                cwriter.write(chunk)
            cwriter.close()

        try:
            await asyncio.gather(up(), down())
        except (ConnectionError, OSError):
            pass
        finally:
            cwriter.transport.abort()
            uwriter.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/{path}", order
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_a_greeting_late_after_the_upgrade_still_comes_first(
    loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dialer holds its comm handshake until it has read the listener's greeting, even
    when the greeting comes in a later segment than the upgrade's response (a proxy, a
    congested link): the WebSocket connection it then abandons never reaches the handler."""
    from comm_ws import _protocol

    monkeypatch.setattr(_protocol, "HOLD_HANDSHAKE", 30.0)  # far longer than the proxy waits
    with child_listener(loop_name) as (_, address, stderr):
        async with splitting_proxy(address) as (proxied, order):
            comm = await comm_core.connect(proxied, timeout=10)
            try:
                assert comm.extra_info["path"] == "unix"
                assert comm.extra_info["requested"] == proxied
                await round_trip(comm, "through the proxy's offer")
            finally:
                await comm.close()
            assert order == ["greeting first"]
        assert await seen_by(address) == ["unix"]
    assert not said(stderr), stderr


# -- wss: the Unix socket behind a token ---------------------------------------------------------


async def test_wss_takes_the_unix_socket_behind_a_token_and_require_encryption_keeps_wss(
    loop_name: str,
) -> None:
    pytest.importorskip("comm_tls")
    from comm_tls import Security

    security = Security.temporary()
    pem = {"ca": security.ca, "cert": security.cert, "key": security.key}
    with child_listener(loop_name, address="wss://127.0.0.1:0/comm", security=pem) as (
        pid,
        address,
        stderr,
    ):
        assert address.startswith("wss://")
        comm = await comm_core.connect(address, timeout=10, security=security)
        try:
            info = comm.extra_info
            assert info["requested"] == address
            assert info["peer_pid"] == pid
            assert comm.peer_address.startswith("unix://@")
            await comm.write("who")
            authenticated, subject = await comm.read()
            assert authenticated == "wss"
            assert subject  # the certificate shown over TLS
            await round_trip(comm, {"x": b"y" * 100_000})
        finally:
            await comm.close()
        comm = await comm_core.connect(
            address, timeout=10, security=security, require_encryption=True
        )
        try:
            assert "requested" not in comm.extra_info  # (its "path" is the HTTP path)
            assert comm.peer_address.startswith("wss://")
        finally:
            await comm.close()
        # One comm per connect: the wss connection dialled first never reached the handler.
        assert await seen_by(address, security=security) == ["unix", "wss"]
    assert not said(stderr), stderr


async def test_a_ws_listener_offers_the_socket_itself_a_wss_one_behind_a_token() -> None:
    pytest.importorskip("comm_tls")
    from comm_tls import Security

    security = Security.temporary()

    async def handler(comm: comm_core.Comm) -> None:
        await comm.close()

    async with comm_core.listen("wss://127.0.0.1:0", handler, security=security) as listener:
        assert listener.session is not None
        offers = listener.session.offers  # type: ignore[attr-defined]
        assert [(offer.name, offer.per_comm) for offer in offers] == [("unix", True)]
    async with comm_core.listen("ws://127.0.0.1:0", handler) as listener:
        offers = listener.session.offers  # type: ignore[union-attr]
        assert [(offer.name, offer.per_comm) for offer in offers] == [("unix", False)]


# -- comm doctor -------------------------------------------------------------------------------


def test_comm_doctor_says_which_path_a_ws_address_takes() -> None:
    with child_listener() as (pid, address, _stderr):
        line = doctor_same_host(address)
    assert "the listener's own Unix socket" in line, line
    assert f"(pid {pid})" in line
    with child_listener(overrides={"same_host_pid": 1}) as (_, address, _stderr):
        line = doctor_same_host(address)
    assert "WebSocket: the listener's Unix socket was not taken: " in line, line
    assert "is not the listener's" in line, line
