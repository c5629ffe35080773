"""What comm-tls raises, and the sentences that turn TLS failures into what to fix.

OpenSSL says *what* failed (``certificate verify failed: unable to get local
issuer certificate``); the functions here add *whose* certificate and *what to
do*. They are used at the boundary where :class:`ssl.SSLError` is translated
(``raise FatalCommClosedError(...) from exc``) and for the listener's log.
"""

from __future__ import annotations

import re
import ssl

from comm_core import BackendError

__all__ = ["TLSConfigurationError", "describe_failure", "ssl_detail", "words_of"]


class TLSConfigurationError(BackendError, ValueError):
    """The TLS configuration is missing or unusable.

    Raised by :func:`comm_core.listen` and :func:`comm_core.connect` for a
    ``tls://`` address given neither ``security=`` nor ``ssl_context=`` (or
    both, or a context for the wrong side), and by :class:`comm_tls.Security`
    for certificates, keys or options it cannot use. Never retried: it is a
    :class:`comm_core.BackendError` (a misused backend) and a :class:`ValueError`
    (a bad argument).

    Attributes:
        setting: which of :class:`comm_tls.Security`'s settings could not be
            used, when it is a file that failed to load: ``"ca"``, or
            ``"cert"`` (the certificate and its key); ``None`` otherwise.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


# OpenSSL's X509_V_ERR_* codes (SSLCertVerificationError.verify_code).
_NOT_YET_VALID = 9
_EXPIRED = 10
_SELF_SIGNED = 18
_UNKNOWN_ISSUER = frozenset({2, 19, 20, 21})
_WRONG_PURPOSE = 26
_NAME_MISMATCH = frozenset({62, 64})  # host name, IP address

# OpenSSL reasons (SSLError.reason).
_NO_CERTIFICATE = frozenset(
    {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE"}
)
_REJECTED_CERTIFICATE = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)
_NO_COMMON_VERSION = frozenset(
    {
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_INAPPROPRIATE_FALLBACK",
    }
)
_NO_COMMON_CIPHER = frozenset(
    {
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "NO_SHARED_CIPHER",
        "NO_CIPHERS_AVAILABLE",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
    }
)
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "UNKNOWN_PROTOCOL",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LAYER_FAILURE",
        "UNEXPECTED_RECORD",
    }
)

#: What to do, in the words of who configured this side: ``"api"`` (Python code: the
#: fields of :class:`~comm_tls.Security`) or ``"cli"`` (the ``comm`` command's options,
#: which give a :class:`~comm_tls._security.CommandLineSecurity`).
_FIXES: dict[str, dict[str, str]] = {
    "api": {
        "ca": "pass the CA that signed it (Security(ca=...) or "
        "ssl_context.load_verify_locations(...))",
        "name": "dial a host name or address that the certificate lists, pass "
        "server_hostname= with a name it lists, or, for a cluster addressed by IP whose "
        "certificates name no addresses, turn hostname checking off with "
        "Security(check_hostname=False)",
        "send_cert": "pass a certificate and key signed by a CA that the server trusts "
        "(Security(cert=..., key=...) or ssl_context.load_cert_chain(...))",
        "accept_no_cert": "give the client a certificate signed by a CA in this listener's "
        "CA, or listen with Security(require_client_cert=False)",
        "versions": "check minimum_version on both sides",
        "send_cert_or_ciphers": "pass a certificate and key signed by a CA that the server "
        "trusts (Security(cert=..., key=...)), and check the ciphers of both sides",
    },
    "cli": {
        "ca": "pass the CA that signed it with --ca FILE",
        "name": "dial a host name or address that the certificate lists, or pass "
        "--no-check-hostname (the certificate is still checked against the CA)",
        "send_cert": "pass --cert FILE and --key FILE, a certificate signed by a CA that "
        "the server trusts",
        "accept_no_cert": "give the client a certificate signed by the CA given to this "
        "listener's --ca, or serve with --no-client-cert",
        "versions": "both sides need TLS 1.2 or later",
        "send_cert_or_ciphers": "pass --cert FILE and --key FILE, a certificate signed by "
        "a CA that the server trusts, and check the TLS settings of the server",
    },
}


def ssl_detail(exc: BaseException) -> str:
    """OpenSSL's own words for *exc*, without the C source location."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
        return re.sub(r"\s*\(_ssl\.c:\d+\)$", "", text)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _verification(
    exc: ssl.SSLCertVerificationError, peer: str, hostname: str | None, fixes: dict[str, str]
) -> tuple[str, str]:
    code = exc.verify_code
    cert = f"the {peer}'s certificate"
    if code == _SELF_SIGNED:
        return (
            f"{cert} is self-signed",
            f"give the {peer} a certificate signed by a CA that this side trusts, or pass that "
            "self-signed certificate as this side's CA",
        )
    if code in _UNKNOWN_ISSUER:
        return f"{cert} is signed by an unknown CA", fixes["ca"]
    if code == _EXPIRED:
        return f"{cert} has expired", f"renew the {peer}'s certificate"
    if code == _NOT_YET_VALID:
        return f"{cert} is not valid yet", "check its start date and both machines' clocks"
    if code in _NAME_MISMATCH:
        name = repr(hostname) if hostname else "the host name dialled"
        return f"{cert} is not valid for {name}", fixes["name"]
    if code == _WRONG_PURPOSE:
        return (
            f"{cert} is not meant for this use (its extended key usage)",
            f"issue the {peer}'s certificate for TLS {peer} authentication",
        )
    return f"{cert} was rejected", f"check the {peer}'s certificate against this side's CA"


