"""``comm doctor ADDRESS``: each step of reaching an address, checked, with what to fix.

comm's own steps are the generic ones: the address, its backend, the name
resolution of a host:port address, and the comm handshake. Transports add
theirs through the ``comm_cli_doctor_steps`` hook: comm-tcp the TCP connection
(:data:`TCP_CONNECT`), other plugins the checks only they know how to make.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import comm_core
from comm_core._addressing import parse_address, unparse_address, unparse_host_port
from comm_core._record import Record
from comm_core._registry import get_registry, scheme_advice
from comm_core._text import peer_text
from comm_core.abc import Backend, Capability
from comm_core.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    CLIError,
    Style,
    positive_float,
    unicode_ok,
)
from comm_core.cli._plugins import ConnectionArgs, resolve_connection_args
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

__all__ = [
    "TCP_CONNECT",
    "DoctorContext",
    "DoctorStep",
    "Stage",
    "StepFailed",
    "add_parser",
    "run",
]

DESCRIPTION = """\
Check, one step at a time, what connecting to ADDRESS takes: parsing the
address, finding its transport, resolving the host name, then what the
transport adds (its options, its connection, its own handshake), and the comm
handshake. Prints one line per step and, when a step fails, what to do.
"""

EPILOG = """\
exit status:
  0  every step passed: a comm endpoint answers at ADDRESS
  1  a step failed
  2  usage errors
"""


class Stage:
    """Where a :class:`DoctorStep` runs; comm's own steps are at ``RESOLVE`` and ``HANDSHAKE``.

    Every step runs after the address is parsed and its backend found. Steps
    are run by stage, then in the order the plugins gave them; comm's name
    resolution runs first in its stage, its comm handshake first in its own.
    """

    #: Check what the options give (certificates, keys, tokens), before the network.
    OPTIONS: Final = 300
    #: comm's name resolution of a host:port address.
    RESOLVE: Final = 400
    #: Open the transport's connection, such as :data:`TCP_CONNECT`.
    CONNECT: Final = 500
    #: The handshakes the transport runs on its connection (an encryption layer's, say).
    SECURE: Final = 600
    #: comm's comm handshake, through :func:`comm_core.connect`.
    HANDSHAKE: Final = 900


class StepFailed(Exception):
    """A step failed: *detail* says what happened (its line), *hint* what to do."""

    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


class DoctorStep(Record):
    """One step of ``comm doctor``: *name* on its line, *check* run at *stage*.

    *check* receives the :class:`DoctorContext` and returns the detail for its
    line (or ``None`` to print no line, for a step that has nothing to say),
    or raises :class:`StepFailed` with what happened and what to fix. Steps are
    compared by value, so that a step two plugins give runs once.
    """

    __slots__ = ("name", "check", "stage")  # noqa: RUF023 (field order)

    #: The label of the step's line, such as ``"TCP connect"``.
    name: str
    #: ``check(context) -> str | None``; raises :class:`StepFailed`.
    check: Callable[[DoctorContext], str | None]
    #: When the step runs: a :class:`Stage` value.
    stage: int

    def __init__(self, name: str, check: Callable[[DoctorContext], str | None], stage: int) -> None:
        self._assign(name=name, check=check, stage=stage)


class DoctorContext:
    """What the steps of one ``comm doctor`` run know, and learn for the steps after them."""

    def __init__(self, given: str, options: argparse.Namespace, arrow: str) -> None:
        #: The address as given on the command line.
        self.given = given
        #: The parsed command line (plugins' options are attributes, by ``dest``).
        self.options = options
        #: Seconds allowed for each network step.
        self.timeout: float = options.timeout
        #: ``"→"``, or ``"->"`` where the output is ASCII.
        self.arrow = arrow
        #: The address with its scheme (``tcp://127.0.0.1:8786``).
        self.address = ""
        #: The scheme, and the location (the address without ``scheme://``).
        self.scheme = ""
        self.location = ""
        #: The address's backend, once found.
        self.backend: Backend | None = None
        #: Host and port, for a backend with host:port addresses; else ``None``.
        self.host: str | None = None
        self.port: int | None = None
        #: ``(family, sockaddr)`` of each address the host name resolved to.
        self.sockaddrs: tuple[tuple[int, Any], ...] = ()
        #: A connection that a step opened for the steps after it (:data:`TCP_CONNECT`
        #: leaves its socket here); a step that takes it sets this to ``None`` and
        #: closes it. ``comm doctor`` closes what is left before the comm handshake.
        self.sock: socket.socket | None = None
        #: Options of ``comm serve`` that a listener for this address needs, for hints
        #: (a step may add some, such as ``--temporary-credentials DIR``).
        self.serve_options: list[str] = []
        self._connection_args: ConnectionArgs | None = None

    def serve_command(self) -> str:
        """The ``comm serve`` command that would listen at this address."""
        return " ".join(["comm serve", self.address, *self.serve_options])

    def _resolve(self) -> ConnectionArgs:
        if self._connection_args is None:
            assert self.backend is not None
            self._connection_args = resolve_connection_args(
                self.options, self.backend, server_side=False
            )
        return self._connection_args

    def connection_args(self) -> dict[str, Any]:
        """The connection arguments the plugins make of the options, for ``connect()``.

        Made on first call (each plugin's ``comm_cli_connection_args`` hook,
        as for ``comm ping``).

        Raises:
            CLIError: a plugin cannot use its options; the message says why.
            PluginError: a plugin failed.
        """
        resolved = self._resolve()
        if resolved.failure is not None:
            raise resolved.failure
        return dict(resolved.values)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
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
    parser.set_defaults(run=run)
    return parser


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
    context = DoctorContext(args.address, args, report.arrow)
    print(f"comm doctor {args.address}", flush=True)
    try:
        failed = _run_steps([ADDRESS, BACKEND], context, report)
        if failed is None:
            try:
                steps = _later_steps(context)
            except PluginError as error:
                report.line("fail", "plugins", str(error))
                hint = "reinstall or uninstall the distribution whose plugin is broken"
                failed = "plugins", StepFailed(str(error), hint)
            else:
                failed = _run_steps(steps, context, report)
    finally:
        if context.sock is not None:
            context.sock.close()
    print()
    if failed is None:
        print(f"{context.address} is healthy: a comm endpoint answered the comm handshake.")
        return EXIT_OK
    name, exc = failed
    print(f"The {name} step failed. What to do: {exc.hint}", flush=True)
    return EXIT_FAILURE


def _run_steps(
    steps: Sequence[DoctorStep], context: DoctorContext, report: _Report
) -> tuple[str, StepFailed] | None:
    for i, step in enumerate(steps):
        try:
            detail = step.check(context)
        except StepFailed as exc:
            report.line("fail", step.name, exc.detail)
            for later in steps[i + 1 :]:
                if later is not _OPTIONS:  # it prints a line only when it fails
                    report.line("skip", later.name, "skipped")
            return step.name, exc
        if detail is not None:
            report.line("ok", step.name, detail)
    return None


def _takes_ports(backend: Backend) -> bool:
    """Whether *backend*'s addresses have ports (it overrides ``get_address_host_port``)."""
    return type(backend).get_address_host_port is not Backend.get_address_host_port


