"""comm-tls's part of the ``comm`` command, through the hooks of its installed plugin.

The commands themselves (serve, ping, doctor over real TLS) run as subprocesses
in the root ``tests/test_cli.py``; here the parser is built in this process and
the TLS options are turned into connection arguments, as ``comm`` does.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest

import comm_core
from comm_core.cli import CLIError, build_parser, connection_args
from comm_tls import Security
from comm_tls._cli import _handshake_hint


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def args_for(*argv: str, server_side: bool = False, **options: Any) -> dict[str, Any]:
    parsed = parse(*argv)
    backend = comm_core.get_backend(comm_core.parse_address(parsed.address)[0])
    return connection_args(parsed, backend, server_side=server_side, **options)


def test_the_options_are_comm_tls_s() -> None:
    impls = comm_core.get_registry().implementations("comm_cli_add_options")
    assert [impl.distribution for impl in impls if impl.plugin == "tls"] == ["comm-tls"]
    parsed = parse("ping", "tls://127.0.0.1:1", "--ca", "a.pem", "--no-check-hostname")
    assert (parsed.ca, parsed.no_check_hostname, parsed.cert) == ("a.pem", True, None)


def test_a_tls_client_without_options_trusts_the_systems_cas() -> None:
    [(key, security)] = args_for("ping", "tls://127.0.0.1:1").items()
    assert key == "security"
    assert isinstance(security, Security)
    assert (security.ca, security.cert, security.check_hostname) == (None, None, True)


def test_no_tls_options_for_tcp() -> None:
    assert args_for("ping", "tcp://127.0.0.1:1") == {}
    with pytest.raises(CLIError) as info:
        args_for("ping", "tcp://127.0.0.1:1", "--ca", "ca.pem", "--no-check-hostname")
    assert str(info.value) == (
        "--ca, --no-check-hostname: TLS options are for encrypted schemes such as tls://, and "
        "tcp:// does not use them"
    )


def test_temporary_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    with pytest.raises(CLIError, match="no credentials there"):
        args_for("ping", "tls://127.0.0.1:1", "--temporary-credentials", str(creds))
    notes: list[str] = []
    served = args_for(
        "serve", "tls://127.0.0.1:0", "--temporary-credentials", str(creds), server_side=True,
        notes=notes,
    )  # fmt: skip
    assert isinstance(served["security"], Security)
    assert sorted(p.name for p in creds.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    if sys.platform != "win32":
        assert (creds / "key.pem").stat().st_mode & 0o077 == 0
    assert notes == [
        f"temporary TLS credentials: {creds} (clients: --temporary-credentials {creds})"
    ]
    client = args_for("ping", "tls://127.0.0.1:1", "--temporary-credentials", str(creds))
    assert client["security"].ca == str(creds / "ca.pem")

    (creds / "cert.pem").unlink()
    with pytest.raises(CLIError, match=r"cert\.pem missing; delete the directory"):
        args_for("ping", "tls://127.0.0.1:1", "--temporary-credentials", str(creds))


@pytest.mark.parametrize(
    ("argv", "server_side", "message"),
    [
        (
            ["--temporary-credentials", "d", "--ca", "ca.pem"],
            False,
            "--temporary-credentials cannot be combined with --ca, --cert or --key",
        ),
        ([], True, "a tls:// listener needs a certificate"),
        (["--ca", "/nonexistent/ca.pem"], False, "--ca /nonexistent/ca.pem: no such file"),
    ],
    ids=["combined", "listener-without-certificate", "missing-file"],
)
def test_unusable_options(argv: list[str], server_side: bool, message: str) -> None:
    command = "serve" if server_side else "ping"
    with pytest.raises(CLIError) as info:
        args_for(command, "tls://127.0.0.1:0", *argv, server_side=server_side)
    assert str(info.value).startswith(message)


class Files:
    """PEM files in a temporary directory, for the TLS options: ``files.path("cert")``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        made = Security.temporary()
        other = Security.temporary()
        assert isinstance(made.ca, str)
        assert isinstance(made.cert, str)
        assert isinstance(made.key, str)
        assert isinstance(other.key, str)
        texts = {
            "ca": made.ca,
            "cert": made.cert,
            "key": made.key,
            "both": made.cert + made.key,
            "other-key": other.key,
            "not-pem": "hello\n",
        }
        for name, text in texts.items():
            (directory / f"{name}.pem").write_text(text, encoding="ascii")

    def path(self, name: str) -> str:
        return str(self.directory / f"{name}.pem")


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


