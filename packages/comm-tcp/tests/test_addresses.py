"""Addresses: dual-stack wildcard listeners, ports, listen-only addresses, ports in use.

Wildcard listeners bind every interface, but the tests only ever dial loopback
addresses built from ``listener.port``, never ``contact_address`` (which names
this machine's primary address).
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys

import pytest

import comm_core
from comm_core import AddressError, ConnectError, HostNotFoundError
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


def _route_source(family: int, target: str) -> str | None:
    """The source address of this machine's route towards *target* (a UDP connect sends
    nothing), or ``None`` if it has no route of *family*."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


@needs_ipv6
async def test_an_ipv6_wildcard_listener_names_the_primary_ipv6_address() -> None:
    """Issue 18: ``tcp://[::]:0`` advertised ``tcp://[::1]:PORT``, which no other machine
    can dial; as for ``0.0.0.0``, the contact address names this machine's primary
    address, of IPv6 here."""
    primary = _route_source(socket.AF_INET6, "2001:db8::1")
    if primary is None:
        pytest.skip("this machine has no IPv6 route beyond loopback")
    async with serving(address="tcp://[::]:0") as served:
        assert served.listener is not None
        assert served.listener.contact_address == tcp_address(primary, served.port)
        async with connected(served.address(IPV6)) as comm:  # it listens on ::1 too
            await ping(comm)


@pytest.mark.parametrize("address", ["tcp://", "tcp://0.0.0.0:0"])
async def test_an_ipv4_or_dual_wildcard_listener_names_the_primary_ipv4_address(
    address: str,
) -> None:
    primary = _route_source(socket.AF_INET, "192.0.2.1") or IPV4
    async with serving(address=address) as served:
        assert served.listener is not None
        assert served.listener.contact_address == tcp_address(primary, served.port)


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


async def test_a_host_name_that_does_not_resolve_fails_at_once() -> None:
    # .invalid never resolves (RFC 6761); the resolver says so without the network.
    address = "tcp://nosuchhost.invalid:8786"
    try:
        socket.getaddrinfo("nosuchhost.invalid", 8786)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            pytest.skip("this machine's resolver cannot answer (no DNS server reachable)")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(HostNotFoundError) as info:
        await comm_core.connect(address, timeout=30)
    assert loop.time() - start < 5  # not retried until the budget is spent
    assert info.value.host == "nosuchhost.invalid"
    assert str(info.value).startswith(
        f"could not connect to {address}: the host name 'nosuchhost.invalid' could not be "
        "resolved ("
    )
    assert isinstance(info.value.__cause__, socket.gaierror)


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


# -- the address functions on malformed and host-only locations ---------------------------

_HELPERS = ["get_address_host", "get_address_host_port", "resolve_address", "get_local_address_for"]


def _call(helper: str, address: str) -> object:
    function = getattr(comm_core, helper)
    return function(address)


@pytest.mark.parametrize("helper", _HELPERS)
def test_unbracketed_ipv6_with_a_port_is_refused_by_every_function(helper: str) -> None:
    """``tcp://::1:123`` is port 123 of ``::1``, or the host ``::1:123``: refused, with both
    readings written out (``get_address_host`` used to answer ``'::1:123'``, and
    ``resolve_address`` ``'tcp://[::0.1.1.35]:0'``)."""
    with pytest.raises(AddressError) as info:
        _call(helper, "tcp://::1:123")
    message = str(info.value)
    assert "address 'tcp://::1:123' is ambiguous: IPv6 addresses need brackets" in message
    assert "'tcp://[::1]:123' for port 123 of ::1" in message


