"""comm-tls's part of the ``comm`` command: the TLS options, and the TLS steps of ``comm doctor``.

Reached through the ``comm_cli_*`` hooks of :mod:`comm_tls._plugin`, as any
plugin's would be. Loaded whenever ``comm`` builds its parser, ``comm --help``
included, so ssl and comm-tls's heavy modules are imported only inside the
functions that need them (pathlib too: ``comm --help`` pays for every import here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comm_core import Capability
from comm_core.cli import TCP_CONNECT, CLIError, DoctorStep, Stage, StepFailed

if TYPE_CHECKING:
    import argparse
    import ssl
    from pathlib import Path

    from comm_core import Backend
    from comm_core.cli import DoctorContext, Parser
    from comm_tls._security import Security

__all__ = ["add_options", "connection_args", "doctor_steps"]

#: The files of ``--temporary-credentials DIR``.
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"

TITLE = "TLS options"
#: What the options are for, in the error for options given with another scheme.
APPLIES_TO = "encrypted schemes such as tls://"

_EXAMPLES = {
    "serve": """\
For tls:// (and other encrypted schemes). To try TLS out on one machine:
  comm serve tls://127.0.0.1:8786 --temporary-credentials ./creds
  comm ping tls://127.0.0.1:8786 --temporary-credentials ./creds""",
    "ping": """\
For tls:// (and other encrypted schemes), such as:
  comm ping tls://127.0.0.1:8786 --temporary-credentials ./creds""",
    "bench": """\
For tls:// (and other encrypted schemes). Measured in this process, tls://
uses throwaway credentials unless some are given:
  comm bench tls --duration 2""",
    "doctor": """\
For tls:// (and other encrypted schemes): the TLS options step checks them,
and the TLS handshake step says what to fix when the handshake fails.""",
}


def add_options(command: str, parser: Parser) -> None:
    """Add the TLS options to ``comm COMMAND``; ``serve`` has the listener's own."""
    server = command == "serve"
    group = parser.group(TITLE, _EXAMPLES.get(command), applies_to=APPLIES_TO)
    group.add_option(
        "--ca",
        metavar="FILE",
        help="the CA certificate(s) that sign the clients' certificates (PEM file, or a "
        "directory of them)"
        if server
        else "the CA certificate(s) that sign the listener's certificate (PEM file, or a "
        "directory of them); default: the system's CAs",
    )
    group.add_option(
        "--cert",
        metavar="FILE",
        help="this side's certificate chain (PEM); a listener needs one, and so does a "
        "client of a listener that asks for client certificates (the default)",
    )
    group.add_option(
        "--key", metavar="FILE", help="the private key of --cert, if the --cert file lacks it"
    )
    group.add_option(
        "--temporary-credentials",
        metavar="DIR",
        help="throwaway mutual-TLS credentials (a CA, and a certificate for this machine: "
        "localhost, its loopback and primary addresses, its host name) in DIR as "
        f"{CA_FILE}, {CERT_FILE}, {KEY_FILE}: `comm serve` makes them when DIR has none, "
        "other commands read them; to try TLS out, never for production",
    )
    if server:
        group.add_option(
            "--no-client-cert",
            action="store_true",
            help="accept clients without a certificate (default: mutual TLS)",
        )
    else:
        group.add_option(
            "--no-check-hostname",
            action="store_true",
            help="do not check that the listener's certificate names the host dialled (it "
            "is still checked against the CA)",
        )


