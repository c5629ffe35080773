"""Linux's abstract namespace: ``unix://@name``, and ``unix://@`` for a name the kernel picks."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

import comm_core
from comm_core.testing import echo_handler
from comm_unix import ABSTRACT_NAMESPACE, MAX_PATH_BYTES

pytestmark = pytest.mark.skipif(not ABSTRACT_NAMESPACE, reason="abstract names are Linux's")


def fresh_name() -> str:
    return f"comm-unix-test-{uuid.uuid4().hex}"


async def ping(address: str, **connection_args: object) -> dict[str, object]:
    """A round trip to an echo listener; the comm's extra_info."""
    async with await comm_core.connect(address, timeout=5, **connection_args) as comm:
        await comm.write({"op": "ping"})
        assert await comm.read() == {"op": "ping"}
        return dict(comm.extra_info)


def bound(address: str) -> bool:
    """Whether a socket listens at abstract *address* (a raw connect tells)."""
    name = address.removeprefix("unix://@")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(b"\0" + os.fsencode(name))
        except ConnectionRefusedError:
            return False
    return True


async def test_a_fresh_name_per_listener(loop_name: str) -> None:
    first = comm_core.listen("unix://@", echo_handler)
    second = comm_core.listen("unix://@", echo_handler)
    async with first, second:
        addresses = [first.contact_address, second.contact_address]
        assert addresses[0] != addresses[1]
        for address in addresses:
            assert address.startswith("unix://@")
            assert len(address) > len("unix://@")
            assert "\0" not in address
            await ping(address)
            assert bound(address)
    for address in addresses:
        assert not bound(address)  # the name went with the socket


async def test_an_explicit_name(loop_name: str) -> None:
    address = f"unix://@{fresh_name()}"
    served: list[tuple[str, str]] = []

    async def handler(comm: comm_core.Comm) -> None:
        served.append((comm.local_address, comm.peer_address))
        await echo_handler(comm)

    async with comm_core.listen(address, handler) as listener:
        assert listener.contact_address == address
        assert listener.extra_info["path"] == address.removeprefix("unix://")
        async with await comm_core.connect(address, timeout=5) as comm:
            # The dialer's end has no name; the listener's end is the listener's name.
            assert comm.peer_address == address
            assert comm.local_address == "unix://"
            await comm.write("hello")
            assert await comm.read() == "hello"
    assert served == [(address, "unix://")]
    assert not bound(address)


async def test_a_name_in_use_is_refused_and_its_listener_keeps_serving() -> None:
    address = f"unix://@{fresh_name()}"
    async with comm_core.listen(address, echo_handler):
        with pytest.raises(comm_core.ConnectError, match=r"cannot listen on unix://@.*in use"):
            await comm_core.listen(address, echo_handler).start()
        await ping(address)


async def test_the_longest_name_the_os_takes() -> None:
    name = "n" * MAX_PATH_BYTES
    async with comm_core.listen(f"unix://@{name}", echo_handler) as listener:
        await ping(listener.contact_address)


@pytest.mark.parametrize(
    ("address", "match"),
    [
        ("unix://@" + "n" * (MAX_PATH_BYTES + 1), "bytes"),
        ("unix://@a\0b", "NUL"),
    ],
)
def test_malformed_names(address: str, match: str) -> None:
    with pytest.raises(comm_core.AddressError, match=match):
        comm_core.listen(address, echo_handler)


async def test_connect_needs_a_name() -> None:
    with pytest.raises(comm_core.AddressError, match="only for listening"):
        await comm_core.connect("unix://@")


async def test_nobody_listening_is_retried_until_the_timeout() -> None:
    with pytest.raises(comm_core.ConnectTimeoutError) as info:
        await comm_core.connect(f"unix://@{fresh_name()}", timeout=0.2)
    assert isinstance(info.value.__cause__, comm_core.ConnectError)
    assert "unix://@comm-unix-test-" in str(info.value.__cause__)


def test_address_functions() -> None:
    address = f"unix://@{fresh_name()}"
    assert comm_core.get_address_host(address) == socket.gethostname()
    assert comm_core.resolve_address(address) == address
    assert comm_core.get_local_address_for(address) == "unix://"