@pytest.mark.parametrize("helper", _HELPERS)
@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("tcp://127.0.0.1:1:2", "is not 'host:port'"),
        ("tcp://a:b:c", "is not 'host:port'"),
        ("tcp://h:x", "non-numeric port 'x'"),
        ("tcp://h:", "empty port"),
        ("tcp://h:65536", "port 65536, outside 0-65535"),
        ("tcp://[::1", "never closes"),
        ("tcp://[::1]x", "after ']'"),
        ("tcp://::1:99999", "IPv6 addresses need brackets: write 'tcp://[::1]:99999'"),
    ],
)
def test_malformed_locations_are_refused_by_every_function(
    helper: str, address: str, problem: str
) -> None:
    with pytest.raises(AddressError) as info:
        _call(helper, address)
    assert f"address {address!r}" in str(info.value)
    assert problem in str(info.value)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("tcp://127.0.0.1", "has no port; write it as 'tcp://host:port'"),
        ("tcp://example.org", "has no port; write it as 'tcp://host:port'"),
        ("tcp://[::1]", "has no port; write it as 'tcp://host:port'"),
        ("tcp://", "has no port; write it as 'tcp://host:port'"),
        ("tcp://::1", "has no port: IPv6 addresses need brackets before the port"),
        ("tcp://fe80::1", "has no port: IPv6 addresses need brackets before the port"),
    ],
)
def test_get_address_host_port_needs_a_port(address: str, problem: str) -> None:
    """It never makes up port 0 for a location without one."""
    with pytest.raises(AddressError) as info:
        comm_core.get_address_host_port(address)
    assert str(info.value).startswith(f"address {address!r} {problem}")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("tcp://[::1]:123", ("::1", 123)),
        ("tcp://127.0.0.1:0", ("127.0.0.1", 0)),
        ("tcp://:8786", ("", 8786)),
        ("TCP://Example.org:1", ("Example.org", 1)),
    ],
)
def test_get_address_host_port(address: str, expected: tuple[str, int]) -> None:
    assert comm_core.get_address_host_port(address) == expected


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("tcp://[::1]:123", "::1"),
        ("tcp://127.0.0.1:0", "127.0.0.1"),
        ("tcp://127.0.0.1", "127.0.0.1"),
        ("tcp://::1", "::1"),
        ("tcp://[::1]", "::1"),
        ("tcp://fe80::1%eth0", "fe80::1%eth0"),
        ("tcp://", ""),
        ("tcp://:0", ""),
    ],
)
def test_get_address_host_takes_a_host_alone(address: str, host: str) -> None:
    assert comm_core.get_address_host(address) == host


@pytest.mark.parametrize(
    ("address", "resolved"),
    [
        ("tcp://127.0.0.1:8786", "tcp://127.0.0.1:8786"),
        ("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
        ("tcp://[::1]:123", "tcp://[::1]:123"),
        # Without a port, the result has none either (it used to gain ':0').
        ("tcp://127.0.0.1", "tcp://127.0.0.1"),
        ("tcp://::1", "tcp://[::1]"),
        ("tcp://[::1]", "tcp://[::1]"),
        # Without a host, there is nothing to resolve.
        ("tcp://", "tcp://"),
        ("tcp://:0", "tcp://:0"),
    ],
)
def test_resolve_address_keeps_the_port_as_written(address: str, resolved: str) -> None:
    assert comm_core.resolve_address(address) == resolved


def test_resolve_address_resolves_a_name() -> None:
    assert comm_core.resolve_address("tcp://localhost:8786") in {
        "tcp://127.0.0.1:8786",
        "tcp://[::1]:8786",
    }
    assert comm_core.resolve_address("tcp://localhost") in {"tcp://127.0.0.1", "tcp://[::1]"}


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("tcp://127.0.0.1:8786", "tcp://127.0.0.1"),
        ("tcp://127.0.0.1", "tcp://127.0.0.1"),
        pytest.param("tcp://::1", "tcp://[::1]", marks=needs_ipv6),
        pytest.param("tcp://[::1]:8786", "tcp://[::1]", marks=needs_ipv6),
    ],
)
def test_get_local_address_for_takes_a_host_alone(address: str, local: str) -> None:
    assert comm_core.get_local_address_for(address) == local


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("tcp://::1:123", "address 'tcp://::1:123' is ambiguous: IPv6 addresses need brackets"),
        ("tcp://127.0.0.1:1:2", "address 'tcp://127.0.0.1:1:2' is not 'host:port'"),
    ],
)
async def test_listen_and_connect_refuse_malformed_locations(address: str, problem: str) -> None:
    with pytest.raises(AddressError, match=re.escape(problem)):
        comm_core.listen(address, echo_handler)
    with pytest.raises(AddressError, match=re.escape(problem)):
        await comm_core.connect(address, timeout=5)


@pytest.mark.parametrize("host", ["tcp://::1", "tcp://127.0.0.1"])
async def test_listen_on_a_host_alone_picks_a_port(host: str) -> None:
    if ":" in host[6:] and not HAS_IPV6:
        pytest.skip("this host has no IPv6 loopback")
    async with serving(address=host) as served:
        assert served.port > 0
        assert served.listener is not None
        address = served.listener.contact_address
        assert comm_core.get_address_host_port(address)[1] == served.port
        async with connected(address) as comm:
            await ping(comm)
