"""connect(), listen() and the comm handshake, over the in-memory test backend."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

import comm_core
from comm_core import (
    PROTOCOL_VERSION,
    AddressError,
    Comm,
    CommClosedError,
    ConnectError,
    ConnectTimeoutError,
    EncryptionRequiredError,
    FatalCommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    IncompatibleProtocolError,
    Registry,
)
from comm_core.session import handshake
from memory_backend import (
    EncryptedMemoryBackend,
    InProcessMemoryBackend,
    MemoryBackend,
    MemoryComm,
    MemoryListener,
)


async def echo(comm: Comm) -> None:
    async for msg in comm:
        await comm.write(msg)


def fail_first(n: int, exc: Callable[[], BaseException]) -> Callable[[str], None]:
    """A connect hook that makes the first *n* attempts raise ``exc()``."""
    calls = 0

    def hook(loc: str) -> None:
        nonlocal calls
        calls += 1
        if calls <= n:
            raise exc()

    return hook


# -- connect and retries ---------------------------------------------------------------


async def test_connect_and_echo(memory: MemoryBackend) -> None:
    async with comm_core.listen("memory://", echo) as listener:
        assert isinstance(listener, MemoryListener)
        async with await comm_core.connect(listener.contact_address) as comm:
            assert comm.peer_address == listener.contact_address
            for msg in ({"op": "ping"}, [1, 2], b"x" * 10):
                await comm.write(msg)
                assert await comm.read() == msg
        await listener.join()
    assert memory.attempts == 1


async def test_listen_returns_an_unstarted_listener(memory: MemoryBackend) -> None:
    listener = comm_core.listen("memory://named", echo)
    assert repr(listener) == "<MemoryListener (not started)>"
    assert "named" not in memory.listeners
    assert await listener is listener  # `await listener` starts it
    try:
        assert repr(listener) == "<MemoryListener memory://named>"
        assert memory.listeners["named"] is listener
        await listener.start()  # idempotent
        with pytest.raises(ConnectError, match="already in use"):
            await comm_core.listen("memory://named", echo).start()
    finally:
        listener.stop()
    assert "named" not in memory.listeners
    listener.stop()  # idempotent


@pytest.mark.parametrize(
    "exc",
    [
        lambda: ConnectError("refused"),
        lambda: CommClosedError("reset"),
        lambda: ConnectionRefusedError(111, "Connection refused"),
        lambda: TimeoutError("attempt timed out"),
    ],
    ids=["ConnectError", "CommClosedError", "OSError", "TimeoutError"],
)
async def test_connect_retries_transient_failures(
    memory: MemoryBackend, exc: Callable[[], BaseException]
) -> None:
    memory.connect_hook = fail_first(3, exc)
    async with comm_core.listen("memory://", echo) as listener:
        async with await comm_core.connect(listener.contact_address, timeout=10) as comm:
            await comm.write("hello")
            assert await comm.read() == "hello"
        await listener.join()
    assert memory.attempts == 4


async def test_connect_retries_until_a_listener_appears(memory: MemoryBackend) -> None:
    listener = comm_core.listen("memory://late", echo)
    starting: list[asyncio.Task[None]] = []

    def start_during_third_attempt(loc: str) -> None:
        if memory.attempts == 3:  # the connector yields once, and the listener starts
            starting.append(asyncio.get_running_loop().create_task(listener.start()))

    memory.connect_hook = start_during_third_attempt
    try:
        async with await comm_core.connect("memory://late", timeout=10) as comm:
            await comm.write(1)
            assert await comm.read() == 1
    finally:
        listener.stop()
    await listener.join()
    assert memory.attempts == 3
    assert starting[0].done()


async def test_connect_gives_up_after_its_budget(memory: MemoryBackend) -> None:
    def refuse(loc: str) -> None:
        raise ConnectError(f"refused #{memory.attempts}")

    memory.connect_hook = refuse
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ConnectTimeoutError) as info:
        await comm_core.connect("memory://nobody", timeout=0.2)
    spent = loop.time() - start
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert exc.address == "memory://nobody"
    assert exc.attempts == memory.attempts
    assert exc.attempts > 1
    assert 0.2 <= exc.elapsed <= spent
    message = str(exc)
    assert "'memory://nobody'" in message
    assert f"after {exc.elapsed:.2f}s and {exc.attempts} attempts" in message
    # The last error is that of the last attempt, or, if the budget cut that attempt
    # short, of the one before it (a cut-short attempt says less).
    last = str(exc.__cause__)
    assert last in (f"refused #{exc.attempts}", f"refused #{exc.attempts - 1}")
    assert f"last error: ConnectError: {last}" in message
    assert isinstance(exc.__cause__, ConnectError)


async def test_connect_budget_from_settings(memory: MemoryBackend) -> None:
    with comm_core.configure(connect_timeout=0.05), pytest.raises(ConnectTimeoutError) as info:
        await comm_core.connect("memory://nobody")
    assert isinstance(info.value.__cause__, ConnectError)
    assert "nobody listens on memory://nobody" in str(info.value)


async def test_connect_with_zero_budget_tries_once(memory: MemoryBackend) -> None:
    with pytest.raises(ConnectTimeoutError, match="1 attempt;"):
        await comm_core.connect("memory://nobody", timeout=0)
    assert memory.attempts == 1


async def test_peer_closing_during_handshake_is_retried(memory: MemoryBackend) -> None:
    async with comm_core.listen("memory://", echo, accept="close") as listener:
        with pytest.raises(ConnectTimeoutError) as info:
            await comm_core.connect(listener.contact_address, timeout=0.1)
    assert isinstance(info.value.__cause__, CommClosedError)
    assert info.value.attempts == memory.attempts > 1


@pytest.mark.parametrize(
    "exc",
    [
        lambda: AddressError("bad location"),
        lambda: FatalCommClosedError("certificate rejected"),
        lambda: comm_core.HostNotFoundError("no such host", host="nosuchhost.invalid"),
        lambda: TypeError("connect() got an unexpected keyword argument"),
        lambda: ValueError("programming error"),
    ],
    ids=["AddressError", "FatalCommClosedError", "HostNotFoundError", "TypeError", "ValueError"],
)
async def test_connect_does_not_retry_errors_no_retry_fixes(
    memory: MemoryBackend, exc: Callable[[], BaseException]
) -> None:
    expected = exc()
    memory.connect_hook = fail_first(100, exc)
    with pytest.raises(type(expected), match=re.escape(str(expected))):
        await comm_core.connect("memory://anywhere", timeout=10)
    assert memory.attempts == 1


async def test_a_temporary_resolver_failure_is_retried(memory: MemoryBackend) -> None:
    # What comm_core.sockets.connect_error makes of EAI_AGAIN: a plain ConnectError.
    from comm_core.sockets import connect_error

    def try_again() -> BaseException:
        gaierror = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return connect_error("memory://somewhere:1", gaierror)

    memory.connect_hook = fail_first(2, try_again)
    async with (
        comm_core.listen("memory://somewhere", echo),
        await comm_core.connect("memory://somewhere", timeout=10) as comm,
    ):
        await comm.write(1)
        assert await comm.read() == 1
    assert memory.attempts == 3


async def test_malformed_address_is_not_retried(memory: MemoryBackend) -> None:
    with pytest.raises(AddressError, match="invalid scheme"):
        await comm_core.connect("mem ory://x", timeout=10)
    assert memory.attempts == 0


async def test_connection_args_reach_the_backend(memory: MemoryBackend) -> None:
    seen: list[dict[str, Any]] = []
    original = memory.get_listener

    def get_listener(*args: Any, **kwargs: Any) -> MemoryListener:
        seen.append(kwargs)
        return original(*args, **kwargs)

    memory.get_listener = get_listener  # type: ignore[method-assign]
    listener = comm_core.listen("memory://", echo, ssl_context="ctx")
    assert seen == [{"ssl_context": "ctx"}]
    listener.stop()


def test_listen_refuses_a_handler_that_is_not_callable(memory: MemoryBackend) -> None:
    with pytest.raises(TypeError, match="handle_comm must be callable, got str"):
        comm_core.listen("memory://", "echo")  # type: ignore[arg-type]


def test_listen_on_a_malformed_location(memory: MemoryBackend) -> None:
    with pytest.raises(AddressError, match="may not contain"):
        comm_core.listen("memory://a/b", echo)


# -- the handshake ---------------------------------------------------------------------


async def test_handshake_info_on_both_sides(memory: MemoryBackend) -> None:
    server_side: asyncio.Queue[Comm] = asyncio.Queue()

    async def keep(comm: Comm) -> None:
        await server_side.put(comm)

    listener = comm_core.listen("memory://", keep, handshake_overrides={"role": "server"})
    async with listener:
        client = await comm_core.connect(
            listener.contact_address, handshake_overrides={"role": "client", "pid": 1}
        )
        server = await server_side.get()
        async with client, server:
            assert client.handshake_info["role"] == "server"
            assert client.local_handshake_info["role"] == "client"
            assert server.handshake_info["role"] == "client"
            assert server.handshake_info["pid"] == 1
            assert server.local_handshake_info["role"] == "server"
            for info in (client.handshake_info, server.handshake_info):
                assert info["protocol"] == PROTOCOL_VERSION
                assert info["library"] == "comm-core"
                assert info["version"] == comm_core.__version__
            assert dict(client.handshake_info) == dict(server.local_handshake_info)
            assert dict(server.handshake_info) == dict(client.local_handshake_info)
            with pytest.raises(TypeError):
                client.handshake_info["role"] = "x"  # type: ignore[index]
        await listener.join()


async def test_handshake_options_of_the_transport(memory: MemoryBackend) -> None:
    class OptionsComm(MemoryComm):
        def handshake_options(self) -> dict[str, Any]:
            return {"transport": "memory", "role": "default"}

    a, b = OptionsComm.pair("memory://a", "memory://b")
    overrides = {"role": "mine"}
    await asyncio.gather(
        handshake(a, overrides, 5, "a"),
        handshake(b, None, 5, "b"),
    )
    assert b.handshake_info["transport"] == "memory"
    assert b.handshake_info["role"] == "mine"  # overrides win over the transport's options
    assert a.handshake_info["role"] == "default"
    await a.close()
    await b.close()


async def test_handshake_timeout_on_connect(memory: MemoryBackend) -> None:
    loop = asyncio.get_running_loop()
    async with comm_core.listen("memory://", echo, accept="silent") as listener:
        start = loop.time()
        with pytest.raises(HandshakeTimeoutError) as info:
            await comm_core.connect(listener.contact_address, timeout=30, handshake_timeout=0.1)
        spent = loop.time() - start
    assert isinstance(info.value, TimeoutError)
    assert f"connect to {listener.contact_address!r}" in str(info.value)
    assert "within 0.1s" in str(info.value)
    assert 0.1 <= spent < 15  # the handshake's timeout, not the connect budget
    assert memory.attempts == 1  # not retried


async def test_handshake_timeout_from_settings(memory: MemoryBackend) -> None:
    with comm_core.configure(handshake_timeout=0.05):
        async with comm_core.listen("memory://", echo, accept="silent") as listener:
            with pytest.raises(HandshakeTimeoutError, match=r"within 0\.05s"):
                await comm_core.connect(listener.contact_address, timeout=30)
    assert memory.attempts == 1


async def test_handshake_cut_short_by_the_connect_budget(memory: MemoryBackend) -> None:
    async with comm_core.listen("memory://", echo, accept="silent") as listener:
        with pytest.raises(ConnectTimeoutError) as info:
            await comm_core.connect(listener.contact_address, timeout=0.1, handshake_timeout=30)
    assert isinstance(info.value.__cause__, HandshakeTimeoutError)


async def test_incompatible_protocol_on_connect(memory: MemoryBackend) -> None:
    async with comm_core.listen(
        "memory://", echo, handshake_overrides={"protocol": PROTOCOL_VERSION + 98}
    ) as listener:
        with pytest.raises(IncompatibleProtocolError) as info:
            await comm_core.connect(listener.contact_address, timeout=10)
        await listener.join()
    message = str(info.value)
    assert f"comm protocol {PROTOCOL_VERSION + 98}" in message
    assert f"protocol {PROTOCOL_VERSION} (comm-core {comm_core.__version__})" in message
    assert memory.attempts == 1  # not retried


async def test_incompatible_protocol_on_the_server(
    memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    called: list[Comm] = []
    async with comm_core.listen("memory://", called.append) as listener:
        comm = await comm_core.connect(
            listener.contact_address, handshake_overrides={"protocol": PROTOCOL_VERSION + 1}
        )
        with pytest.raises(CommClosedError):  # the server dropped it
            await comm.read()
        await listener.join()
    assert called == []
    [record] = [r for r in caplog.records if r.name == "comm_core"]
    assert record.levelno == logging.WARNING
    assert f"comm protocol {PROTOCOL_VERSION + 1}" in record.getMessage()


@pytest.mark.parametrize("reply", ["hello", {"no": "protocol"}, {"protocol": "1"}])
async def test_not_a_handshake(memory: MemoryBackend, reply: object) -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    await b.write(reply)
    with pytest.raises(HandshakeError, match="instead of a comm handshake"):
        await handshake(a, None, 5, "test")
    assert a.closed()
    await b.close()


async def test_server_handshake_timeout_drops_a_silent_client(
    memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="comm_core")
    called: list[Comm] = []
    async with comm_core.listen("memory://", called.append, handshake_timeout=0.05) as listener:
        raw = await memory.get_connector().connect(listener.contact_address.split("://")[1])
        hello = await raw.read()  # the server's half of the handshake
        assert hello["protocol"] == PROTOCOL_VERSION
        with pytest.raises(CommClosedError):  # we never answer: the server drops us
            await raw.read()
        await listener.join()
    assert called == []
    assert any(
        "failed its handshake" in r.getMessage() and "within 0.05s" in r.getMessage()
        for r in caplog.records
    )


async def test_listen_reads_the_handshake_timeout_setting_once(
    memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """The setting in force when listen() is called holds for every comm it accepts."""
    caplog.set_level(logging.INFO, logger="comm_core")
    with comm_core.configure(handshake_timeout=0.05):
        listener = comm_core.listen("memory://", echo)
    assert listener.handshake_timeout == 0.05
    with comm_core.configure(handshake_timeout=60):
        async with listener:
            assert listener.handshake_timeout == 0.05
            raw = await memory.get_connector().connect(listener.contact_address.split("://")[1])
            await raw.read()  # the server's half of the handshake; we never answer
            with pytest.raises(CommClosedError):
                await raw.read()
            await listener.join()
    assert any("within 0.05s" in r.getMessage() for r in caplog.records)


async def test_a_stopped_listener_serves_a_comm_whose_handshake_ends_after_stop(
    memory: MemoryBackend,
) -> None:
    """stop() does not abort comms in their handshake: one that completes it is served
    (its dialer's connect() may have returned already; see Listener.stop)."""
    called: list[Comm] = []
    listener = await comm_core.listen("memory://", called.append, handshake_timeout=60)
    raw = await memory.get_connector().connect(listener.contact_address.split("://")[1])
    greeting = await raw.read()
    listener.stop()
    await raw.write({"protocol": greeting["protocol"], "library": "a test"})
    await listener.join()
    assert len(called) == 1
    await raw.close()
    await called[0].close()


async def test_a_stopped_listener_drops_silent_comms_at_their_deadline(
    memory: MemoryBackend,
) -> None:
    called: list[Comm] = []
    listener = await comm_core.listen("memory://", called.append, handshake_timeout=0.05)
    raw = await memory.get_connector().connect(listener.contact_address.split("://")[1])
    await raw.read()
    listener.stop()
    with pytest.raises(CommClosedError):
        await asyncio.wait_for(raw.read(), 5)  # the handshake timed out
    await listener.join()
    assert called == []


# -- handlers --------------------------------------------------------------------------


async def test_handler_exception_is_logged_and_listener_keeps_serving(
    memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(comm: Comm) -> None:
        msg = await comm.read()
        if msg == "fail":
            raise RuntimeError("handler bug")
        await comm.write(msg)
        await comm.close()

    async with comm_core.listen("memory://", handler) as listener:
        comm = await comm_core.connect(listener.contact_address)
        await comm.write("fail")
        with pytest.raises(CommClosedError):  # the failed handler's comm is closed
            await comm.read()
        await listener.join()
        [record] = [r for r in caplog.records if r.name == "comm_core"]
        assert record.levelno == logging.ERROR
        assert comm.local_address in record.getMessage()  # the peer's address
        assert listener.contact_address in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)

        async with await comm_core.connect(listener.contact_address) as again:
            await again.write("ok")
            assert await again.read() == "ok"
        await listener.join()


async def test_sync_handler(memory: MemoryBackend) -> None:
    accepted: list[Comm] = []
    listener = await comm_core.listen("memory://", accepted.append)
    try:
        async with await comm_core.connect(listener.contact_address) as client:
            await listener.join()
            [server] = accepted
            assert not server.closed()  # the comm belongs to the handler now
            await server.write("from a sync handler")
            assert await client.read() == "from a sync handler"
            await server.close()
    finally:
        listener.stop()


async def test_failing_sync_handler(
    memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(comm: Comm) -> None:
        raise ValueError("sync bug")

    async with comm_core.listen("memory://", handler) as listener:
        comm = await comm_core.connect(listener.contact_address)
        with pytest.raises(CommClosedError):
            await comm.read()
        await listener.join()
    assert "sync bug" in caplog.text


# -- encryption ------------------------------------------------------------------------


async def test_require_encryption_refuses_a_plain_backend(memory: MemoryBackend) -> None:
    with pytest.raises(EncryptionRequiredError) as info:
        await comm_core.connect("memory://somewhere", require_encryption=True)
    assert "'memory://somewhere'" in str(info.value)
    assert "'memory' backend" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert memory.attempts == 0
    with pytest.raises(EncryptionRequiredError, match="'memory://'"):
        comm_core.listen("memory://", echo, require_encryption=True)


async def test_require_encryption_from_settings(
    memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMM_REQUIRE_ENCRYPTION", "1")
    with pytest.raises(EncryptionRequiredError):
        await comm_core.connect("memory://somewhere")
    with pytest.raises(EncryptionRequiredError):
        comm_core.listen("memory://", echo)
    # An explicit argument wins over the setting.
    async with comm_core.listen("memory://", echo, require_encryption=False) as listener:
        comm = await comm_core.connect(listener.contact_address, require_encryption=False)
        await comm.close()
        await listener.join()


@pytest.mark.parametrize("backend", [InProcessMemoryBackend, EncryptedMemoryBackend])
async def test_require_encryption_accepts_safe_backends(
    registry: Registry, backend: type[MemoryBackend]
) -> None:
    comm_core.register_backend(backend)
    address = f"{backend.scheme}://"
    async with comm_core.listen(address, echo, require_encryption=True) as listener:
        async with await comm_core.connect(
            listener.contact_address, require_encryption=True
        ) as comm:
            await comm.write("secret")
            assert await comm.read() == "secret"
        await listener.join()


# -- address functions that need a backend ---------------------------------------------


def test_address_functions_delegate_to_the_backend(memory: MemoryBackend) -> None:
    assert comm_core.get_address_host("memory://x") == "memory"
    assert comm_core.resolve_address("MEMORY://x") == "memory://x"
    assert comm_core.get_local_address_for("memory://x") == "memory://"
    with pytest.raises(AddressError, match="'memory' addresses have no port: memory://x"):
        comm_core.get_address_host_port("memory://x")