class _Options:
    """The TLS options of one command, as parsed."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.ca: str | None = getattr(options, "ca", None)
        self.cert: str | None = getattr(options, "cert", None)
        self.key: str | None = getattr(options, "key", None)
        self.temporary_credentials: str | None = getattr(options, "temporary_credentials", None)
        self.check_hostname = not getattr(options, "no_check_hostname", False)
        self.require_client_cert = not getattr(options, "no_client_cert", False)

    @property
    def given(self) -> bool:
        """Whether any TLS option was given on the command line."""
        return (
            any(v is not None for v in (self.ca, self.cert, self.key, self.temporary_credentials))
            or not self.check_hostname
            or not self.require_client_cert
        )

    def security(self, *, server_side: bool, in_process: bool) -> Security:
        """A :class:`~comm_tls.Security` made of the options (a ``CommandLineSecurity``,
        whose errors speak of these options).

        Raises:
            CLIError: the options contradict each other, credentials are
                missing, or a file given cannot be read or used; the message
                names the option and the file.
        """
        from comm_tls._errors import TLSConfigurationError
        from comm_tls._security import CommandLineSecurity

        listens = server_side or in_process
        if self.temporary_credentials is not None:
            if self.ca or self.cert or self.key:
                raise CLIError(
                    "--temporary-credentials cannot be combined with --ca, --cert or --key"
                )
            return self._temporary(create=listens)
        if in_process and not self.given:
            return CommandLineSecurity.temporary()
        if self.key is not None and self.cert is None:
            raise CLIError(
                f"--key {self.key} was given without --cert, the certificate it belongs to: "
                "pass --cert FILE too"
            )
        if listens and self.cert is None:
            raise CLIError(
                "a tls:// listener needs a certificate: pass --cert FILE and --key FILE "
                "(and --ca FILE, the CA of the clients' certificates), or "
                "--temporary-credentials DIR to make throwaway ones"
            )
        ca = _read_pem("--ca", self.ca, directory_ok=True) if self.ca is not None else None
        if self.cert is not None:
            cert = _read_pem("--cert", self.cert)
            if _CERTIFICATE not in cert:
                what = "a private key" if _PRIVATE_KEY in cert else "no PEM certificate"
                raise CLIError(
                    f"--cert {self.cert}: the file holds {what} (no '{_CERTIFICATE}-----' "
                    "line); --cert takes this side's certificate chain in PEM"
                    + (", --key its private key" if _PRIVATE_KEY in cert else "")
                )
            if self.key is None and _PRIVATE_KEY not in cert:
                raise CLIError(
                    f"--cert {self.cert} holds no private key: pass its key with --key FILE"
                )
        if self.key is not None:
            key = _read_pem("--key", self.key)
            if _PRIVATE_KEY not in key:
                what = "a certificate" if _CERTIFICATE in key else "no PEM private key"
                raise CLIError(
                    f"--key {self.key}: the file holds {what} (no '-----BEGIN ... PRIVATE "
                    "KEY-----' line); --key takes the private key of --cert, in PEM"
                )
        if ca is not None and _CERTIFICATE not in ca:
            raise CLIError(
                f"--ca {self.ca}: the file holds no PEM certificate (no '{_CERTIFICATE}-----' "
                "line); --ca takes the CA certificate(s) that sign the peer's certificate, "
                "in PEM"
            )
        if listens and self.require_client_cert and self.ca is None:
            if in_process:
                raise CLIError(
                    "comm bench measures tls:// with --cert as the certificate of both sides, "
                    "each checking the other's: pass --ca FILE too, the CA that signed it"
                )
            raise CLIError(
                "a tls:// listener checks its clients' certificates (mutual TLS, the default) "
                "against the CA given with --ca FILE: pass --ca, or --no-client-cert to "
                "accept clients without a certificate"
            )
        try:
            return CommandLineSecurity(
                ca=self.ca,
                cert=self.cert,
                key=self.key,
                check_hostname=self.check_hostname,
                # A client does not check clients; a listener as its options say.
                require_client_cert=self.require_client_cert and listens,
            )
        except TLSConfigurationError as exc:
            raise CLIError(self._unusable(exc)) from exc

    def _unusable(self, exc: Exception) -> str:
        """The message for files that exist and look right but that OpenSSL refuses."""
        detail = _detail(exc)
        setting = getattr(exc, "setting", None)
        if setting == "ca":
            return f"--ca {self.ca}: cannot load the CA certificate(s): {detail}"
        if setting == "cert":
            files = f"--cert {self.cert}" + (f" and --key {self.key}" if self.key else "")
            if "KEY_VALUES_MISMATCH" in detail:
                return (
                    f"{files}: the private key is not that of the certificate ({detail}); "
                    "pass the key that belongs to --cert"
                )
            return f"{files}: cannot load the certificate and its key: {detail}"
        return f"TLS options: {exc}"

    def _temporary(self, *, create: bool) -> Security:
        from pathlib import Path

        from comm_tls._security import CommandLineSecurity

        directory = Path(self.temporary_credentials or ".")
        files = [directory / name for name in (CA_FILE, CERT_FILE, KEY_FILE)]
        present = [path.is_file() for path in files]
        if not any(present) and create:
            made = CommandLineSecurity.temporary(check_hostname=self.check_hostname)
            assert isinstance(made.ca, str)
            assert isinstance(made.cert, str)
            assert isinstance(made.key, str)
            _write_credentials(directory, made.ca, made.cert, made.key)
            return made
        if not all(present):
            missing = ", ".join(p.name for p, ok in zip(files, present, strict=True) if not ok)
            if any(present):
                raise CLIError(
                    f"--temporary-credentials {directory}: {missing} missing; delete the "
                    "directory to make new credentials"
                )
            raise CLIError(
                f"--temporary-credentials {directory}: no credentials there ({missing}); "
                f"`comm serve tls://127.0.0.1:8786 --temporary-credentials {directory}` "
                "makes them, and clients given the same directory use them"
            )
        from comm_tls._errors import TLSConfigurationError

        ca, cert, key = (str(path) for path in files)
        for path in (ca, cert, key):
            _read_pem("--temporary-credentials", path)
        try:
            return CommandLineSecurity(
                ca=ca, cert=cert, key=key, check_hostname=self.check_hostname
            )
        except TLSConfigurationError as exc:
            raise CLIError(
                f"--temporary-credentials {directory}: the credentials there cannot be used: "
                f"{_detail(exc)}; delete the directory to make new ones"
            ) from exc


def _detail(exc: Exception) -> str:
    """OpenSSL's (or the OS's) words for why comm-tls could not use a file."""
    from comm_tls._errors import ssl_detail

    cause = exc.__cause__
    return ssl_detail(cause) if cause is not None else str(exc)


#: What the first line of a PEM certificate, and of a PEM private key, hold.
_CERTIFICATE = "-----BEGIN CERTIFICATE"
_PRIVATE_KEY = "PRIVATE KEY-----"


def _read_pem(flag: str, path: str, *, directory_ok: bool = False) -> str:
    """The text of the file *path* given to *flag* ("" for a directory, if *directory_ok*).

    Raises:
        CLIError: the file does not exist, is a directory, or cannot be read;
            naming *flag* and *path*.
    """
    if os.path.isdir(path):
        if directory_ok:
            return _CERTIFICATE  # a directory of CA certificates: OpenSSL reads it
        raise CLIError(f"{flag} {path}: a directory, not a PEM file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CLIError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise CLIError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from exc
    return data.decode("ascii", "replace")


def _write_credentials(directory: Path, ca: str, cert: str, key: str) -> None:
    """Write PEM text to *directory* (made private); the key is readable by its owner only."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = [(CA_FILE, ca, 0o644), (CERT_FILE, cert, 0o644), (KEY_FILE, key, 0o600)]
        for name, text, mode in files:
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(text)
    except OSError as exc:
        raise CLIError(
            f"--temporary-credentials {directory}: cannot write the credentials: {exc}"
        ) from exc