def _explain(
    exc: BaseException, peer: str, hostname: str | None, words: str = "api"
) -> tuple[str, str]:
    """``(what happened, what to do)`` for a failure seen by this side talking to a *peer*;
    what to do in *words* (see ``_FIXES``)."""
    fixes = _FIXES[words]
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verification(exc, peer, hostname, fixes)
    reason = getattr(exc, "reason", None) or ""
    if reason in _NO_CERTIFICATE:
        if peer == "server":
            return (
                "the server requires a client certificate (mutual TLS) and this side sent none",
                fixes["send_cert"],
            )
        return (
            "the client sent no certificate, and this listener requires one (mutual TLS)",
            fixes["accept_no_cert"],
        )
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return (
            f"the {peer} does not trust this side's certificate: it is signed by a CA the "
            f"{peer} does not know (or is self-signed)",
            f"use a certificate signed by a CA that the {peer} trusts, or add this side's CA "
            f"to the {peer}'s CA",
        )
    if reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
        return f"the {peer} rejected this side's certificate as expired", "renew it"
    if reason in _REJECTED_CERTIFICATE:
        return (
            f"the {peer} rejected this side's certificate",
            f"check this side's certificate against the {peer}'s CA",
        )
    if reason in _NO_COMMON_VERSION:
        return "the two sides have no TLS version in common", fixes["versions"]
    if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE" and peer == "server":
        # What a TLS 1.2 server answers a client that sent no certificate, among others.
        return (
            "the server refused the handshake: it may require a client certificate (mutual "
            "TLS) that this side did not send, or the two sides agree on no cipher",
            fixes["send_cert_or_ciphers"],
        )
    if reason in _NO_COMMON_CIPHER:
        return (
            "the two sides agree on no cipher, or the listener has no usable certificate",
            "check the ciphers of both sides, and that the listener has a certificate and key",
        )
    if reason in _NOT_TLS:
        if peer == "server":
            return (
                "the server does not speak TLS",
                "is it a tcp:// endpoint? Dial it with tcp://, or make it listen on tls://",
            )
        return "the client does not speak TLS", "is it dialling tcp:// instead of tls://?"
    if isinstance(exc, (ConnectionError, EOFError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        if peer == "client":
            return (
                "the client closed the connection during the TLS handshake",
                "it most likely rejected this listener's certificate: check that the client "
                "has the CA that signed it and dials a host name that the certificate lists",
            )
        return (
            "the server closed the connection during the TLS handshake",
            "is it a tls:// endpoint, and does it accept this side's certificate?",
        )
    if isinstance(exc, TimeoutError):
        return f"the {peer} did not complete the TLS handshake in time", "is it a tls:// endpoint?"
    return "the TLS layer failed", "check the TLS configuration of both sides"


def words_of(security: object) -> str:
    """In whose words to advise about failures of comms configured with *security*:
    ``"cli"`` for the ``comm`` command's, ``"api"`` for anything else."""
    words = getattr(security, "advice_words", "api")
    return words if words in _FIXES else "api"


def describe_failure(
    exc: BaseException,
    *,
    peer: str,
    address: str,
    hostname: str | None = None,
    words: str = "api",
) -> str:
    """The message for a TLS handshake with *address* (whose role is *peer*) failing with *exc*.

    Args:
        exc: what the TLS layer raised (or reported when the connection was lost).
        peer: ``"server"`` (this side dialled) or ``"client"`` (this side listens).
        address: the peer's address, such as ``"tls://127.0.0.1:8786"``.
        hostname: the name the client checked the server's certificate against.
        words: ``"api"`` to say what to do in terms of :class:`~comm_tls.Security`
            (the default), ``"cli"`` in terms of the ``comm`` command's options
            (:func:`words_of` tells which).
    """
    what, fix = _explain(exc, peer, hostname, words)
    return f"TLS handshake with {address} failed: {what} ({ssl_detail(exc)}); {fix}"
