"""Values that need a serializer: refused before sending, pickle only when named, relays."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import pytest

from comm_core import Comm, SerializationError
from comm_core.protocol import SerializationFailure, Serialized
from tcp_support import connected, ping, serving, within

pytestmark = pytest.mark.usefixtures("loop_name")


@dataclass
class Point:
    """A type only pickle can carry (importable, so that pickle can find it)."""

    x: int
    y: int


class Recorder:
    """An echo handler that records what it reads (deserializing pickle when told to)."""

    def __init__(self, accept: list[str] | None = None) -> None:
        self.accept = accept
        self.received: list[Any] = []

    async def __call__(self, comm: Comm) -> None:
        async with comm:
            while True:
                msg = await comm.read(self.accept)
                self.received.append(msg)
                await comm.write(msg, serializers=self.accept)


async def test_unserializable_value_fails_before_anything_is_sent() -> None:
    recorder = Recorder()
    async with serving(recorder) as served, connected(served.address()) as client:
        with pytest.raises(SerializationError, match="object"):
            await client.write({"fine": [1, 2, 3], "bad": object()})
        # pickle could, but a write may only use it when it names it.
        with pytest.raises(SerializationError, match="Point"):
            await client.write([Point(1, 2)])
        assert not client.closed()
        assert client.transport.get_write_buffer_size() == 0  # type: ignore[attr-defined]
        await ping(client)
        assert recorder.received == [{"op": "ping", "payload": "ping"}]


async def test_on_error_message_sends_a_description_instead() -> None:
    async with serving() as served, connected(served.address()) as client:
        await client.write({"ok": 1, "bad": object()}, on_error="message")
        reply = await within(client.read(), "the echo")
    assert reply["ok"] == 1
    failure = reply["bad"]
    assert isinstance(failure, SerializationFailure)
    assert failure.type_name == "object"
    assert "object" in failure.text
    assert failure.error


async def test_pickle_is_refused_on_read_unless_named() -> None:
    async def send_points(comm: Comm) -> None:
        async with comm:
            await comm.write({"p": Point(1, 2)}, serializers=["pickle"])
            await comm.write({"p": Point(3, 4)}, serializers=["pickle"])
            await comm.read()  # until the client closes

    async with serving(send_points) as served, connected(served.address()) as client:
        with pytest.raises(SerializationError, match="pickle"):
            await within(client.read(), "the first point")
        assert not client.closed()  # the refused message was consumed whole
        second = await within(client.read(deserializers=["pickle"]), "the second point")
        assert second == {"p": Point(3, 4)}


async def test_pickle_round_trip_when_both_sides_name_it() -> None:
    recorder = Recorder(accept=["pickle"])
    msg = {"points": [Point(1, 2), Point(3, 4)], "blob": bytes(100_000)}
    async with serving(recorder) as served, connected(served.address()) as client:
        await client.write(msg, serializers=["pickle"])
        reply = await within(client.read(deserializers=["pickle"]), "the echo")
    assert reply["points"] == msg["points"]
    assert reply["blob"] == msg["blob"]
    assert recorder.received[0]["points"] == msg["points"]


async def test_relay_with_deserialize_false_forwards_values_unchanged() -> None:
    """A relay that cannot deserialize (deserialize=False, no pickle allowed) forwards
    custom values both ways, byte for byte."""
    point = Point(5, 6)
    backend = Recorder(accept=["pickle"])
    seen: list[Any] = []

    async def relay(comm: Comm) -> None:
        async with (
            comm,
            connected(backend_served.address(), deserialize=False) as upstream,
        ):
            msg = await comm.read()
            seen.append(msg)
            await upstream.write(msg)
            await comm.write(await within(upstream.read(), "the backend's reply"))
            await comm.read()  # until the client closes

    async with (
        serving(backend) as backend_served,
        serving(relay, deserialize=False) as relay_served,
        connected(relay_served.address()) as client,
    ):
        await client.write({"point": point, "n": 7}, serializers=["pickle"])
        reply = await within(client.read(deserializers=["pickle"]), "the reply through the relay")
    assert reply == {"point": point, "n": 7}
    assert backend.received == [{"point": point, "n": 7}]
    relayed = seen[0]["point"]
    assert isinstance(relayed, Serialized)
    assert relayed.family == "pickle"
    assert bytes(relayed.frames[0]) == pickle.dumps(point, protocol=5)
    assert seen[0]["n"] == 7