def connection_args(
    scheme: str,
    backend: Backend,
    options: argparse.Namespace,
    server_side: bool,
    in_process: bool,
    notes: list[str],
) -> Mapping[str, Any] | None:
    """``{"security": Security(...)}`` for tls://, and for other encrypted schemes if asked.

    ``None`` (not ours) for a backend that does not encrypt. Another
    distribution's encrypted transport is configured its own way unless TLS
    options are given.

    Raises:
        CLIError: the options cannot make a :class:`~comm_tls.Security`.
    """
    if Capability.ENCRYPTED not in backend.capabilities:
        return None
    tls = _Options(options)
    if scheme != "tls" and not tls.given:
        return {}  # a third party's encrypted transport, configured its own way
    security = tls.security(server_side=server_side, in_process=in_process)
    if server_side and not in_process and tls.temporary_credentials:
        directory = tls.temporary_credentials
        notes.append(
            f"temporary TLS credentials: {directory} (clients: --temporary-credentials {directory})"
        )
    return {"security": security}


# -- comm doctor ---------------------------------------------------------------------------


def _check_options(context: DoctorContext) -> str:
    try:
        context.connection_args()
    except CLIError as exc:
        raise StepFailed(
            str(exc),
            "check the files given to --ca, --cert and --key (PEM), or --temporary-credentials DIR",
        ) from exc
    if context.scheme == "tls":
        context.serve_options.append("--temporary-credentials DIR")
    tls = _Options(context.options)
    if tls.temporary_credentials:
        return f"temporary credentials from {tls.temporary_credentials}"
    parts = [f"CA {tls.ca}" if tls.ca else "the system's CAs"]
    parts.append(f"certificate {tls.cert}" if tls.cert else "no client certificate")
    if not tls.check_hostname:
        parts.append("host name not checked")
    return ", ".join(parts)


