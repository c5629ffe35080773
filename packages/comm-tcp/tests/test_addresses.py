"""Addresses: dual-stack wildcard listeners, ports, listen-only addresses, ports in use.

Wildcard listeners bind every interface, but the tests only ever dial loopback
addresses built from ``listener.port``, never ``contact_address`` (which names
this machine's primary address).
"""

from __future__ import annotations

import socket
import sys

import pytest

import comm_core
from comm_core import AddressError, ConnectError
from comm_core.testing import echo_handler
from tcp_support import (
    HAS_IPV6,
    IPV4,
    IPV6,
    connected,
    needs_ipv6,
    ping,
    serving,
    tcp_address,
)

pytestmark = pytest.mark.usefixtures("loop_name")

LOOPBACKS = [IPV4, pytest.param(IPV6, marks=needs_ipv6)]


@pytest.mark.parametrize("address", ["tcp://", "tcp://:0"])
async def test_wildcard_listens_on_both_families_on_one_port(address: str) -> None:
    async with serving(address=address) as served:
        listener = served.listener
        assert listener is not None
        port = served.port
        assert 0 < port <= 65535
        # listen_address names the port that was picked.
        assert listener.listen_address == f"tcp://:{port}"
        scheme, loc = comm_core.parse_address(listener.listen_address)
        assert (scheme, comm_core.parse_host_port(loc)) == ("tcp", ("", port))
        bound = listener.extra_info["sockets"]
        assert {sockaddr[1] for sockaddr in bound} == {port}
        assert {sockaddr[0] for sockaddr in bound} == (
            {"0.0.0.0", "::"} if HAS_IPV6 else {"0.0.0.0"}
        )

        hosts = [IPV4, IPV6] if HAS_IPV6 else [IPV4]
        for host in hosts:
            async with connected(tcp_address(host, port)) as comm:
                assert comm.peer_address == tcp_address(host, port)
                assert comm_core.get_address_host(comm.local_address) == host
                await ping(comm, host)
        assert served.calls == len(hosts)


async def test_port_zero_picks_distinct_free_ports() -> None:
    async with serving(address="tcp://:0") as first, serving(address="tcp://127.0.0.1:0") as second:
        assert first.port != second.port
        assert 0 not in (first.port, second.port)
        assert second.listener is not None
        assert second.listener.listen_address == tcp_address(IPV4, second.port)
        async with connected(second.address()) as comm:
            await ping(comm)


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_listener_on_one_family_has_it_only(host: str) -> None:
    async with serving(address=tcp_address(host, 0)) as served:
        assert served.listener is not None
        assert served.listener.listen_address == tcp_address(host, served.port)
        assert served.listener.contact_address == tcp_address(host, served.port)
        async with connected(served.address(host)) as comm:
            await ping(comm)


@pytest.mark.parametrize(
    "address",
    [
        "tcp://127.0.0.1:65536",
        "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:-1",
        "tcp://[::1]:65536",
        "tcp://:65536",
        "tcp://127.0.0.1:0x50",
    ],
)
async def test_port_outside_range_is_an_address_error(address: str) -> None:
    port = address.rsplit(":", 1)[1]
    with pytest.raises(AddressError, match=port):
        comm_core.listen(address, echo_handler)
    with pytest.raises(AddressError, match=port):
        await comm_core.connect(address, timeout=5)


@pytest.mark.parametrize(
    "address",
    ["tcp://", "tcp://:0", "tcp://0.0.0.0:0", "tcp://[::]:0", "tcp://0.0.0.0:8786", "tcp://:8786"],
)
async def test_connect_to_listen_only_address_is_refused(address: str) -> None:
    with pytest.raises(AddressError, match="only for listening") as info:
        await comm_core.connect(address, timeout=5)
    assert address in str(info.value)


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_port_in_use_is_a_connect_error_naming_the_address(host: str) -> None:
    async with serving(address=tcp_address(host, 0)) as served:
        address = served.address(host)
        taken = comm_core.listen(address, echo_handler)
        with pytest.raises(ConnectError, match="cannot listen on") as info:
            await taken.start()
        taken.stop()
        assert address in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        async with connected(address) as comm:  # the first listener still serves
            await ping(comm)


@pytest.mark.skipif(
    sys.platform != "linux", reason="BSDs let a wildcard bind beside a loopback one"
)
@pytest.mark.parametrize("host", LOOPBACKS)
async def test_wildcard_port_in_use_on_one_family(host: str) -> None:
    """Binding both families fails as a whole when one is taken; the other is not left bound."""
    async with serving(address=tcp_address(host, 0)) as served:
        address = f"tcp://:{served.port}"
        taken = comm_core.listen(address, echo_handler)
        with pytest.raises(ConnectError, match="cannot listen on") as info:
            await taken.start()
        taken.stop()
        assert address in str(info.value)
        other = IPV4 if ":" in host else IPV6
        if other == IPV6 and not HAS_IPV6:
            return
        family = socket.AF_INET6 if ":" in other else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: earlier tests' connections may have left this port in
            # TIME_WAIT as a client port; a socket still listening on it is refused anyway.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((other, served.port))  # EADDRINUSE if the failed start kept a socket