def _refused(files: Files, command: str, *argv: str) -> str:
    """The message of the CLIError for *argv* (names of *files*, or flags) on *command*."""
    options = [a if a.startswith("--") or "/" in a or a == "." else files.path(a) for a in argv]
    parsed = parse(command, "tls" if command == "bench" else "tls://127.0.0.1:1", *options)
    with pytest.raises(CLIError) as info:
        connection_args(
            parsed,
            comm_core.get_backend("tls"),
            server_side=command in ("serve", "bench"),
            in_process=command == "bench",
        )
    return str(info.value)


@pytest.mark.parametrize("command", ["ping", "serve", "bench", "doctor"])
def test_key_without_cert(files: Files, command: str) -> None:
    assert _refused(files, command, "--key", "key") == (
        f"--key {files.path('key')} was given without --cert, the certificate it belongs to: "
        "pass --cert FILE too"
    )


@pytest.mark.parametrize("command", ["ping", "serve", "bench"])
def test_cert_without_key_holds_no_key(files: Files, command: str) -> None:
    assert _refused(files, command, "--cert", "cert", "--ca", "ca") == (
        f"--cert {files.path('cert')} holds no private key: pass its key with --key FILE"
    )


def test_cert_with_its_key_in_the_same_file_needs_no_key(files: Files) -> None:
    security = args_for("ping", "tls://127.0.0.1:1", "--cert", files.path("both"))["security"]
    assert security.cert == files.path("both")
    # A client with a certificate trusts the system's CAs unless --ca is given: it does
    # not need the CA that checks clients, which only a listener uses.
    assert security.ca is None


@pytest.mark.parametrize("flag", ["--ca", "--cert", "--key"])
def test_a_missing_file_is_named(files: Files, flag: str) -> None:
    argv = [flag, str(files.directory / "missing.pem")]
    if flag == "--key":
        argv += ["--cert", files.path("cert")]
    assert (
        _refused(files, "ping", *argv) == f"{flag} {files.directory / 'missing.pem'}: no such file"
    )


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file; no modes on Windows"
)
def test_an_unreadable_file_is_named(files: Files) -> None:
    os.chmod(files.path("key"), 0)
    assert _refused(files, "ping", "--cert", "cert", "--key", "key") == (
        f"--key {files.path('key')}: cannot read it: Permission denied"
    )


@pytest.mark.skipif(sys.platform == "win32", reason="the OS's words differ")
def test_a_file_that_cannot_be_opened_is_named(files: Files) -> None:
    inside_a_file = os.path.join(files.path("key"), "key.pem")
    assert _refused(files, "ping", "--cert", "cert", "--key", inside_a_file) == (
        f"--key {inside_a_file}: cannot read it: Not a directory"
    )


def test_a_directory_is_not_a_certificate(files: Files) -> None:
    assert _refused(files, "ping", "--cert", ".", "--key", "key") == (
        "--cert .: a directory, not a PEM file"
    )


def test_files_that_hold_the_wrong_thing(files: Files) -> None:
    assert _refused(files, "ping", "--cert", "not-pem", "--key", "key") == (
        f"--cert {files.path('not-pem')}: the file holds no PEM certificate (no "
        "'-----BEGIN CERTIFICATE-----' line); --cert takes this side's certificate chain in PEM"
    )
    assert _refused(files, "ping", "--cert", "key", "--key", "key") == (
        f"--cert {files.path('key')}: the file holds a private key (no "
        "'-----BEGIN CERTIFICATE-----' line); --cert takes this side's certificate chain in "
        "PEM, --key its private key"
    )
    assert _refused(files, "ping", "--cert", "cert", "--key", "cert") == (
        f"--key {files.path('cert')}: the file holds a certificate (no '-----BEGIN ... "
        "PRIVATE KEY-----' line); --key takes the private key of --cert, in PEM"
    )
    for name in ("not-pem", "key"):
        assert _refused(files, "ping", "--ca", name) == (
            f"--ca {files.path(name)}: the file holds no PEM certificate (no "
            "'-----BEGIN CERTIFICATE-----' line); --ca takes the CA certificate(s) that sign "
            "the peer's certificate, in PEM"
        )