def _handshake_hint(exc: ssl.SSLError, host: str | None) -> str:
    """What to do about a failed handshake, in terms of the command's options."""
    import ssl

    from comm_tls import _errors

    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _errors._UNKNOWN_ISSUER or code == _errors._SELF_SIGNED:
            return (
                "the listener's certificate is not signed by the CA you trust: pass the CA "
                "that signed it with --ca FILE (or the listener's --temporary-credentials DIR)"
            )
        if code in _errors._NAME_MISMATCH:
            return (
                f"the listener's certificate does not name {host!r}: dial a host name "
                "or address it lists, or pass --no-check-hostname"
            )
        if code in {_errors._EXPIRED, _errors._NOT_YET_VALID}:
            return "renew the listener's certificate, and check both machines' clocks"
        return "check the listener's certificate against the CA given with --ca"
    reason = exc.reason or ""
    if reason in _errors._NO_CERTIFICATE:
        return (
            "the listener requires a client certificate (mutual TLS): pass --cert FILE and "
            "--key FILE, signed by a CA the listener trusts"
        )
    if reason == "TLSV1_ALERT_UNKNOWN_CA" or reason in _errors._REJECTED_CERTIFICATE:
        return (
            "the listener does not trust this side's certificate: use one signed by a CA in "
            "the listener's --ca"
        )
    if reason in _errors._NOT_TLS:
        return "the listener does not speak TLS: is it a tcp:// listener? dial it with tcp://"
    if reason in _errors._NO_COMMON_VERSION:
        return "the two sides share no TLS version; both need TLS 1.2 or later"
    return "check the TLS options of both sides"


def _check_handshake(context: DoctorContext) -> str:
    import ssl  # here: only a tls:// diagnosis needs it

    security = context.connection_args().get("security")
    sock, context.sock = context.sock, None
    if sock is None:
        raise StepFailed("no TCP connection to run TLS on", "check the steps above")
    if security is None:
        sock.close()
        raise StepFailed("no TLS configuration", "pass --ca (and --cert, --key)")
    client_context: ssl.SSLContext = security.client_context
    try:
        tls = client_context.wrap_socket(sock, server_hostname=context.host)
    except ssl.SSLError as exc:
        sock.close()
        detail = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else None
        text = f"certificate verify failed: {detail}" if detail else (exc.reason or str(exc))
        raise StepFailed(
            f"TLS handshake failed: {text}", _handshake_hint(exc, context.host)
        ) from exc
    except OSError as exc:
        sock.close()
        raise StepFailed(
            f"the connection failed during the TLS handshake: {exc.strerror or exc}",
            "is the listener a tls:// endpoint, and does it accept this side's certificate?",
        ) from exc
    try:
        # With TLS 1.3 a listener that rejects this side's certificate says so after the
        # handshake; a listener that accepts it sends the comm preamble.
        tls.settimeout(min(context.timeout, 2.0))
        try:
            tls.recv(1)
        except ssl.SSLError as exc:
            raise StepFailed(
                f"the listener rejected the TLS session: {exc.reason or exc}",
                _handshake_hint(exc, context.host),
            ) from exc
        except OSError:
            pass  # nothing yet, or the peer closed: the comm handshake step will tell
        version = tls.version() or "TLS"
        cipher = (tls.cipher() or ("?",))[0]
        subject: Any = (tls.getpeercert() or {}).get("subject", ())
        name = next((v for rdn in subject for k, v in rdn if k == "commonName"), None)
        return f"{version}, {cipher}" + (f", server certificate {name!r}" if name else "")
    finally:
        tls.close()


TLS_OPTIONS = DoctorStep("TLS options", _check_options, Stage.OPTIONS)
TLS_HANDSHAKE = DoctorStep("TLS handshake", _check_handshake, Stage.SECURE)


def doctor_steps(scheme: str, backend: Backend) -> list[DoctorStep]:
    """The TLS options for any encrypted backend; the TCP connection and TLS handshake for tls://."""
    steps = []
    if Capability.ENCRYPTED in backend.capabilities:
        steps.append(TLS_OPTIONS)
    if scheme == "tls":
        steps += [TCP_CONNECT, TLS_HANDSHAKE]
    return steps
