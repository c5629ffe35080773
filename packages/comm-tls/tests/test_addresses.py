"""tls:// addresses follow tcp://'s rules, and their errors name the tls:// address."""

from __future__ import annotations

import pytest

import comm_core
from comm_core import AddressError
from comm_core.testing import echo_handler
from comm_tls import Security

_HELPERS = ["get_address_host", "get_address_host_port", "resolve_address", "get_local_address_for"]


@pytest.mark.parametrize("helper", _HELPERS)
def test_unbracketed_ipv6_with_a_port_is_refused(helper: str) -> None:
    with pytest.raises(AddressError) as info:
        getattr(comm_core, helper)("tls://::1:123")
    assert str(info.value).startswith(
        "address 'tls://::1:123' is ambiguous: IPv6 addresses need brackets: write "
        "'tls://[::1]:123' for port 123 of ::1"
    )


def test_port_and_host_alone() -> None:
    with pytest.raises(AddressError, match=r"address 'tls://127\.0\.0\.1' has no port"):
        comm_core.get_address_host_port("tls://127.0.0.1")
    assert comm_core.get_address_host_port("tls://[::1]:123") == ("::1", 123)
    assert comm_core.get_address_host("tls://::1") == "::1"
    assert comm_core.resolve_address("tls://127.0.0.1") == "tls://127.0.0.1"
    assert comm_core.resolve_address("tls://[::1]:8786") == "tls://[::1]:8786"


async def test_listen_and_connect_refuse_an_ambiguous_location(temporary: Security) -> None:
    problem = r"address 'tls://::1:123' is ambiguous"
    with pytest.raises(AddressError, match=problem):
        comm_core.listen("tls://::1:123", echo_handler, security=temporary)
    with pytest.raises(AddressError, match=problem):
        await comm_core.connect("tls://::1:123", security=temporary, timeout=5)