def test_a_key_that_is_not_the_certificates(files: Files) -> None:
    message = _refused(files, "ping", "--cert", "cert", "--key", "other-key")
    assert message.startswith(
        f"--cert {files.path('cert')} and --key {files.path('other-key')}: the private key is "
        "not that of the certificate ("
    )
    assert message.endswith("); pass the key that belongs to --cert")


def test_a_mutual_tls_listener_needs_a_ca(files: Files) -> None:
    assert _refused(files, "serve", "--cert", "both") == (
        "a tls:// listener checks its clients' certificates (mutual TLS, the default) "
        "against the CA given with --ca FILE: pass --ca, or --no-client-cert to accept "
        "clients without a certificate"
    )
    assert _refused(files, "bench", "--cert", "both") == (
        "comm bench measures tls:// with --cert as the certificate of both sides, each "
        "checking the other's: pass --ca FILE too, the CA that signed it"
    )
    served = args_for(
        "serve", "tls://127.0.0.1:0", "--cert", files.path("both"), "--no-client-cert",
        server_side=True,
    )  # fmt: skip
    assert served["security"].require_client_cert is False


#: Words of Python that a user of the command cannot act on.
PYTHON_WORDS = ("Security(", "=...", "ssl_context", "require_client_cert", "minimum_version")


def test_no_message_of_the_options_speaks_python(files: Files) -> None:
    cases = [
        ("ping", "--key", "key"),
        ("ping", "--cert", "cert"),
        ("serve", "--cert", "both"),
        ("ping", "--cert", "cert", "--key", "other-key"),
        ("ping", "--ca", "not-pem"),
    ]
    for command, *argv in cases:
        message = _refused(files, command, *argv)
        assert not any(word in message for word in PYTHON_WORDS), message


def test_the_options_make_a_security_that_advises_in_their_words(files: Files) -> None:
    from comm_tls._errors import describe_failure, words_of

    security = args_for("ping", "tls://127.0.0.1:1", "--ca", files.path("ca"))["security"]
    assert words_of(security) == "cli"
    assert words_of(Security.temporary()) == "api"
    failures = [
        (_verification_error(20), "server", "pass the CA that signed it with --ca FILE"),
        (_verification_error(62), "server", "or pass --no-check-hostname"),
        (_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "server", "pass --cert FILE and --key"),
        (_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "client", "serve with --no-client-cert"),
        (_alert("SSLV3_ALERT_HANDSHAKE_FAILURE"), "server", "pass --cert FILE and --key"),
        (_alert("TLSV1_ALERT_PROTOCOL_VERSION"), "server", "both sides need TLS 1.2 or later"),
    ]
    for exc, peer, advice in failures:
        cli = describe_failure(exc, peer=peer, address="tls://h:1", words="cli")
        assert advice in cli
        assert not any(word in cli for word in PYTHON_WORDS), cli
        api = describe_failure(exc, peer=peer, address="tls://h:1")
        assert any(word in api for word in PYTHON_WORDS), api  # code is told in code


def _verification_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    exc.verify_message = "test"
    return exc


def _alert(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, reason)
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("exc", "hint"),
    [
        (_verification_error(20), "pass the CA that signed it with --ca FILE"),
        (_verification_error(18), "pass the CA that signed it with --ca FILE"),
        (_verification_error(62), "does not name 'example.org'"),
        (_verification_error(10), "renew the listener's certificate"),
        (_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "--cert FILE and --key FILE"),
        (_alert("TLSV1_ALERT_UNKNOWN_CA"), "use one signed by a CA in the listener's --ca"),
        (_alert("WRONG_VERSION_NUMBER"), "is it a tcp:// listener?"),
        (_alert("TLSV1_ALERT_PROTOCOL_VERSION"), "share no TLS version"),
        (_alert("SOMETHING_ELSE"), "check the TLS options of both sides"),
    ],
    ids=lambda v: getattr(v, "reason", None) or getattr(v, "verify_code", None) or "",
)
def test_handshake_hints_name_the_options(exc: ssl.SSLError, hint: str) -> None:
    assert hint in _handshake_hint(exc, "example.org")
