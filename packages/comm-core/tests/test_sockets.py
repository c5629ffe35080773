"""comm_core.sockets and comm_core.HostPortBackend: the building blocks of transports over
TCP, over real sockets on the loopback interface."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any, ClassVar

import pytest

import comm_core
from comm_core import AddressError, ConnectError, HostNotFoundError
from comm_core.sockets import (
    AcceptLoop,
    bind_listening,
    connect_error,
    connect_socket,
    contact_host,
    dial_target,
    ip_family,
    primary_ip,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


def test_ip_family() -> None:
    assert ip_family("127.0.0.1") == socket.AF_INET
    assert ip_family("::1") == socket.AF_INET6
    assert ip_family("localhost") is None
    assert ip_family("fe80::1%eth0") is None  # scoped: resolved instead


def test_bind_listening_on_one_loopback_address() -> None:
    [sock] = bind_listening("127.0.0.1", 0, backlog=8)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    finally:
        sock.close()


def test_bind_listening_on_every_interface_uses_one_port_for_both_families() -> None:
    socks = bind_listening("", 0)
    try:
        names = [sock.getsockname() for sock in socks]
        assert names[0][0] == "0.0.0.0"
        assert len({name[1] for name in names}) == 1
        if len(socks) == 2:
            assert names[1][0] == "::"
            assert socks[1].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in socks:
            sock.close()


def test_bind_listening_on_a_port_in_use_raises_and_leaves_nothing_bound() -> None:
    [taken] = bind_listening("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use") as info:
            bind_listening("127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        taken.close()


def test_bind_listening_resolves_a_name() -> None:
    [sock] = bind_listening("localhost", 0)
    try:
        assert ip_family(sock.getsockname()[0]) is not None
    finally:
        sock.close()


def _route_source(family: int, target: str) -> str | None:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((target, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def test_primary_ip_of_each_family() -> None:
    assert primary_ip() == (_route_source(socket.AF_INET, "192.0.2.1") or "127.0.0.1")
    v6 = _route_source(socket.AF_INET6, "2001:db8::1") if socket.has_ipv6 else None
    assert primary_ip(socket.AF_INET6) == (v6 or "::1")


def test_contact_host() -> None:
    assert contact_host("", [("0.0.0.0", 1), ("::", 1, 0, 0)]) == primary_ip(socket.AF_INET)
    assert contact_host("0.0.0.0", [("0.0.0.0", 1)]) == primary_ip(socket.AF_INET)
    assert contact_host("::", [("::", 1, 0, 0)]) == primary_ip(socket.AF_INET6)
    assert contact_host("localhost", [("127.0.0.1", 1)]) == "127.0.0.1"
    with pytest.raises(ValueError, match="no bound socket"):
        contact_host("127.0.0.1", [])


@pytest.mark.parametrize(
    ("loc", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:80", ("::1", 80)), ("h:1", ("h", 1))],
)
def test_dial_target(loc: str, expected: tuple[str, int]) -> None:
    assert dial_target("ws", loc) == expected


@pytest.mark.parametrize("loc", ["", ":80", "0.0.0.0:80", "[::]:80", "127.0.0.1", "h:0"])
def test_dial_target_refuses_what_is_only_for_listening(loc: str) -> None:
    with pytest.raises(AddressError, match=r"such as 'ws://'.* only for listening"):
        dial_target("ws", loc)


def test_dial_target_refuses_a_malformed_location() -> None:
    with pytest.raises(AddressError):
        dial_target("ws", "::1:80")


def test_connect_error_says_what_the_os_said() -> None:
    error = connect_error("ws://h:1", ConnectionRefusedError(errno.ECONNREFUSED, "Connect call"))
    assert isinstance(error, ConnectError)
    assert str(error) == "could not connect to ws://h:1: Connection refused"


@pytest.mark.parametrize("code", ["EAI_NONAME", "EAI_NODATA", "EAI_FAIL"])
def test_connect_error_of_a_name_that_does_not_resolve(code: str) -> None:
    if not hasattr(socket, code):
        pytest.skip(f"no {code} here")
    gaierror = socket.gaierror(getattr(socket, code), "Name or service not known")
    error = connect_error("ws://nosuchhost.invalid:80", gaierror)
    assert isinstance(error, HostNotFoundError)
    assert isinstance(error, ConnectError)
    assert error.host == "nosuchhost.invalid"
    assert str(error) == (
        "could not connect to ws://nosuchhost.invalid:80: the host name 'nosuchhost.invalid' "
        "could not be resolved (Name or service not known); check the name"
    )
    # The host given wins over the address's (a transport that dials another host).
    assert connect_error("ws://a:80", gaierror, host="b.invalid").host == "b.invalid"


def test_connect_error_of_a_temporary_resolver_failure() -> None:
    gaierror = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    error = connect_error("ws://[::1]:80", gaierror)
    assert type(error) is ConnectError  # retried by connect()
    assert str(error) == (
        "could not connect to ws://[::1]:80: the host name '::1' could not be resolved for "
        "now (Temporary failure in name resolution)"
    )


async def test_connect_socket_to_a_name_that_does_not_resolve() -> None:
    # .invalid never resolves (RFC 6761): the resolver says so without asking the network.
    with pytest.raises(socket.gaierror) as info:
        await connect_socket("nosuchhost.invalid", 80)
    if info.value.errno == socket.EAI_AGAIN:
        pytest.skip("this machine's resolver cannot answer (no DNS server reachable)")
    error = connect_error("ws://nosuchhost.invalid:80", info.value)
    assert isinstance(error, HostNotFoundError)
    assert "Unknown error" not in str(error)
    assert "'nosuchhost.invalid' could not be resolved" in str(error)


async def test_connect_socket_to_a_listener() -> None:
    [listening] = bind_listening("127.0.0.1", 0)
    try:
        port = listening.getsockname()[1]
        sock, peer = await connect_socket("127.0.0.1", port)
        try:
            assert peer == ("127.0.0.1", port)
            assert sock.getblocking() is False
            accepted, _ = listening.accept()
            accepted.close()
        finally:
            sock.close()
        sock, peer = await connect_socket("localhost", port)  # a name: resolved
        sock.close()
    finally:
        listening.close()


async def test_connect_socket_refused() -> None:
    [listening] = bind_listening("127.0.0.1", 0)
    port = listening.getsockname()[1]
    listening.close()
    with pytest.raises(ConnectionRefusedError):
        await connect_socket("127.0.0.1", port)


async def test_accept_loop_hands_over_each_connection_and_survives_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="test.accept")
    loop = asyncio.get_running_loop()
    [listening] = bind_listening("127.0.0.1", 0)
    port = listening.getsockname()[1]
    accepted: list[socket.socket] = []
    arrived = asyncio.Event()

    def on_accept(conn: socket.socket, peer: Any) -> None:
        if not accepted:
            accepted.append(conn)
            raise RuntimeError("no room for the first")
        accepted.append(conn)
        arrived.set()

    accept_loop = AcceptLoop(
        loop,
        listening,
        on_accept,
        backlog=4,
        where=lambda: f"tcp://127.0.0.1:{port}",
        logger=logging.getLogger("test.accept"),
    )
    clients = []
    try:
        for _ in range(2):
            sock, _ = await connect_socket("127.0.0.1", port)
            clients.append(sock)
        await asyncio.wait_for(arrived.wait(), 5)
        assert accepted[0].fileno() == -1  # closed by the loop after on_accept raised
        assert accepted[1].fileno() != -1
        [record] = caplog.records
        assert "could not set up the connection" in record.getMessage()
        assert str(port) in record.getMessage()
    finally:
        accept_loop.close()
        accept_loop.close()  # idempotent
        for sock in clients + accepted:
            sock.close()
    assert listening.fileno() == -1


class _HostPort(comm_core.HostPortBackend, comm_core.Backend):
    scheme: ClassVar[str] = "hp"

    def get_connector(self) -> comm_core.Connector:
        raise NotImplementedError

    def get_listener(self, loc: str, handle_comm: Any, deserialize: bool, **kw: Any) -> Any:
        raise NotImplementedError


def test_host_port_backend_address_functions() -> None:
    backend = _HostPort()
    assert backend.get_address_host("[::1]:80") == "::1"
    assert backend.get_address_host("127.0.0.1") == "127.0.0.1"
    assert backend.get_address_host("") == ""
    assert backend.get_address_host_port("h:8786") == ("h", 8786)
    with pytest.raises(AddressError, match="port"):
        backend.get_address_host_port("h")
    with pytest.raises(AddressError):
        backend.get_address_host("::1:80")
    assert backend.resolve_address("localhost:80") in ("127.0.0.1:80", "[::1]:80")
    assert backend.resolve_address("localhost") in ("127.0.0.1", "::1")
    assert backend.resolve_address(":80") == ":80"
    assert backend.get_local_address_for("127.0.0.1:80") == "127.0.0.1"
    with pytest.raises(AddressError, match="cannot resolve hp://"):
        backend.resolve_address("no-such-host.invalid:1")


@needs_ipv6
def test_host_port_backend_local_address_for_ipv6() -> None:
    assert _HostPort().get_local_address_for("[::1]:80") == "[::1]"
