"""TLS 1.3 session resumption: a client that dials a listener again skips the certificates."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import comm_core
from comm_core import Comm, FatalCommClosedError
from comm_core.testing import echo_handler
from comm_tls import Security
from tls_support import IPV6, connect_fails, connected, needs_ipv6, ping, serving, within

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")


async def _reused(
    address: str, security: Security, **kwargs: Any
) -> tuple[bool, bool, dict[str, Any]]:
    """Connect, ping, close; whether each end resumed, and what the server saw of the client."""
    async with connected(address, security=security, **kwargs) as client:
        await ping(client)
        info = client.extra_info
    return info["tls_session_reused"], info["tls_version"] == "TLSv1.3", info


async def _server_views(security: Security, connections: int) -> list[tuple[bool, dict[str, Any]]]:
    """What the listener's comms report for *connections* sequential clients."""
    seen: list[tuple[bool, dict[str, Any]]] = []

    async def handler(comm: Comm) -> None:
        info = comm.extra_info
        seen.append((info["tls_session_reused"], info["peercert"]))
        await comm.write("hello")
        await comm.read()  # until the client closes

    async with serving(handler, security=security) as served:
        for _ in range(connections):
            async with connected(served.address(), security=security) as client:
                assert await within(client.read(), "the server's hello") == "hello"
    return seen


async def test_second_connection_resumes_and_still_knows_the_client() -> None:
    security = Security.temporary()
    seen = await _server_views(security, 3)
    assert [reused for reused, _ in seen] == [False, True, True]
    # A resumed session still carries the client's verified certificate.
    assert seen[1][1] == seen[2][1] == seen[0][1]
    subject = dict(item[0] for item in seen[2][1]["subject"])
    assert subject["commonName"] == "comm node"


async def test_client_side_reports_resumption() -> None:
    security = Security.temporary()
    async with serving(security=security) as served:
        results = [await _reused(served.address(), security) for _ in range(3)]
    assert [(reused, tls13) for reused, tls13, _ in results] == [
        (False, True),
        (True, True),
        (True, True),
    ]
    # One ticket is kept per destination: each connection used its own and left a new one.
    assert security.session_cache is not None
    assert len(security.session_cache) == 1


async def test_turned_off_every_connection_verifies() -> None:
    security = Security.temporary(resume_sessions=False)
    assert security.session_cache is None
    assert security.server_context.num_tickets == 0
    seen = await _server_views(security, 3)
    assert [reused for reused, _ in seen] == [False, False, False]


async def test_a_ticket_is_only_offered_where_it_was_issued() -> None:
    """Two listeners with different credentials: each client keeps one ticket per listener."""
    one, two = Security.temporary(), Security.temporary()
    # A client trusting both CAs, presenting one's certificate (trusted by both listeners).
    client = Security(ca=f"{one.ca}{two.ca}", cert=one.cert, key=one.key)
    server_two = Security(ca=f"{one.ca}{two.ca}", cert=two.cert, key=two.key)
    async with serving(security=one) as first, serving(security=server_two) as second:
        order = [first, second, first, second, second]
        results = [(await _reused(s.address(), client))[0] for s in order]
    assert results == [False, False, True, True, True]
    assert client.session_cache is not None
    assert len(client.session_cache) == 2


async def test_a_listener_that_forgot_the_ticket_gets_a_full_handshake() -> None:
    """A restarted listener (new contexts, new ticket keys) cannot resume: no error, a full one."""
    client = Security.temporary()
    async with serving(security=client) as served:
        assert (await _reused(served.address(), client))[0] is False
        port = served.port
    # Same certificates, same address, but a new server context, as after a restart.
    restarted = Security(ca=client.ca, cert=client.cert, key=client.key)
    listener = comm_core.listen(f"tls://127.0.0.1:{port}", echo_handler, security=restarted)
    try:
        await listener.start()
    except comm_core.ConnectError:
        pytest.skip(f"port {port} was taken by someone else meanwhile")
    try:
        again = listener.contact_address
        assert (await _reused(again, client))[0] is False
        assert (await _reused(again, client))[0] is True
    finally:
        listener.stop()


async def test_resumption_does_not_bypass_hostname_checks() -> None:
    """A ticket for one name is not offered when dialing under another name."""
    security = Security.temporary()
    async with serving(security=security) as served:
        assert (await _reused(served.address(), security))[0] is False
        # Same listener, a name the certificate does not carry: refused, ticket or not.
        error, _ = await connect_fails(
            served.address(), security=security, server_hostname="elsewhere.example"
        )
        assert isinstance(error, FatalCommClosedError)
        assert "elsewhere.example" in str(error)
        assert (await _reused(served.address(), security))[0] is True


@needs_ipv6
async def test_ipv6_resumes_too() -> None:
    security = Security.temporary()
    async with serving(address=f"tls://[{IPV6}]:0", security=security) as served:
        results = [(await _reused(served.address(IPV6), security))[0] for _ in range(2)]
    assert results == [False, True]


async def test_one_security_on_two_event_loops() -> None:
    """The ticket cache is shared by loops in other threads, safely."""
    security = Security.temporary()
    async with serving(security=security) as served:
        address = served.address()
        assert (await _reused(address, security))[0] is False
        outcomes: list[BaseException | list[bool]] = []

        def other_thread() -> None:
            async def dial() -> list[bool]:
                return [(await _reused(address, security))[0] for _ in range(3)]

            try:
                outcomes.append(asyncio.run(dial()))
            except BaseException as exc:
                outcomes.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        await within(asyncio.to_thread(thread.join), "the other thread's connections")
    assert outcomes == [[True, True, True]]
