"""``comm doctor ADDRESS``: each step of reaching an address, checked, with what to fix."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import comm_core
from comm_core._addressing import parse_address, unparse_address, unparse_host_port
from comm_core._registry import get_registry
from comm_core._text import peer_text
from comm_core.abc import Backend, Capability
from comm_core.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    CLIError,
    Style,
    TLSOptions,
    add_tls_options,
    positive_float,
    unicode_ok,
)
from comm_core.exceptions import (
    AddressError,
    BackendConflictError,
    CommError,
    ConnectTimeoutError,
    FatalCommClosedError,
    HandshakeError,
    IncompatibleProtocolError,
    PluginError,
    ProtocolError,
    UnknownSchemeError,
)

if TYPE_CHECKING:
    import ssl

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Check, one step at a time, what connecting to ADDRESS takes: parsing the
address, finding its transport, resolving the host name, the TCP connection
(tcp://, tls://), the TLS handshake (tls://, with the TLS options given), and
the comm handshake. Prints one line per step and, when a step fails, what to do.
"""

EPILOG = """\
exit status:
  0  every step passed: a comm endpoint answers at ADDRESS
  1  a step failed
  2  usage errors
"""

#: Schemes whose transport is a TCP connection (tls: with TLS on it).
TCP_SCHEMES = frozenset({"tcp", "tls"})

# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code).
_UNKNOWN_ISSUER = frozenset({2, 19, 20, 21})
_SELF_SIGNED = 18
_EXPIRED = 10
_NOT_YET_VALID = 9
_NAME_MISMATCH = frozenset({62, 64})


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="diagnose connecting to an address",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDRESS", help="the address, such as tcp://host:8786")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="T",
        help="seconds allowed for each network step (default: %(default)s)",
    )
    parser.add_argument(
        "--ascii", action="store_true", help="mark steps with ok/FAIL instead of ✓/✗"
    )
    add_tls_options(parser)
    parser.set_defaults(run=run)