def _later_steps(context: DoctorContext) -> list[DoctorStep]:
    """comm's steps after the backend's, and the plugins', in the order they run.

    Raises:
        PluginError: a plugin's ``comm_cli_doctor_steps`` failed or returned
            something else than steps.
    """
    backend = context.backend
    assert backend is not None
    # (stage, place in the stage, step): comm's name resolution first in its stage, its
    # options check last in its own (after the plugins' checks of their options).
    ordered: list[tuple[int, float, DoctorStep]] = [
        (Stage.OPTIONS, float("inf"), _OPTIONS),
        (Stage.HANDSHAKE, -1, COMM_HANDSHAKE),
    ]
    if context.port is not None:
        ordered.append((Stage.RESOLVE, -1, RESOLVE))
    seen: set[DoctorStep] = set()
    for impl in get_registry().implementations("comm_cli_doctor_steps"):
        try:
            steps = impl.call(scheme=context.scheme, backend=backend, options=context.options)
        except Exception as exc:
            raise PluginError(
                f"{impl.describe()} failed in comm_cli_doctor_steps(): {type(exc).__name__}: {exc}"
            ) from exc
        for step in steps or ():
            if not isinstance(step, DoctorStep):
                raise PluginError(
                    f"{impl.describe()} returned {step!r:.60} from comm_cli_doctor_steps(); "
                    "expected comm_core.cli.DoctorStep objects"
                )
            if step not in seen:
                seen.add(step)
                ordered.append((step.stage, len(ordered), step))
    ordered.sort(key=lambda item: (item[0], item[1]))
    return [step for _, _, step in ordered]


# -- comm's steps: each returns a detail for its line, or raises StepFailed --------------------


def _step_address(context: DoctorContext) -> str:
    try:
        context.scheme, context.location = parse_address(context.given)
        context.address = unparse_address(context.scheme, context.location)
    except AddressError as exc:
        raise StepFailed(
            str(exc), "write the address as scheme://location, such as tcp://127.0.0.1:8786"
        ) from exc
    try:  # the location's form is the backend's: check it if the backend is there
        backend = get_registry().get_backend(context.scheme)
    except CommError:
        backend = None  # the next step says why
    if backend is not None:
        scheme = context.scheme
        try:
            backend.get_address_host(context.location)
            if _takes_ports(backend):
                context.host, context.port = backend.get_address_host_port(context.location)
        except AddressError as exc:
            raise StepFailed(
                str(exc),
                f"write the address as {scheme}://host:port, such as "
                f"{scheme}://127.0.0.1:8786 or {scheme}://[::1]:8786",
            ) from exc
    if "://" not in context.given:
        return f"{context.address} (no scheme given: {context.scheme}:// assumed)"
    return context.address


