"""What the Comm and Listener base classes provide to every transport."""

from __future__ import annotations

import gc
from collections.abc import Collection
from typing import Any

import pytest

import comm_core
from comm_core import Backend, Capability, Comm, CommClosedError, FatalCommClosedError
from memory_backend import EncryptedMemoryBackend, InProcessMemoryBackend, MemoryBackend, MemoryComm


async def test_repr() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    assert repr(a) == "<MemoryComm local=memory://a peer=memory://b open>"
    a.name = "worker"
    assert repr(a) == "<MemoryComm 'worker' local=memory://a peer=memory://b open>"
    await a.close()
    assert repr(a) == "<MemoryComm 'worker' local=memory://a peer=memory://b closed>"
    await b.close()


class _HalfBuiltComm(MemoryComm):
    @property
    def local_address(self) -> str:
        raise RuntimeError("not connected yet")


async def test_repr_of_a_half_built_comm() -> None:
    a, b = _HalfBuiltComm.pair("memory://a", "memory://b")
    assert repr(a) == "<_HalfBuiltComm  unknown>"
    await a.close()
    await b.close()


async def test_async_with_closes() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    async with a as entered:
        assert entered is a
        assert not a.closed()
    assert a.closed()
    with pytest.raises(CommClosedError):
        await a.read()
    with pytest.raises(CommClosedError):
        await a.write("x")
    with pytest.raises(CommClosedError):  # the peer sees the close too
        await b.read()
    assert b.closed()


async def test_async_with_closes_on_error() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    with pytest.raises(KeyError):
        async with a:
            raise KeyError
    assert a.closed()
    await b.close()


async def test_async_for_reads_until_the_peer_closes() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    for msg in (1, "two", {"three": 3}):
        await b.write(msg)
    await b.close()
    assert [msg async for msg in a] == [1, "two", {"three": 3}]
    assert a.closed()


class _FatalComm(MemoryComm):
    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        raise FatalCommClosedError("certificate revoked")


async def test_async_for_lets_fatal_errors_through() -> None:
    a, b = _FatalComm.pair("memory://a", "memory://b")
    with pytest.raises(FatalCommClosedError, match="certificate revoked"):
        async for _ in a:
            pass
    await a.close()
    await b.close()


def _drop(objects: list[Any]) -> None:
    objects.clear()
    gc.collect()


async def test_garbage_collected_open_comm_warns_and_aborts() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    ends = [a]
    del a
    with pytest.warns(ResourceWarning, match=r"<MemoryComm local=memory://a .* open> was garbage"):
        _drop(ends)
    with pytest.raises(CommClosedError):  # the collected end was aborted
        await b.read()


async def test_garbage_collected_closed_comm_is_silent(recwarn: pytest.WarningsRecorder) -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    await a.close()
    await b.close()
    del a, b
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


def test_handshake_info_is_empty_before_the_handshake() -> None:
    a, b = MemoryComm.pair("memory://a", "memory://b")
    assert dict(a.handshake_info) == {}
    assert dict(a.local_handshake_info) == {}
    assert dict(a.extra_info) == {}
    assert dict(a.handshake_options()) == {}
    a.abort()
    b.abort()
    a.abort()  # idempotent


@pytest.mark.parametrize(
    ("local", "peer", "same"),
    [
        ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", True),
        ("tcp://[::1]:1", "tcp://[::1]:2", True),
        ("tcp://10.0.0.1:1", "tcp://10.0.0.2:2", False),
        ("inproc://h/1/2", "inproc://h/1/3", False),  # not host:port: unknown, so False
    ],
)
def test_same_host(local: str, peer: str, same: bool) -> None:
    a, b = MemoryComm.pair(local, peer)
    assert a.same_host is same
    a.abort()
    b.abort()


def test_backend_capabilities() -> None:
    assert MemoryBackend().encrypted is False
    assert InProcessMemoryBackend().encrypted is False
    assert EncryptedMemoryBackend().encrypted is True
    assert Capability.ENCRYPTED == "encrypted"
    assert Capability.IN_PROCESS == "in-process"
    assert Backend.capabilities == frozenset()


def test_backend_info_capabilities(registry: comm_core.Registry) -> None:
    comm_core.register_backend(EncryptedMemoryBackend)
    info = comm_core.backends()["memory-secret"]
    assert info.capabilities == frozenset({Capability.ENCRYPTED})


def test_abstract_classes_cannot_be_instantiated() -> None:
    for cls in (Comm, Backend, comm_core.Listener, comm_core.Connector):
        with pytest.raises(TypeError, match="abstract"):
            cls()  # type: ignore[abstract]