class StepFailed(Exception):
    """A step failed: *detail* says what happened, *hint* what to do."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


@dataclass
class _State:
    """What the steps learn, for the steps after them."""

    given: str
    address: str = ""
    scheme: str = ""
    loc: str = ""
    backend: Backend | None = None
    host: str = ""
    port: int = 0
    sockaddrs: tuple[Any, ...] = ()
    sock: socket.socket | None = None
    connection_args: dict[str, Any] | None = None


class _Report:
    def __init__(self, ascii_only: bool) -> None:
        self.style = Style(sys.stdout)
        if ascii_only or not unicode_ok(sys.stdout, "✓✗→"):
            self.marks = {"ok": "ok  ", "fail": "FAIL", "skip": "--  "}
            self.arrow = "->"
        else:
            self.marks = {"ok": "✓", "fail": "✗", "skip": "-"}
            self.arrow = "→"
        self.width = 16

    def line(self, outcome: str, name: str, detail: str) -> None:
        mark = self.marks[outcome]
        if outcome == "ok":
            mark = self.style.green(mark)
        elif outcome == "fail":
            mark = self.style.red(mark)
        else:
            mark = self.style.dim(mark)
        print(f"  {mark} {name.ljust(self.width)} {detail}".rstrip(), flush=True)


def run(args: argparse.Namespace) -> int:
    report = _Report(args.ascii)
    state = _State(args.address)
    steps: list[tuple[str, Callable[[_State, argparse.Namespace, _Report], str]]] = [
        ("address", _step_address),
        ("backend", _step_backend),
    ]
    print(f"comm doctor {args.address}", flush=True)
    try:
        failed = _run_steps(steps, state, args, report)
        if failed is None:
            steps = _network_steps(state)
            failed = _run_steps(steps, state, args, report)
    finally:
        if state.sock is not None:
            state.sock.close()
    print()
    if failed is None:
        print(f"{state.address} is healthy: a comm endpoint answered the comm handshake.")
        return EXIT_OK
    name, exc = failed
    print(f"The {name} step failed. What to do: {exc.hint}", flush=True)
    return EXIT_FAILURE


def _run_steps(
    steps: list[tuple[str, Callable[[_State, argparse.Namespace, _Report], str]]],
    state: _State,
    args: argparse.Namespace,
    report: _Report,
) -> tuple[str, StepFailed] | None:
    for i, (name, step) in enumerate(steps):
        try:
            detail = step(state, args, report)
        except StepFailed as exc:
            report.line("fail", name, exc.detail)
            for later, _ in steps[i + 1 :]:
                report.line("skip", later, "skipped")
            return name, exc
        report.line("ok", name, detail)
    return None


def _network_steps(
    state: _State,
) -> list[tuple[str, Callable[[_State, argparse.Namespace, _Report], str]]]:
    steps: list[tuple[str, Callable[[_State, argparse.Namespace, _Report], str]]] = []
    backend = state.backend
    assert backend is not None
    if Capability.ENCRYPTED in backend.capabilities:
        steps.append(("TLS options", _step_tls_options))
    try:
        state.host, state.port = backend.get_address_host_port(state.loc)
    except AddressError:
        pass  # no host and port: name resolution and TCP do not apply
    else:
        steps.append(("name resolution", _step_resolve))
        if state.scheme in TCP_SCHEMES:
            steps.append(("TCP connect", _step_tcp))
        if state.scheme == "tls":
            steps.append(("TLS handshake", _step_tls))
    steps.append(("comm handshake", _step_comm))
    return steps


# -- the steps: each returns a detail for its line, or raises StepFailed ------------------


def _step_address(state: _State, args: argparse.Namespace, report: _Report) -> str:
    try:
        state.scheme, state.loc = parse_address(state.given)
        state.address = unparse_address(state.scheme, state.loc)
    except AddressError as exc:
        raise StepFailed(
            str(exc), "write the address as scheme://location, such as tcp://127.0.0.1:8786"
        ) from exc
    try:  # the location's form is the backend's: check it if the backend is there
        backend = get_registry().get_backend(state.scheme)
    except CommError:
        backend = None  # the next step says why
    if backend is not None:
        try:
            backend.get_address_host(state.loc)
            if state.scheme in TCP_SCHEMES:
                backend.get_address_host_port(state.loc)
        except AddressError as exc:
            raise StepFailed(
                str(exc),
                f"write the address as {state.scheme}://host:port, such as "
                f"{state.scheme}://127.0.0.1:8786 or {state.scheme}://[::1]:8786",
            ) from exc
    if "://" not in state.given:
        return f"{state.address} (no scheme given: {state.scheme}:// assumed)"
    return state.address


def _step_backend(state: _State, args: argparse.Namespace, report: _Report) -> str:
    registry = get_registry()
    try:
        state.backend = registry.get_backend(state.scheme, address=state.address)
        info = registry.backends()[state.scheme]
    except UnknownSchemeError as exc:
        known = ", ".join(exc.known) or "none"
        raise StepFailed(
            f"no installed transport serves {state.scheme}:// (installed: {known})",
            f"install the distribution that provides {state.scheme}://, such as "
            f"`pip install comm-{state.scheme}`, or use an installed scheme; "
            "`comm backends` lists them",
        ) from exc
    except BackendConflictError as exc:
        raise StepFailed(
            str(exc), "uninstall all but one of them; `comm backends` shows who claims what"
        ) from exc
    except PluginError as exc:
        raise StepFailed(
            str(exc), "reinstall or uninstall the distribution whose plugin is broken"
        ) from exc
    origin = f"{info.distribution} {info.version}" if info.distribution else "registered in code"
    caps = ", ".join(sorted(info.capabilities))
    return f"{state.scheme}:// from {origin}" + (f" ({caps})" if caps else "")


def _step_tls_options(state: _State, args: argparse.Namespace, report: _Report) -> str:
    assert state.backend is not None
    tls = TLSOptions.from_args(args)
    try:
        state.connection_args = tls.connection_args(state.backend, server_side=False)
    except CLIError as exc:
        raise StepFailed(
            str(exc),
            "check the files given to --ca, --cert and --key (PEM), or --temporary-credentials DIR",
        ) from exc
    if tls.temporary_credentials:
        return f"temporary credentials from {tls.temporary_credentials}"
    parts = [f"CA {tls.ca}" if tls.ca else "the system's CAs"]
    parts.append(f"certificate {tls.cert}" if tls.cert else "no client certificate")
    if not tls.check_hostname:
        parts.append("host name not checked")
    return ", ".join(parts)


def _step_resolve(state: _State, args: argparse.Namespace, report: _Report) -> str:
    host, port = state.host, state.port
    where = unparse_host_port(host, port)
    if host in {"", "0.0.0.0", "::"} or port == 0:
        raise StepFailed(
            f"{state.address} names no concrete host and port (it is for listening)",
            "use the contact address that the listener prints (`comm serve` prints it)",
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror
        raise StepFailed(
            f"cannot resolve {host!r}: {exc.strerror or exc}",
            f"check the host name in {state.address} (a typo? no DNS here?), or use an IP address",
        ) from exc
    state.sockaddrs = tuple(dict.fromkeys((family, sockaddr) for family, *_, sockaddr in infos))
    ips = ", ".join(str(sockaddr[0]) for _, sockaddr in state.sockaddrs)
    return f"{where} {report.arrow} {ips}"


def _step_tcp(state: _State, args: argparse.Namespace, report: _Report) -> str:
    where = unparse_host_port(state.host, state.port)
    errors: list[OSError] = []
    for family, sockaddr in state.sockaddrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(args.timeout)
        start = time.perf_counter()
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        elapsed = time.perf_counter() - start
        state.sock = sock
        return f"connected to {unparse_host_port(str(sockaddr[0]), state.port)} in " + (
            f"{elapsed * 1e3:.2f} ms"
        )
    error = errors[0]
    serve = f"comm serve {state.scheme}://{where}"
    if state.scheme == "tls":
        serve += " --temporary-credentials DIR"
    if isinstance(error, ConnectionRefusedError):
        raise StepFailed(
            f"connection refused by {where}",
            f"connection refused: is a listener running on {where}? start one with `{serve}`",
        ) from error
    if isinstance(error, TimeoutError):
        raise StepFailed(
            f"no answer from {where} within {args.timeout:g} s",
            "the host may be down, or a firewall may drop the packets; check the address, "
            "and that the port is open",
        ) from error
    if error.errno in {errno.EHOSTUNREACH, errno.ENETUNREACH}:
        raise StepFailed(
            f"cannot reach {where}: {error.strerror}",
            "check the host's address and this machine's network route to it",
        ) from error
    raise StepFailed(
        f"cannot connect to {where}: {error.strerror or error}",
        "check the address, and that a listener is running there",
    ) from error


def _tls_hint(exc: ssl.SSLError, state: _State) -> str:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code in _UNKNOWN_ISSUER or code == _SELF_SIGNED:
            return (
                "the listener's certificate is not signed by the CA you trust: pass the CA "
                "that signed it with --ca FILE (or the listener's --temporary-credentials DIR)"
            )
        if code in _NAME_MISMATCH:
            return (
                f"the listener's certificate does not name {state.host!r}: dial a host name "
                "or address it lists, or pass --no-check-hostname"
            )
        if code in {_EXPIRED, _NOT_YET_VALID}:
            return "renew the listener's certificate, and check both machines' clocks"
        return "check the listener's certificate against the CA given with --ca"
    reason = exc.reason or ""
    if "CERTIFICATE_REQUIRED" in reason or "PEER_DID_NOT_RETURN" in reason:
        return (
            "the listener requires a client certificate (mutual TLS): pass --cert FILE and "
            "--key FILE, signed by a CA the listener trusts"
        )
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return (
            "the listener does not trust this side's certificate: use one signed by a CA in "
            "the listener's --ca"
        )
    if "WRONG_VERSION_NUMBER" in reason or "UNKNOWN_PROTOCOL" in reason or "RECORD" in reason:
        return "the listener does not speak TLS: is it a tcp:// listener? dial it with tcp://"
    if "VERSION" in reason:
        return "the two sides share no TLS version; both need TLS 1.2 or later"
    return "check the TLS options of both sides"


def _step_tls(state: _State, args: argparse.Namespace, report: _Report) -> str:
    import ssl  # here: only tls:// addresses need it

    assert state.sock is not None
    security = (state.connection_args or {}).get("security")
    if security is None:
        raise StepFailed("no TLS configuration", "pass --ca (and --cert, --key)")
    context: ssl.SSLContext = security.client_context
    sock, state.sock = state.sock, None
    try:
        tls = context.wrap_socket(sock, server_hostname=state.host)
    except ssl.SSLError as exc:
        sock.close()
        detail = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else None
        text = f"certificate verify failed: {detail}" if detail else (exc.reason or str(exc))
        raise StepFailed(f"TLS handshake failed: {text}", _tls_hint(exc, state)) from exc
    except OSError as exc:
        sock.close()
        raise StepFailed(
            f"the connection failed during the TLS handshake: {exc.strerror or exc}",
            "is the listener a tls:// endpoint, and does it accept this side's certificate?",
        ) from exc
    try:
        # With TLS 1.3 a listener that rejects this side's certificate says so after the
        # handshake; a listener that accepts it sends the comm preamble.
        tls.settimeout(min(args.timeout, 2.0))
        try:
            tls.recv(1)
        except ssl.SSLError as exc:
            raise StepFailed(
                f"the listener rejected the TLS session: {exc.reason or exc}",
                _tls_hint(exc, state),
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


def _step_comm(state: _State, args: argparse.Namespace, report: _Report) -> str:
    import asyncio  # here: the steps before this one need no event loop

    if state.sock is not None:  # tcp:// : the probe connection is no longer needed
        state.sock.close()
        state.sock = None
    connection_args = state.connection_args or {}
    try:
        return asyncio.run(_comm_handshake(state.address, args.timeout, connection_args))
    except IncompatibleProtocolError as exc:
        raise StepFailed(str(exc), "run the same comm protocol version on both sides") from exc
    except HandshakeError as exc:
        raise StepFailed(
            str(exc), "something other than a comm endpoint listens there; check the port"
        ) from exc
    except FatalCommClosedError as exc:
        raise StepFailed(str(exc), "see the message: it says what to fix") from exc
    except ConnectTimeoutError as exc:
        hint = f"is a comm listener running there? `comm serve {state.address}` starts one"
        if state.scheme == "inproc":
            hint = (
                "inproc:// addresses reach listeners in the same process only, and "
                "`comm doctor` runs in a process of its own"
            )
        raise StepFailed(str(exc), hint) from exc
    except ProtocolError as exc:
        raise StepFailed(
            str(exc),
            f"something other than a {state.scheme}:// comm endpoint answers there; the "
            "message says what it looks like",
        ) from exc
    except CommError as exc:
        hint = "check the address, and that a comm listener runs there"
        raise StepFailed(str(exc), hint) from exc


async def _comm_handshake(address: str, timeout: float, connection_args: dict[str, Any]) -> str:
    start = time.perf_counter()
    comm = await comm_core.connect(
        address, timeout=timeout, handshake_timeout=timeout, **connection_args
    )
    elapsed = time.perf_counter() - start
    async with comm:
        info = comm.handshake_info
        return (
            f"{peer_text(info.get('library', '?'), 60, bare=True)} "
            f"{peer_text(info.get('version', '?'), 60, bare=True)} (protocol "
            f"{peer_text(info.get('protocol', '?'), 30, bare=True)}) answered in "
            f"{elapsed * 1e3:.2f} ms"
        )
