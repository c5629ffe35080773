"""Security: built once from files or PEM text, strict by default, with clear errors."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pathlib
import pickle
import ssl
import tempfile

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

import comm_core
from comm_core import FatalCommClosedError
from comm_tls import Security, TLSConfigurationError, _resume
from tls_support import chain_pem, connected, greeted, pem, ping, raw_context, raw_dial, serving


@pytest.fixture
def files(
    tmp_path: pathlib.Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> dict[str, pathlib.Path]:
    """The CA, a certificate chain and its key, in separate files."""
    paths = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "node.pem",
        "key": tmp_path / "node.key",
    }
    paths["ca"].write_bytes(ca.cert_pem.bytes())
    paths["cert"].write_text("".join(pem(b) for b in server_cert.cert_chain_pems))
    paths["key"].write_bytes(server_cert.private_key_pem.bytes())
    return paths


async def test_from_files_and_from_pem_text_interoperate(
    files: dict[str, pathlib.Path], ca: trustme.CA, client_cert: trustme.LeafCert
) -> None:
    from_files = Security(ca=files["ca"], cert=files["cert"], key=str(files["key"]))
    from_text = Security(ca=pem(ca.cert_pem), cert=chain_pem(client_cert))  # key in the chain
    async with (
        serving(security=from_files) as served,
        connected(served.address(), security=from_text) as comm,
    ):
        await ping(comm)


def test_defaults_are_strict(temporary: Security) -> None:
    server, client = temporary.server_context, temporary.client_context
    assert server.verify_mode == ssl.CERT_REQUIRED  # mutual TLS
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname is True
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert temporary.server_context is server  # built once
    assert temporary.client_context is client


def test_options_shape_the_contexts(temporary: Security) -> None:
    relaxed = Security(
        ca=temporary.ca,
        cert=temporary.cert,
        key=temporary.key,
        require_client_cert=False,
        check_hostname=False,
        minimum_version=ssl.TLSVersion.TLSv1_3,
        ciphers="ECDHE+AESGCM",
    )
    assert relaxed.server_context.verify_mode == ssl.CERT_OPTIONAL  # checks a certificate if sent
    assert relaxed.client_context.check_hostname is False
    assert relaxed.client_context.verify_mode == ssl.CERT_REQUIRED  # the CA is still checked
    assert relaxed.client_context.minimum_version == ssl.TLSVersion.TLSv1_3
    names = {c["name"] for c in relaxed.client_context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names
    assert all("GCM" in name for name in names)
    no_ca = Security(cert=temporary.cert, key=temporary.key, require_client_cert=False)
    assert no_ca.server_context.verify_mode == ssl.CERT_NONE


def test_key_and_password_are_not_shown(temporary: Security) -> None:
    text = repr(Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key, password="pw"))
    assert text.startswith("Security(ca=PEM text, cert=PEM text, key=<hidden>,")
    assert "PRIVATE" not in text
    assert "pw" not in text


def test_pem_text_is_written_to_a_private_directory_and_deleted(
    temporary: Security, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[pathlib.Path, int]] = []
    real = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, keyfile: str | None = None, password=None):  # type: ignore[no-untyped-def]
        path = pathlib.Path(certfile)
        seen.append((path, path.parent.stat().st_mode & 0o777))
        return real(self, certfile, keyfile, password)

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key)
    assert [mode for _, mode in seen] == [0o700, 0o700]  # client side, server side
    assert all(path.is_relative_to(tmp_path) for path, _ in seen)
    assert list(tmp_path.iterdir()) == []  # deleted right after loading


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"cert": "/nonexistent/node.pem"},
            "cannot load the certificate ('/nonexistent/node.pem')",
        ),
        ({"ca": "/nonexistent/ca.pem"}, "cannot load the CA certificates ('/nonexistent/ca.pem')"),
        ({"cert": None, "key": "k"}, "key= was given without cert="),
        ({"minimum_version": ssl.TLSVersion.TLSv1_1}, "older versions are insecure"),
        ({"ciphers": "NO-SUCH-CIPHER"}, "selects no cipher"),
    ],
)
def test_unusable_settings(temporary: Security, options: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"ca": temporary.ca, "cert": temporary.cert, "key": temporary.key}
    with pytest.raises(TLSConfigurationError) as info:
        Security(**{**base, **options})  # type: ignore[arg-type]
    assert message in str(info.value)


def test_mutual_tls_needs_a_ca(temporary: Security) -> None:
    with pytest.raises(TLSConfigurationError) as info:
        Security(cert=temporary.cert, key=temporary.key)
    assert str(info.value) == (
        "require_client_cert=True (mutual TLS, the default) needs ca=, the CA that signs the "
        "clients' certificates; pass ca=, or require_client_cert=False"
    )


def test_a_key_that_does_not_match(temporary: Security) -> None:
    other = Security.temporary()
    with pytest.raises(TLSConfigurationError) as info:
        Security(ca=temporary.ca, cert=temporary.cert, key=other.key)
    assert "cannot load the certificate (PEM text) and key (PEM text)" in str(info.value)
    assert "KEY_VALUES_MISMATCH" in str(info.value)


def test_temporary_credentials(temporary: Security) -> None:
    cert = x509.load_pem_x509_certificate(str(temporary.cert).encode())
    ca = x509.load_pem_x509_certificate(str(temporary.ca).encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName)[0] == "localhost"
    assert names.get_values_for_type(x509.IPAddress)[:2] == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=7) <= lifetime <= datetime.timedelta(days=7, minutes=10)
    assert "PRIVATE KEY" in str(temporary.key)


async def test_temporary_credentials_for_other_hosts() -> None:
    named = Security.temporary(["node-1.example"], valid_for=datetime.timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(str(named.cert).encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["node-1.example"]
    async with (
        serving(security=named) as served,
        connected(served.address(), security=named, server_hostname="node-1.example") as comm,
    ):
        await ping(comm)
    with pytest.raises(TLSConfigurationError, match="at least one host"):
        Security.temporary([])
    with pytest.raises(TLSConfigurationError, match="valid_for must be positive"):
        Security.temporary(valid_for=datetime.timedelta(0))


async def test_temporary_credentials_name_this_host_as_others_reach_it() -> None:
    """By default the certificate lists the host name and the primary addresses (what a
    wildcard listener advertises), so that a client on another host can verify it."""
    import socket

    from comm_core.sockets import primary_ip

    creds = Security.temporary(valid_for=datetime.timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(str(creds.cert).encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    assert {"localhost", socket.gethostname()} <= set(dns)
    primary = primary_ip(socket.AF_INET)
    assert {"127.0.0.1", "::1", primary} <= set(ips)
    # Over real TLS: a client that dials this host by its primary address (here through
    # the loopback, with the name it checks set to that address) verifies the listener.
    async with (
        serving(security=creds) as served,
        connected(served.address(), security=creds, server_hostname=primary) as comm,
    ):
        await ping(comm)
        with pytest.raises(FatalCommClosedError, match="not valid"):
            await comm_core.connect(
                served.address(), security=creds, server_hostname="elsewhere.invalid", timeout=5
            )


def test_equal_settings_compare_equal(temporary: Security) -> None:
    again = Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key)
    assert again == Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key)
    assert hash(again) == hash(Security(ca=temporary.ca, cert=temporary.cert, key=temporary.key))
    assert again != temporary.__class__(
        ca=temporary.ca, cert=temporary.cert, key=temporary.key, check_hostname=False
    )


def test_pickles_as_its_settings(temporary: Security) -> None:
    """A Security can be sent to another process; the copy builds its own contexts."""
    copy = pickle.loads(pickle.dumps(temporary))
    assert copy == temporary
    assert copy.server_context is not temporary.server_context
    assert copy.client_context.verify_mode == ssl.CERT_REQUIRED


def _set_session_lifetime(context: ssl.SSLContext, seconds: int) -> None:
    """OpenSSL's SSL_CTX_set_timeout, which Python does not expose (skip where unreachable)."""
    import _ssl
    import ctypes

    address = _resume._ssl_ctx(context)
    if _resume._openssl() is None or not address:
        pytest.skip("this Python's OpenSSL cannot be reached through ctypes")
    set_timeout = ctypes.CDLL(getattr(_ssl, "__file__", None)).SSL_CTX_set_timeout
    set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
    set_timeout.restype = ctypes.c_long
    set_timeout(address, seconds)


