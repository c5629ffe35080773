"""Every way a TLS connection goes wrong, as both ends see it.

The client's error is asserted by type and message (and is never retried: it
comes long before the connect budget is spent); the listener's side is the
warning it logs, naming the client and what to fix. After each failure the
listener still serves a good client.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import pytest
import trustme

import comm_core
from comm_core import (
    BackendError,
    FatalCommClosedError,
    HostNotFoundError,
    ProtocolError,
)
from comm_tls import Security, TLSConfigurationError
from comm_tls._handshake import TLS_ALERT_PROTOCOL_VERSION
from tls_support import (
    IPV4,
    LONG_CONNECT,
    connect_fails,
    connected,
    past,
    ping,
    security,
    self_signed,
    serving,
    watching_logs,
    within,
)

pytestmark = pytest.mark.usefixtures("loop_name", "tls_layer")

#: A failure that is not retried comes long before the connect budget is spent.
PROMPT = LONG_CONNECT / 3


async def _still_serves(address: str, client: Security) -> None:
    async with connected(address, security=client) as comm:
        await ping(comm)


# -- configuration -------------------------------------------------------------------------


async def test_listen_without_context_names_the_address_and_the_fix() -> None:
    with pytest.raises(TLSConfigurationError) as info:
        comm_core.listen(f"tls://{IPV4}:0", lambda comm: None)
    message = str(info.value)
    assert f"cannot listen on tls://{IPV4}:0: tls:// needs certificates" in message
    assert "security=comm_tls.Security(ca=..., cert=..., key=...)" in message
    assert "ssl_context=<an ssl.SSLContext> to listen()" in message
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BackendError)


async def test_connect_without_context_fails_at_once(temporary: Security) -> None:
    async with serving(security=temporary) as served:
        exc, elapsed = await connect_fails(served.address())
    assert isinstance(exc, TLSConfigurationError)
    assert str(exc).startswith(f"cannot connect to {served.address()}: tls:// needs certificates")
    assert "to connect()" in str(exc)
    assert elapsed < PROMPT


async def test_a_host_name_that_does_not_resolve_fails_at_once(temporary: Security) -> None:
    # .invalid never resolves (RFC 6761); the resolver says so without the network.
    try:
        socket.getaddrinfo("nosuchhost.invalid", 8786)
    except socket.gaierror as gaierror:
        if gaierror.errno == socket.EAI_AGAIN:
            pytest.skip("this machine's resolver cannot answer (no DNS server reachable)")
    address = "tls://nosuchhost.invalid:8786"
    exc, elapsed = await connect_fails(address, security=temporary)
    assert isinstance(exc, HostNotFoundError)
    assert exc.host == "nosuchhost.invalid"
    assert str(exc).startswith(
        f"could not connect to {address}: the host name 'nosuchhost.invalid' could not be "
        "resolved ("
    )
    assert elapsed < PROMPT


async def test_both_security_and_ssl_context_are_refused(temporary: Security) -> None:
    with pytest.raises(TLSConfigurationError, match="pass ssl_context= or security=, not both"):
        comm_core.listen(
            f"tls://{IPV4}:0",
            lambda comm: None,
            security=temporary,
            ssl_context=temporary.server_context,
        )


async def test_contexts_for_the_wrong_side_are_refused(temporary: Security) -> None:
    with pytest.raises(
        TLSConfigurationError, match=r"is a client context .* needs a server context"
    ):
        comm_core.listen(f"tls://{IPV4}:0", lambda comm: None, ssl_context=temporary.client_context)
    async with serving(security=temporary) as served:
        exc, _ = await connect_fails(served.address(), ssl_context=temporary.server_context)
    assert isinstance(exc, TLSConfigurationError)
    assert "is a server context (PROTOCOL_TLS_SERVER); connect() needs a client context" in str(exc)


async def test_arguments_of_the_wrong_type_are_refused(temporary: Security) -> None:
    with pytest.raises(
        TLSConfigurationError, match=r"security= must be a comm_tls\.Security, got dict"
    ):
        comm_core.listen(f"tls://{IPV4}:0", lambda comm: None, security={"ca": "x"})
    with pytest.raises(
        TLSConfigurationError, match=r"ssl_context= must be an ssl\.SSLContext, got str"
    ):
        comm_core.listen(f"tls://{IPV4}:0", lambda comm: None, ssl_context="server.pem")


async def test_a_security_without_certificate_cannot_listen(ca: trustme.CA) -> None:
    with pytest.raises(TLSConfigurationError, match="has no certificate, which a listener needs"):
        comm_core.listen(f"tls://{IPV4}:0", lambda comm: None, security=security(ca))


# -- the server's certificate, as the client checks it ----------------------------------------


async def test_server_certificate_from_an_unknown_ca(
    ca: trustme.CA,
    other_ca: trustme.CA,
    server_cert: trustme.LeafCert,
    client_cert: trustme.LeafCert,
) -> None:
    with watching_logs() as logs:
        async with serving(security=security(ca, server_cert)) as served:
            client = security(other_ca, client_cert)  # trusts another CA
            exc, elapsed = await connect_fails(served.address(), security=client)
            record = await logs.wait_for("TLS handshake with client tls://127.0.0.1:")
            await _still_serves(served.address(), security(ca, client_cert))
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the server's certificate is signed by "
        "an unknown CA (certificate verify failed: "
    )
    assert str(exc).endswith(
        "pass the CA that signed it (Security(ca=...) or ssl_context.load_verify_locations(...))"
    )
    assert isinstance(exc.__cause__, ssl.SSLCertVerificationError)
    assert elapsed < PROMPT
    message = record.getMessage()
    assert f"listener {served.address()}:" in message
    if "TLSV1_ALERT_UNKNOWN_CA" in message:
        # comm-tls's own transport sends the client's alert, so the listener knows why.
        assert "the client does not trust this side's certificate" in message
    else:
        # asyncio's TLS layer hangs up without it.
        assert "the client closed the connection during the TLS handshake" in message
        assert "it most likely rejected this listener's certificate" in message


async def test_self_signed_server_certificate(
    ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    listener_security = Security(cert=self_signed(IPV4), require_client_cert=False)
    async with serving(security=listener_security) as served:
        exc, elapsed = await connect_fails(served.address(), security=security(ca, client_cert))
        # Trusting the self-signed certificate itself is the fix the message gives.
        async with connected(
            served.address(), security=Security(ca=self_signed_ca(listener_security))
        ) as comm:
            await ping(comm)
    assert isinstance(exc, FatalCommClosedError)
    assert (
        f"TLS handshake with {served.address()} failed: the server's certificate is self-signed "
        "(certificate verify failed: self-signed certificate); give the server a certificate "
        "signed by a CA that this side trusts, or pass that self-signed certificate as this "
        "side's CA"
    ) == str(exc)
    assert elapsed < PROMPT


def self_signed_ca(listener_security: Security) -> str:
    """The certificate part of a self-signed certificate-and-key PEM text."""
    text = str(listener_security.cert)
    return text[: text.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]


async def test_expired_server_certificate(ca: trustme.CA, client_cert: trustme.LeafCert) -> None:
    expired = ca.issue_cert(IPV4, not_before=past(30), not_after=past(1))
    async with serving(security=security(ca, expired)) as served:
        exc, elapsed = await connect_fails(served.address(), security=security(ca, client_cert))
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc) == (
        f"TLS handshake with {served.address()} failed: the server's certificate has expired "
        "(certificate verify failed: certificate has expired); renew the server's certificate"
    )
    assert elapsed < PROMPT


async def test_hostname_mismatch_and_the_ways_around_it(
    ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    elsewhere = ca.issue_cert("node-7.cluster.example")  # names no address
    async with serving(security=security(ca, elsewhere)) as served:
        exc, elapsed = await connect_fails(served.address(), security=security(ca, client_cert))
        # Check the name the certificate holds while dialling the address...
        async with connected(
            served.address(),
            security=security(ca, client_cert),
            server_hostname="node-7.cluster.example",
        ) as comm:
            await ping(comm)
        # ...or, in a cluster addressed by IP, check the CA only.
        async with connected(
            served.address(), security=security(ca, client_cert, check_hostname=False)
        ) as comm:
            await ping(comm)
    assert isinstance(exc, FatalCommClosedError)
    message = str(exc)
    assert message.startswith(
        f"TLS handshake with {served.address()} failed: the server's certificate is not valid "
        "for '127.0.0.1' (certificate verify failed: IP address mismatch"
    )
    assert "pass server_hostname= with a name it lists" in message
    assert "Security(check_hostname=False)" in message
    assert elapsed < PROMPT


async def test_host_name_is_checked_when_dialling_a_name(
    ca: trustme.CA, client_cert: trustme.LeafCert, server_cert: trustme.LeafCert
) -> None:
    other = ca.issue_cert("127.0.0.1")  # the address, but not the name "localhost"
    async with serving(security=security(ca, other)) as served:
        exc, _ = await connect_fails(
            served.address(host="localhost"), security=security(ca, client_cert)
        )
    assert isinstance(exc, FatalCommClosedError)
    assert "the server's certificate is not valid for 'localhost'" in str(exc)
    async with (
        serving(security=security(ca, server_cert)) as served,
        connected(served.address(host="localhost"), security=security(ca, client_cert)) as comm,
    ):
        await ping(comm)


# -- the client's certificate, as the listener checks it ----------------------------------------


async def test_missing_client_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert, client_cert: trustme.LeafCert
) -> None:
    with watching_logs() as logs:
        async with serving(security=security(ca, server_cert)) as served:
            exc, elapsed = await connect_fails(served.address(), security=security(ca))
            record = await logs.wait_for("the client sent no certificate")
            await _still_serves(served.address(), security(ca, client_cert))
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the server requires a client "
        "certificate (mutual TLS) and this side sent none ("
    )
    assert str(exc).endswith(
        "pass a certificate and key signed by a CA that the server trusts "
        "(Security(cert=..., key=...) or ssl_context.load_cert_chain(...))"
    )
    assert elapsed < PROMPT
    message = record.getMessage()
    assert message.startswith(
        f"listener {served.address()}: TLS handshake with client tls://127.0.0.1:"
    )
    assert "give the client a certificate signed by a CA in this listener's CA" in message
    assert "Security(require_client_cert=False)" in message


async def test_missing_client_certificate_over_tls_1_2(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    """TLS 1.2 says less than TLS 1.3 (a handshake_failure alert): the message says both."""
    client = security(ca).client_context
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with watching_logs() as logs:
        async with serving(security=security(ca, server_cert)) as served:
            exc, elapsed = await connect_fails(served.address(), ssl_context=client)
            await logs.wait_for("the client sent no certificate")
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the server refused the handshake: it "
        "may require a client certificate (mutual TLS) that this side did not send, or the two "
        "sides agree on no cipher ([SSL: SSLV3_ALERT_HANDSHAKE_FAILURE]"
    )
    assert elapsed < PROMPT


async def test_client_certificate_from_an_unknown_ca(
    ca: trustme.CA, other_ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    stranger = other_ca.issue_cert("client.example")
    with watching_logs() as logs:
        async with serving(security=security(ca, server_cert)) as served:
            exc, elapsed = await connect_fails(served.address(), security=security(ca, stranger))
            record = await logs.wait_for("the client's certificate is signed by an unknown CA")
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the server does not trust this side's "
        "certificate: it is signed by a CA the server does not know (or is self-signed) ("
    )
    assert str(exc).endswith(
        "use a certificate signed by a CA that the server trusts, or add this side's CA to the "
        "server's CA"
    )
    assert elapsed < PROMPT
    assert (
        "certificate verify failed: unable to get local issuer certificate" in record.getMessage()
    )


async def test_expired_client_certificate(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    expired = ca.issue_cert("client.example", not_before=past(30), not_after=past(1))
    with watching_logs() as logs:
        async with serving(security=security(ca, server_cert)) as served:
            exc, _ = await connect_fails(served.address(), security=security(ca, expired))
            record = await logs.wait_for("the client's certificate has expired")
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the server rejected this side's "
        "certificate as expired ("
    )
    assert "renew the client's certificate" in record.getMessage()


async def test_mutual_tls_accepted_shows_the_client_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert, client_cert: trustme.LeafCert
) -> None:
    async with (
        serving(security=security(ca, server_cert)) as served,
        connected(served.address(), security=security(ca, client_cert)) as comm,
    ):
        await ping(comm)
        server_side = await served.accepted()
        subject = dict(item[0] for item in server_side.extra_info["peercert"]["subject"])
        assert subject["commonName"] == "a comm client"
        assert dict(item[0] for item in comm.extra_info["peercert"]["subject"])


async def test_without_mutual_tls_a_client_needs_no_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    listener_security = security(ca, server_cert, require_client_cert=False)
    async with (
        serving(security=listener_security) as served,
        connected(served.address(), security=security(ca)) as comm,
    ):
        await ping(comm)
        assert (await served.accepted()).extra_info["peercert"] == {}


# -- talking to the wrong scheme -------------------------------------------------------------------


async def test_tls_client_dialling_a_tcp_listener(temporary: Security) -> None:
    with watching_logs() as logs:
        async with serving(address=f"tcp://{IPV4}:0") as served:
            tls_address = served.address(scheme="tls")
            exc, elapsed = await connect_fails(tls_address, security=temporary)
            record = await logs.wait_for("it looks like a TLS handshake")
            async with connected(served.address(scheme="tcp")) as comm:
                await ping(comm)
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc) == (
        f"TLS handshake with {tls_address} failed: the server does not speak TLS ([SSL: "
        "WRONG_VERSION_NUMBER] wrong version number); is it a tcp:// endpoint? Dial it with "
        "tcp://, or make it listen on tls://"
    )
    assert elapsed < PROMPT
    assert "is the peer using tls:// against a tcp:// endpoint?" in record.getMessage()


async def test_tcp_client_dialling_a_tls_listener(temporary: Security) -> None:
    with watching_logs() as logs:
        async with serving(security=temporary) as served:
            tcp_address = served.address(scheme="tcp")
            exc, elapsed = await connect_fails(tcp_address)
            record = await logs.wait_for("the client does not speak TLS")
            await _still_serves(served.address(), temporary)
    assert isinstance(exc, ProtocolError)
    assert str(exc).startswith(f"peer {tcp_address} is not a comm endpoint: it sent b'\\x15\\x03")
    assert str(exc).endswith(
        "it looks like a TLS alert: is the peer a tls:// endpoint? Dial it with tls://"
    )
    assert elapsed < PROMPT
    assert record.getMessage().startswith(
        f"listener {served.address()}: TLS handshake with client tls://127.0.0.1:"
    )
    assert (
        "it sent b'\\x8eCOMM\\x01\\x00\\x00', the preamble of a plain comm client: is it "
        "dialling tcp:// instead of tls://?"
    ) in record.getMessage()


@pytest.mark.parametrize(
    "sent",
    [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", bytes(range(0x20, 0x80))],
    ids=["http", "garbage"],
)
async def test_a_peer_that_does_not_speak_tls_is_dropped_at_once(
    temporary: Security, sent: bytes
) -> None:
    """Regression: a peer that does not speak TLS (HTTP, garbage) got the alert, then kept
    its connection until the handshake timeout; it is dropped right after the alert."""
    loop = asyncio.get_running_loop()
    async with serving(security=temporary, handshake_timeout=LONG_CONNECT) as served:
        reader, writer = await asyncio.open_connection(IPV4, served.port)
        try:
            start = loop.time()
            writer.write(sent)
            data = await within(reader.read(), "the listener to drop the peer")
            elapsed = loop.time() - start
        finally:
            writer.transport.abort()
        await _still_serves(served.address(), temporary)
    assert data == TLS_ALERT_PROTOCOL_VERSION
    assert elapsed < PROMPT


async def test_the_versions_must_overlap(temporary: Security) -> None:
    newest_only = Security(
        ca=temporary.ca,
        cert=temporary.cert,
        key=temporary.key,
        minimum_version=ssl.TLSVersion.TLSv1_3,
    )
    client = Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key).client_context
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with watching_logs() as logs:
        async with serving(security=newest_only) as served:
            exc, elapsed = await connect_fails(served.address(), ssl_context=client)
            record = await logs.wait_for("TLS handshake with client")
    assert isinstance(exc, FatalCommClosedError)
    assert str(exc).startswith(
        f"TLS handshake with {served.address()} failed: the two sides have no TLS version in "
        "common ("
    )
    assert str(exc).endswith("check minimum_version on both sides")
    assert elapsed < PROMPT
    assert "the two sides have no TLS version in common" in record.getMessage()


# -- a flood of bad clients ------------------------------------------------------------------


async def test_a_flood_of_clients_that_fail_the_handshake_costs_a_few_log_lines(
    temporary: Security,
) -> None:
    """Each client that fails its TLS handshake is a line a stranger can cause: a flood of
    them gets the first few and one count, not a line each, and the listener serves on."""
    flood = 12
    with watching_logs() as logs:
        async with serving(security=temporary) as served:
            for _ in range(flood):
                reader, writer = await asyncio.open_connection(IPV4, served.port)
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                # The listener logs before it closes the connection: once it is closed,
                # the line (or the count) is there.
                await within(reader.read(), "the listener to close the connection")
                writer.close()
                await writer.wait_closed()
            lines = logs.matching("the client does not speak TLS")
            assert len(lines) == 3
            await _still_serves(served.address(), temporary)
        # Stopping the listener says how many lines were left out.
        summary = logs.matching(f"... and {flood - 3} more TLS handshakes")
        assert len(summary) == 1
        assert summary[0].levelno == logging.WARNING
