"""The session layer: what listen() hands a backend's listener, and what the handshake asks
of a comm, all through public names."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

import comm_core
from comm_core import Comm, Options
from comm_core.session import ServerSession, handshake, local_handshake, options_of
from memory_backend import MemoryBackend, MemoryComm, MemoryListener


async def echo(comm: Comm) -> None:
    async for msg in comm:
        await comm.write(msg)


def test_listen_hands_the_listener_a_session(memory: MemoryBackend) -> None:
    seen: list[Any] = []
    original = memory.get_listener

    def get_listener(loc: str, handle_comm: Any, *args: Any, **kwargs: Any) -> MemoryListener:
        seen.append(handle_comm)
        return original(loc, handle_comm, *args, **kwargs)

    memory.get_listener = get_listener  # type: ignore[method-assign]
    options = Options(handshake_timeout=3, max_pending_handshakes=9)
    listener = comm_core.listen("memory://", echo, options=options, handshake_overrides={"a": 1})
    (session,) = seen
    assert isinstance(session, ServerSession)
    assert listener.session is session
    assert session.listener is listener
    assert session.options == options
    assert options_of(session) is options
    assert (session.timeout, session.max_pending) == (3.0, 9)
    assert (listener.handshake_timeout, listener.max_pending_handshakes) == (3.0, 9)
    assert session.handler is echo
    comm, other = MemoryComm.pair("memory://a", "memory://b")
    other.abort()
    greeting = session.greeting(comm)
    assert greeting == local_handshake(comm, {"a": 1})
    assert greeting["a"] == 1
    assert greeting["protocol"] == comm_core.PROTOCOL_VERSION
    comm.abort()
    listener.stop()


def test_options_of_a_plain_handler_are_the_settings() -> None:
    with comm_core.configure(max_message_size=777):
        assert options_of(echo).max_message_size == 777


def test_a_listener_made_by_hand_has_no_session(memory: MemoryBackend) -> None:
    listener = memory.get_listener("x", echo, True)
    assert listener.session is None
    with comm_core.configure(handshake_timeout=4, max_pending_handshakes=3):
        assert (listener.handshake_timeout, listener.max_pending_handshakes) == (4.0, 3)


async def test_session_deadline() -> None:
    session = ServerSession("memory://", echo, options=Options(handshake_timeout=2))
    loop = asyncio.get_running_loop()
    before = loop.time()
    deadline = session.deadline()
    assert before + 2 <= deadline <= loop.time() + 2


class _EarlyComm(MemoryComm):
    """A comm whose transport sends its handshake message ahead of the handshake, as a
    third party's can, through the public interface only."""

    sent: list[Mapping[str, Any]]

    async def send_handshake(self, info: Mapping[str, Any]) -> None:  # pragma: no cover
        raise AssertionError("the handshake sends nothing: it went out early")


async def test_a_comm_that_sent_its_handshake_early_only_reads() -> None:
    local, remote = MemoryComm.pair("memory://a", "memory://b")
    early, peer = _EarlyComm.pair("memory://c", "memory://d")
    session = ServerSession("memory://c", echo)
    info = session.greeting(early)
    await early.write(info)  # the "transport" sends it before the handshake
    early.set_early_handshake(info)
    assert early.early_handshake is info
    await peer.write(local_handshake(peer))
    assert early.message_waiting() is False  # the default: it cannot tell
    await handshake(early, None, 5.0, "test")
    assert early.local_handshake_info == info
    assert dict(early.handshake_info)["library"] == "comm-core"
    assert (await peer.read())["protocol"] == comm_core.PROTOCOL_VERSION
    for comm in (local, remote, early, peer):
        comm.abort()


async def test_a_session_serves_a_listener_that_only_calls_it(memory: MemoryBackend) -> None:
    # The memory listener awaits handle_comm(comm) and nothing else: the session runs
    # the handshake, then the handler.
    async with (
        comm_core.listen("memory://", echo) as listener,
        await comm_core.connect(listener.contact_address) as comm,
    ):
        await comm.write({"x": 1})
        assert await comm.read() == {"x": 1}


def test_a_session_refuses_bad_overrides() -> None:
    with pytest.raises(ValueError, match="handshake_overrides cannot be sent"):
        ServerSession("memory://", echo, {"k": object()})