@pytest.mark.slow
async def test_how_long_a_client_can_go_on_resuming(tmp_path: pathlib.Path) -> None:
    """What docs/security.rst states about a listener that resumes sessions, with the session
    lifetime cut from OpenSSL's 2 hours to 3 s: a TLS 1.2 session resumes until its lifetime
    has passed since the full handshake; a resumed TLS 1.3 connection brings a new ticket
    whose lifetime starts then, so a client that keeps reconnecting within the lifetime
    resumes for ever, its certificate never checked again."""
    security = Security.temporary()
    _set_session_lifetime(security.server_context, 3)
    clients = {
        version: raw_context(security, security, tmp_path, maximum_version=version)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    }
    async with serving(security=security) as served:

        def dial(
            context: ssl.SSLContext, session: ssl.SSLSession | None
        ) -> tuple[bool, ssl.SSLSession]:
            with raw_dial(context, served.port, session) as sock:
                assert greeted(sock)  # (TLS 1.3) the ticket has arrived
                assert sock.session is not None
                return sock.session_reused, sock.session

        async def schedule(context: ssl.SSLContext) -> list[bool]:
            reused, first = await asyncio.to_thread(dial, context, None)
            outcomes = [reused]
            await asyncio.sleep(2)  # the lifetime's clock (seconds) runs: nothing to wait on
            reused, second = await asyncio.to_thread(dial, context, first)
            outcomes.append(reused)
            await asyncio.sleep(2)  # the full handshake is now 4 s old, the resumption 2 s
            for session in (first, second):
                reused, _ = await asyncio.to_thread(dial, context, session)
                outcomes.append(reused)
            return outcomes

        twelve, thirteen = await asyncio.wait_for(
            asyncio.gather(*(schedule(context) for context in clients.values())), 30
        )
    # full handshake, resumed after 2 s, then (4 s) the first session, the latest one
    assert twelve == [False, True, False, False]
    assert thirteen == [False, True, False, True]
