"""comm-core's small value types are immutable, compared by value, and pickle by value."""

from __future__ import annotations

import copy
import pickle

import pytest

import comm_core
from comm_core.protocol import SerializationFailure, Serialized, pickle_family
from memory_backend import MemoryBackend


def test_backend_info_is_a_frozen_value() -> None:
    info = comm_core.BackendInfo("memory", MemoryBackend, "memory")
    assert info.distribution is None
    assert info.version is None
    assert info == comm_core.BackendInfo("memory", MemoryBackend, "memory", None, None)
    assert info != comm_core.BackendInfo("memory", MemoryBackend, "other")
    assert info != ("memory", MemoryBackend, "memory", None, None)
    assert len({info, comm_core.BackendInfo("memory", MemoryBackend, "memory")}) == 1
    assert repr(info) == (
        f"BackendInfo(scheme='memory', backend_class={MemoryBackend!r}, plugin='memory', "
        "distribution=None, version=None)"
    )
    with pytest.raises(AttributeError, match=r"'scheme'.*BackendInfo is immutable"):
        info.scheme = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del info.plugin
    with pytest.raises(AttributeError):
        info.extra = 1  # type: ignore[attr-defined]
    assert copy.copy(info) == info
    assert copy.deepcopy(info) == info


def test_values_round_trip_through_pickle() -> None:
    values = [
        Serialized("fam", {"k": [1, 2]}, (b"ab", b"cd")),
        SerializationFailure("Thing", "<Thing>", "TypeError: no"),
        pickle_family,
        comm_core.SETTINGS["connect_timeout"],
    ]
    for value in values:
        restored = pickle.loads(pickle.dumps(value))
        assert restored == value
        assert type(restored) is type(value)


def test_unhashable_fields_make_an_unhashable_value() -> None:
    value = Serialized("fam", {"k": 1}, ())
    with pytest.raises(TypeError, match="unhashable"):
        hash(value)
    assert value == Serialized("fam", {"k": 1}, ())
