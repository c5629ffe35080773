"""The options connect() and listen() resolve reach the comms a tcp connector and listener
make, and their decoders: nothing below reads a setting again."""

from __future__ import annotations

from typing import Any

import pytest

import comm_core
from comm_core import Options, ProtocolError
from comm_core.session import ServerSession
from comm_tcp import TCPListener
from tcp_support import connected, hold, serving, within

pytestmark = pytest.mark.usefixtures("loop_name")


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_listen_options_reach_the_accepted_comms_decoder() -> None:
    options = Options(max_message_depth=5)
    async with serving(hold, options=options) as served, connected(served.address()) as client:
        server = await served.accepted()
        await client.write(nested(5))
        assert await within(server.read(), "a message 5 deep") == nested(5)
        await client.write(nested(6))
        with pytest.raises(ProtocolError, match="more than 5 deep"):
            await within(server.read(), "a message 6 deep")


async def nests(comm: comm_core.Comm) -> None:
    """Answers each number *n* with a message *n* deep."""
    while True:
        await comm.write(nested(await comm.read()))


async def test_connect_options_reach_the_dialled_comms_decoder() -> None:
    async with (
        serving(nests) as served,
        connected(served.address(), options=Options(max_message_depth=4)) as client,
    ):
        await client.write(4)
        assert await within(client.read(), "a message 4 deep") == nested(4)
        await client.write(5)  # the server sends it (its limit is 100), the client refuses it
        with pytest.raises(ProtocolError, match="more than 4 deep"):
            await within(client.read(), "a message 5 deep")


async def test_connect_options_reach_the_dialled_comms_encoder() -> None:
    async with (
        serving() as served,
        connected(served.address(), options=Options(max_message_depth=4)) as client,
    ):
        with pytest.raises(comm_core.SerializationError, match="more than 4 deep"):
            await client.write(nested(5))
        await client.write(nested(4))  # nothing was sent: the comm goes on
        assert await within(client.read(), "the echo 4 deep") == nested(4)


async def test_settings_changed_after_listen_do_not_reach_its_comms() -> None:
    with comm_core.configure(max_message_size=1000):
        listener = comm_core.listen("tcp://127.0.0.1:0", hold)
    assert isinstance(listener, TCPListener)
    assert isinstance(listener.session, ServerSession)
    async with listener, connected(listener.contact_address) as client:
        await client.write(b"x" * 5000)  # the server drops the comm: too large
        with pytest.raises(comm_core.CommClosedError):
            await within(client.read(), "the server to drop the comm")
