"""comm-tls's part of the ``comm`` command, through the hooks of its installed plugin.

The commands themselves (serve, ping, doctor over real TLS) run as subprocesses
in the root ``tests/test_cli.py``; here the parser is built in this process and
the TLS options are turned into connection arguments, as ``comm`` does.
"""

from __future__ import annotations

import argparse
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
        (["--ca", "/nonexistent/ca.pem"], False, "TLS options: "),
    ],
    ids=["combined", "listener-without-certificate", "missing-file"],
)
def test_unusable_options(argv: list[str], server_side: bool, message: str) -> None:
    command = "serve" if server_side else "ping"
    with pytest.raises(CLIError) as info:
        args_for(command, "tls://127.0.0.1:0", *argv, server_side=server_side)
    assert str(info.value).startswith(message)


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
