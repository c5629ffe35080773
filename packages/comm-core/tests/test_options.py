"""comm_core.Options: the settings resolved once, and passed down by connect() and listen()."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

import comm_core
from comm_core import Options
from memory_backend import MemoryBackend, MemoryConnector

FIELDS = {
    "connect_timeout": 30.0,
    "handshake_timeout": 10.0,
    "max_pending_handshakes": 128,
    "retry_delay_min": 0.01,
    "retry_delay_max": 1.0,
    "require_encryption": False,
    "same_host": True,
    "same_process": False,
    "max_message_size": 2**30,
    "max_message_depth": 100,
    "max_message_expansion": 64.0,
    "families": None,
}


def test_defaults_are_the_settings() -> None:
    options = Options()
    assert {name: getattr(options, name) for name in FIELDS} == FIELDS


def test_settings_are_read_when_made_and_never_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMM_MAX_MESSAGE_SIZE", "1MiB")
    with comm_core.configure(handshake_timeout=2):
        options = Options(connect_timeout=5)
    assert options.handshake_timeout == 2.0
    assert options.max_message_size == 2**20
    assert options.connect_timeout == 5.0
    monkeypatch.delenv("COMM_MAX_MESSAGE_SIZE")
    with comm_core.configure(handshake_timeout=7):
        assert options.handshake_timeout == 2.0
        assert options.max_message_size == 2**20


def test_immutable_compared_by_value_and_picklable() -> None:
    options = Options(handshake_timeout=1)
    with pytest.raises(AttributeError, match="immutable"):
        options.handshake_timeout = 2  # type: ignore[misc]
    assert options == Options(handshake_timeout=1.0)
    assert options != Options(handshake_timeout=2)
    assert hash(options) == hash(Options(handshake_timeout=1))
    assert pickle.loads(pickle.dumps(options)) == options
    assert "handshake_timeout=1.0" in repr(options)


def test_replace() -> None:
    options = Options(handshake_timeout=1, max_message_size=1000)
    changed = options.replace(handshake_timeout=3, max_message_size=None)
    assert changed.handshake_timeout == 3.0
    assert changed.max_message_size == 1000  # None keeps a field
    assert options.handshake_timeout == 1.0
    with pytest.raises(TypeError, match="no field bogus"):
        options.replace(bogus=1)


def test_invalid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_pending_handshakes must be at least 1, got 0"):
        Options(max_pending_handshakes=0)
    monkeypatch.setenv("COMM_CONNECT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="COMM_CONNECT_TIMEOUT"):
        Options()


def test_families_are_the_registrys_unless_given(registry: comm_core.Registry) -> None:
    from comm_core.protocol import SerializerFamily
    from comm_core.stream import StreamComm

    family = SerializerFamily("mine", lambda obj: (None, []), lambda header, frames: None)
    comm = StreamComm(scheme="test", options=Options(families={"mine": family}))
    try:
        assert dict(comm.families) == {"mine": family}
    finally:
        comm.abort()
    comm = StreamComm(scheme="test")
    try:
        assert set(comm.families) == {"pickle"}
        assert comm.families["pickle"] is comm_core.serializer_families()["pickle"]
    finally:
        comm.abort()


async def echo(comm: comm_core.Comm) -> None:
    async for msg in comm:
        await comm.write(msg)


async def test_connect_passes_its_options_to_the_connector(
    memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    original = MemoryConnector.connect

    async def connect(self: MemoryConnector, address: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("options"))
        return await original(self, address, *args, **kwargs)

    monkeypatch.setattr(MemoryConnector, "connect", connect)
    async with comm_core.listen("memory://", echo) as listener:
        with comm_core.configure(max_message_size=12345):
            comm = await comm_core.connect(
                listener.contact_address, timeout=7, handshake_timeout=3, require_encryption=False
            )
        await comm.close()
        mine = Options(max_message_depth=7)
        comm = await comm_core.connect(listener.contact_address, options=mine, timeout=9)
        await comm.close()
    first, second = seen
    assert isinstance(first, Options)
    assert (first.connect_timeout, first.handshake_timeout) == (7.0, 3.0)
    assert first.max_message_size == 12345
    assert second == mine.replace(connect_timeout=9)


def test_listen_resolves_its_options_once(memory: MemoryBackend) -> None:
    mine = Options(handshake_timeout=4, max_pending_handshakes=5)
    listener = comm_core.listen("memory://", echo, options=mine, max_pending_handshakes=6)
    assert listener.handshake_timeout == 4.0
    assert listener.max_pending_handshakes == 6
    with pytest.raises(ValueError, match="max_pending_handshakes must be at least 1"):
        comm_core.listen("memory://", echo, options=mine, max_pending_handshakes=0)