def _step_backend(context: DoctorContext) -> str:
    registry = get_registry()
    scheme = context.scheme
    try:
        context.backend = registry.get_backend(scheme, address=context.address)
        info = registry.backends()[scheme]
    except UnknownSchemeError as exc:
        known = ", ".join(exc.known) or "none"
        raise StepFailed(
            f"no installed transport serves {scheme}:// (installed: {known})",
            f"{scheme_advice(scheme, exc.known)} (`comm backends` lists the installed transports)",
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
    return f"{scheme}:// from {origin}" + (f" ({caps})" if caps else "")


def _step_options(context: DoctorContext) -> str | None:
    """Options given that no plugin uses for the address, or a plugin cannot use."""
    resolved = context._resolve()
    if resolved.unused is not None:
        raise StepFailed(
            str(resolved.unused),
            f"leave out the options that {context.scheme}:// does not use; "
            "`comm doctor --help` says whose each option is",
        ) from resolved.unused
    if resolved.failure is not None:
        raise StepFailed(
            str(resolved.failure), "fix the options given; `comm doctor --help` describes them"
        ) from resolved.failure
    return None


def _step_resolve(context: DoctorContext) -> str:
    host, port = context.host, context.port
    assert host is not None
    assert port is not None
    where = unparse_host_port(host, port)
    if host in {"", "0.0.0.0", "::"} or port == 0:
        raise StepFailed(
            f"{context.address} names no concrete host and port (it is for listening)",
            "use the contact address that the listener prints (`comm serve` prints it)",
        )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:  # socket.gaierror
        raise StepFailed(
            f"cannot resolve {host!r}: {exc.strerror or exc}",
            f"check the host name in {context.address} (a typo? no DNS here?), or use an "
            "IP address",
        ) from exc
    context.sockaddrs = tuple(dict.fromkeys((family, sockaddr) for family, *_, sockaddr in infos))
    ips = ", ".join(str(sockaddr[0]) for _, sockaddr in context.sockaddrs)
    return f"{where} {context.arrow} {ips}"


def _step_tcp(context: DoctorContext) -> str:
    host, port = context.host, context.port
    if host is None or port is None or not context.sockaddrs:
        raise StepFailed(
            f"{context.address} has no host and port to open a TCP connection to",
            "write the address as scheme://host:port",
        )
    where = unparse_host_port(host, port)
    errors: list[OSError] = []
    for family, sockaddr in context.sockaddrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(context.timeout)
        start = time.perf_counter()
        try:
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        elapsed = time.perf_counter() - start
        context.sock = sock
        return f"connected to {unparse_host_port(str(sockaddr[0]), port)} in " + (
            f"{elapsed * 1e3:.2f} ms"
        )
    error = errors[0]
    if isinstance(error, ConnectionRefusedError):
        raise StepFailed(
            f"connection refused by {where}",
            f"connection refused: is a listener running on {where}? start one with "
            f"`{context.serve_command()}`",
        ) from error
    if isinstance(error, TimeoutError):
        raise StepFailed(
            f"no answer from {where} within {context.timeout:g} s",
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


def _step_comm(context: DoctorContext) -> str:
    import asyncio  # here: the steps before this one need no event loop

    if context.sock is not None:  # the probe connection is no longer needed
        context.sock.close()
        context.sock = None
    try:
        connection_args = context.connection_args()
    except CLIError as exc:  # reported by the options step already, unless a step cleared it
        raise StepFailed(str(exc), "fix the options given") from exc
    try:
        return asyncio.run(_comm_handshake(context.address, context.timeout, connection_args))
    except IncompatibleProtocolError as exc:
        raise StepFailed(str(exc), "run the same comm protocol version on both sides") from exc
    except HandshakeError as exc:
        raise StepFailed(
            str(exc), "something other than a comm endpoint listens there; check the port"
        ) from exc
    except FatalCommClosedError as exc:
        raise StepFailed(str(exc), "see the message: it says what to fix") from exc
    except ConnectTimeoutError as exc:
        hint = f"is a comm listener running there? `{context.serve_command()}` starts one"
        backend = context.backend
        if backend is not None and Capability.IN_PROCESS in backend.capabilities:
            hint = (
                f"{context.scheme}:// addresses reach listeners in the same process only, "
                "and `comm doctor` runs in a process of its own"
            )
        raise StepFailed(str(exc), hint) from exc
    except ProtocolError as exc:
        raise StepFailed(
            str(exc),
            f"something other than a {context.scheme}:// comm endpoint answers there; the "
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


ADDRESS = DoctorStep("address", _step_address, 0)
BACKEND = DoctorStep("backend", _step_backend, 0)
_OPTIONS = DoctorStep("options", _step_options, Stage.OPTIONS)
RESOLVE = DoctorStep("name resolution", _step_resolve, Stage.RESOLVE)
#: The step that opens a TCP connection to each address the host resolved to, in
#: turn, and leaves the first that connects in :attr:`DoctorContext.sock`. comm-core
#: offers it to transports over TCP, whose plugins give it (comm-tcp's does).
TCP_CONNECT: Final = DoctorStep("TCP connect", _step_tcp, Stage.CONNECT)
COMM_HANDSHAKE = DoctorStep("comm handshake", _step_comm, Stage.HANDSHAKE)
