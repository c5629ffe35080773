"""TLS 1.3 session resumption: a client that dials a listener again skips the certificates."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
import ssl
import threading
from typing import Any

import pytest

import comm_core
from comm_core import Comm, FatalCommClosedError
from comm_core.testing import echo_handler
from comm_tls import Security, _resume
from tls_support import (
    EVENT_TIMEOUT,
    IPV4,
    IPV6,
    connect_fails,
    connected,
    greeted,
    needs_ipv6,
    ping,
    raw_context,
    raw_dial,
    serving,
    watching_logs,
    within,
)

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


_TLS12 = ssl.TLSVersion.TLSv1_2
# A TLS 1.2 client resumes by ticket if the server issues one, else by session ID.
_BY = pytest.mark.parametrize("tickets", [True, False], ids=["ticket", "session-id"])


async def _second_connection(
    context: ssl.SSLContext, port: int
) -> tuple[ssl.SSLSession, bool, bool]:
    """Dial twice, the second time offering the first connection's session while the first
    is still open (so the listener still holds it); the session, and whether the second
    connection resumed and was greeted by the listener."""

    def dials() -> tuple[ssl.SSLSession, bool, bool]:
        with raw_dial(context, port) as first:
            assert first.version() == "TLSv1.2"
            assert greeted(first)
            session = first.session
            assert session is not None
            with raw_dial(context, port, session) as second:
                return session, second.session_reused, greeted(second)

    return await within(asyncio.to_thread(dials), "two connections of a TLS 1.2 client")


@_BY
async def test_turned_off_a_tls12_client_cannot_resume(
    tmp_path: pathlib.Path, tickets: bool
) -> None:
    """A TLS 1.2 client that offers its session gets a full handshake, certificates checked."""
    security = Security.temporary(resume_sessions=False)
    context = raw_context(security, security, tmp_path, maximum_version=_TLS12, tickets=tickets)
    async with serving(security=security) as served:
        session, reused, served_it = await _second_connection(context, served.port)
    assert reused is False
    assert served_it
    assert not session.has_ticket
    assert security.server_context.options & ssl.OP_NO_TICKET


@_BY
async def test_turned_off_a_resumption_that_happens_anyway_is_dropped(
    tmp_path: pathlib.Path, tickets: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the session cache cannot be turned off (this Python's OpenSSL out of reach), a
    client that resumes by session ID is dropped after its handshake, and the listener says so."""
    monkeypatch.setattr(_resume, "_session_cache_off", lambda context: False)
    security = Security.temporary(resume_sessions=False)
    context = raw_context(security, security, tmp_path, maximum_version=_TLS12, tickets=tickets)
    async with serving(security=security) as served:
        with watching_logs() as logs:
            _, reused, served_it = await _second_connection(context, served.port)
            await logs.wait_for("it resumed an earlier TLS session", "resume_sessions=False")
    assert reused is True  # by session ID: tickets are off even here
    assert not served_it
    # A comm client still connects, with a full handshake.
    seen = await _server_views(security, 2)
    assert [reused for reused, _ in seen] == [False, False]


@_BY
async def test_turned_on_a_tls12_client_resumes(tmp_path: pathlib.Path, tickets: bool) -> None:
    """The counterpart of test_turned_off_a_tls12_client_cannot_resume: the same clients
    resume when resumption is on."""
    security = Security.temporary()
    context = raw_context(security, security, tmp_path, maximum_version=_TLS12, tickets=tickets)
    async with serving(security=security) as served:
        session, reused, served_it = await _second_connection(context, served.port)
    assert session.has_ticket is tickets
    assert reused is True
    assert served_it


@_BY
async def test_turned_off_a_wrong_certificate_fails_despite_a_saved_session(
    tmp_path: pathlib.Path, tickets: bool
) -> None:
    """A client whose certificate changed to one the listener does not trust is refused,
    whatever session it offers (a resumed session would skip the check)."""
    security = Security.temporary(resume_sessions=False)
    context = raw_context(security, security, tmp_path, maximum_version=_TLS12, tickets=tickets)
    async with serving(security=security) as served:

        def dials() -> BaseException | None:
            with raw_dial(context, served.port) as first:
                assert greeted(first)
                # Now the client presents a certificate from a CA the listener does not know.
                context.load_cert_chain(_pem_file(tmp_path, Security.temporary()))
                try:
                    with raw_dial(context, served.port, first.session) as second:
                        return None if greeted(second) else ConnectionResetError("no greeting")
                except (ssl.SSLError, OSError) as exc:
                    return exc

        with watching_logs() as logs:
            error = await within(asyncio.to_thread(dials), "the client's connections")
            assert isinstance(error, ssl.SSLError), error
            await logs.wait_for("TLS handshake with client", "unknown CA")


def _pem_file(folder: pathlib.Path, identity: Security) -> pathlib.Path:
    path = folder / f"other-{id(identity)}.pem"
    path.write_text(f"{identity.cert}{identity.key}")
    return path


_OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(_OPENSSL is None, reason="no openssl command line tool")
@_BY
async def test_turned_off_openssl_s_client_gets_nothing_to_resume_with(
    tmp_path: pathlib.Path, tickets: bool
) -> None:
    """Another TLS implementation's client, ``openssl s_client``, which keeps every session it
    could resume (``-sess_out``): the listener gives it no session ID and no ticket, so it
    holds nothing to resume with, with a certificate or without one."""
    assert _OPENSSL is not None
    security = Security.temporary(resume_sessions=False)
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for name, path in files.items():
        path.write_text(str(getattr(security, name)))
    saved = tmp_path / "session.pem"
    async with serving(security=security) as served:
        client = await asyncio.create_subprocess_exec(
            *[_OPENSSL, "s_client", "-connect", f"{IPV4}:{served.port}", "-tls1_2"],
            *["-CAfile", str(files["ca"]), "-verify_return_error"],
            *["-cert", str(files["cert"]), "-key", str(files["key"])],
            *["-sess_out", str(saved)],
            *([] if tickets else ["-no_ticket"]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "LC_ALL": "C"},
        )
        try:
            assert client.stdout is not None
            seen = b""
            while b"Verify return code" not in seen:  # printed once the handshake is over
                line = await within(client.stdout.readline(), "openssl s_client's handshake")
                assert line, seen.decode(errors="replace")
                seen += line
        finally:
            client.kill()
            await asyncio.wait_for(client.wait(), EVENT_TIMEOUT)
    text = seen.decode(errors="replace")
    assert "New, TLSv1.2" in text, text
    assert re.search(r"^ *Session-ID: *$", text, re.MULTILINE), text
    assert "TLS session ticket" not in text, text
    assert not saved.exists()


async def test_a_tls13_ticket_is_accepted_more_than_once(tmp_path: pathlib.Path) -> None:
    """What docs/security.rst states: the listener does not remember which tickets it saw, so a
    ticket (the listener issues one per connection) resumes as often as it is presented."""
    security = Security.temporary()
    assert security.server_context.num_tickets == 1
    context = raw_context(security, security, tmp_path)
    async with serving(security=security) as served:

        def dials() -> list[bool]:
            with raw_dial(context, served.port) as first:
                assert first.version() == "TLSv1.3"
                assert greeted(first)
                session = first.session
            assert session is not None
            assert session.has_ticket
            reused = []
            for _ in range(3):
                with raw_dial(context, served.port, session) as again:
                    reused.append(again.session_reused and greeted(again))
            return reused

        reused = await within(asyncio.to_thread(dials), "four connections")
    assert reused == [True, True, True]


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
