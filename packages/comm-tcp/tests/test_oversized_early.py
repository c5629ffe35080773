"""Messages above a limit that arrive together with the handshake.

A dialer sends its preamble and handshake with its first message, so the three
often arrive in one read. What the listener does then must not depend on how
the bytes were cut: the handler gets the comm, and its read raises
:class:`MessageTooLargeError`. And a dialer whose listener greets it with a
handshake above the first-message limit gets a :class:`HandshakeError`, which
``connect()`` does not retry, on every loop.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import comm_core
from comm_core import Comm, CommClosedError, HandshakeError, MessageTooLargeError
from comm_core.testing import echo_handler, within
from comm_tcp import _transport
from tcp_support import EVENT_TIMEOUT, IPV4

_PATHS = [
    pytest.param("own", marks=pytest.mark.comm_loop("asyncio"), id="own-transport"),
    pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio"), id="asyncio-transport"),
    pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop"), id="uvloop"),
]


@pytest.fixture(params=_PATHS)
def accept_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    path: str = request.param
    if path == "asyncio":
        monkeypatch.setenv(_transport.ENV, "asyncio")
    return path


@pytest.mark.usefixtures("accept_path")
async def test_a_first_message_above_the_listeners_limit_fails_the_handlers_read() -> None:
    limit = 100_000
    outcome: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def handler(comm: Comm) -> None:
        async with comm:
            try:
                outcome.set_result(await comm.read())
            except Exception as exc:
                outcome.set_result(exc)

    async with (
        comm_core.listen(f"tcp://{IPV4}:0", handler, max_message_size=limit) as listener,
        await comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT) as comm,
    ):
        # The preamble, the handshake and this message leave together.
        await comm.write({"data": b"\0" * (limit + 1)})
        result = await within(outcome, "the handler's read")
        assert isinstance(result, MessageTooLargeError), result
        with pytest.raises(CommClosedError):
            await within(comm.read(), "the dialer's read once the listener dropped it")


@pytest.mark.usefixtures("accept_path")
async def test_a_greeting_above_the_first_message_limit_is_a_handshake_error() -> None:
    padding = {f"padding-{i}": [b"\0" * 1000] * 64 for i in range(2)}  # 128 KiB
    async with comm_core.listen(
        f"tcp://{IPV4}:0", echo_handler, handshake_overrides=padding
    ) as listener:
        start = time.monotonic()
        with pytest.raises(HandshakeError, match="first message"):
            await comm_core.connect(listener.contact_address, timeout=EVENT_TIMEOUT)
        assert time.monotonic() - start < EVENT_TIMEOUT / 2  # not retried until the budget ends
