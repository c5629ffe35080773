"""connect(), listen(), and the address functions that need a backend.

Importing this module imports no asyncio: what connect() and listen() run on
the event loop (the comm handshake, the retry loop, the listener's handler) is
in :mod:`comm_core.session`, which their first call imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comm_core._addressing import parse_address, unparse_address
from comm_core._options import Options
from comm_core._registry import get_registry
from comm_core.abc import Backend, Capability, Comm, Listener
from comm_core.exceptions import EncryptionRequiredError

if TYPE_CHECKING:
    from comm_core.session import UserHandler

__all__ = [
    "connect",
    "get_address_host",
    "get_address_host_port",
    "get_local_address_for",
    "listen",
    "resolve_address",
]


def _backend_for(addr: str) -> tuple[Backend, str, str]:
    scheme, loc = parse_address(addr)
    return get_registry().get_backend(scheme, address=addr), scheme, loc


def get_address_host(addr: str) -> str:
    """Return the host of *addr*, as its backend understands it.

    >>> get_address_host("tcp://[::1]:8786")  # doctest: +SKIP
    '::1'

    For tcp and tls the port may be left out (``tcp://127.0.0.1``).

    Raises:
        AddressError: *addr* is malformed (such as ``tcp://::1:8786``, whose IPv6
            host needs brackets), or its scheme is not installed.
    """
    backend, _, loc = _backend_for(addr)
    return backend.get_address_host(loc)


def get_address_host_port(addr: str) -> tuple[str, int]:
    """Return ``(host, port)`` of *addr*.

    Raises:
        AddressError: *addr* has no port (never made up), is malformed, or its
            scheme has no ports or is not installed.
    """
    backend, _, loc = _backend_for(addr)
    return backend.get_address_host_port(loc)


def resolve_address(addr: str) -> str:
    """Return *addr* with its host name resolved (may block on DNS).

    For tcp and tls, the port is kept as written, or left out if it was.

    Raises:
        AddressError: *addr* is malformed, its host cannot be resolved, or its
            scheme is not installed.
    """
    backend, scheme, loc = _backend_for(addr)
    return unparse_address(scheme, backend.resolve_address(loc))


def get_local_address_for(addr: str) -> str:
    """Return the local address from which *addr* would be reached (a host, for tcp).

    Raises:
        AddressError: *addr* is malformed, nothing local reaches it, or its scheme
            is not installed.
    """
    backend, scheme, loc = _backend_for(addr)
    return unparse_address(scheme, backend.get_local_address_for(loc))


def _check_encryption(backend: Backend, addr: str, required: bool) -> None:
    if not required:
        return
    caps = backend.capabilities
    if Capability.ENCRYPTED in caps or Capability.IN_PROCESS in caps:
        return
    raise EncryptionRequiredError(
        f"encryption is required (require_encryption=True or COMM_REQUIRE_ENCRYPTION), "
        f"but {addr!r} uses the {backend.scheme!r} backend, which does not encrypt; "
        "use an encrypted scheme such as 'tls://'"
    )


# -- connect ---------------------------------------------------------------------------


async def connect(
    addr: str,
    timeout: float | None = None,
    deserialize: bool = True,
    handshake_overrides: Mapping[str, Any] | None = None,
    *,
    handshake_timeout: float | None = None,
    require_encryption: bool | None = None,
    same_host: bool | None = None,
    options: Options | None = None,
    **connection_args: Any,
) -> Comm:
    """Connect to *addr* and return a comm that has completed the comm handshake.

    Transient failures (refused, reset, unreachable, timed-out attempts, a peer
    that closes during the handshake) are retried with full-jitter exponential
    backoff until *timeout* seconds have passed in total.

    Args:
        addr: the address, such as ``"tcp://127.0.0.1:8786"``.
        timeout: total time budget in seconds; default: the
            ``connect_timeout`` setting (30 s, ``COMM_CONNECT_TIMEOUT``).
        deserialize: deserialize custom payloads on read.
        handshake_overrides: entries added to (or replacing) what this side
            announces in the handshake; the peer sees them in
            :attr:`Comm.handshake_info`.
        handshake_timeout: seconds the peer may take to answer the handshake;
            default: the ``handshake_timeout`` setting (10 s).
        require_encryption: refuse backends that do not encrypt; default: the
            ``require_encryption`` setting.
        same_host: take a faster path that a listener on this host (or in
            this process) offers in its greeting, such as a Unix socket, after
            proving it leads to the same listener; default: the ``same_host``
            setting (on). ``comm.extra_info["path"]`` says which was taken
            (see :doc:`paths`).
        options: the settings to use, instead of those in force now; the
            arguments above win over it. The connector receives the result as
            ``options=`` and hands it to the comm.
        connection_args: passed to the backend, which ignores what it does not use.

    Raises:
        ConnectTimeoutError: the budget ran out; names the address, the time
            spent, the number of attempts, and chains the last failure.
        HandshakeError: the peer answered but is not a comm endpoint (the
            message says what it looks like), or its handshake is incompatible
            or refused (not retried). Like every failure to establish the comm,
            it is an :class:`OSError`.
        FatalCommClosedError: a failure no retry can fix (not retried).
        HostNotFoundError: the host name does not resolve: the resolver says
            no such name exists (not retried; a temporary failure of the
            resolver is retried).
        AddressError: *addr* is malformed or its scheme is not installed.
        EncryptionRequiredError: encryption is required and the backend lacks it.
        ValueError: *handshake_overrides* break the limits of a handshake
            message (see :doc:`protocol`).
    """
    backend, _, loc = _backend_for(addr)
    if options is None:
        options = Options(
            connect_timeout=timeout,
            handshake_timeout=handshake_timeout,
            require_encryption=require_encryption,
            same_host=same_host,
        )
    else:
        options = options.replace(
            connect_timeout=timeout,
            handshake_timeout=handshake_timeout,
            require_encryption=require_encryption,
            same_host=same_host,
        )
    _check_encryption(backend, addr, options.require_encryption)
    connector = backend.get_connector()

    from comm_core.session import connect_until  # asyncio, on the first connect()

    return await connect_until(
        connector, addr, loc, options, deserialize, handshake_overrides, connection_args
    )


# -- listen ----------------------------------------------------------------------------


def listen(
    addr: str,
    handle_comm: UserHandler,
    deserialize: bool = True,
    *,
    handshake_overrides: Mapping[str, Any] | None = None,
    handshake_timeout: float | None = None,
    max_pending_handshakes: int | None = None,
    require_encryption: bool | None = None,
    same_host: bool | None = None,
    options: Options | None = None,
    **connection_args: Any,
) -> Listener:
    """Return an unstarted listener on *addr* that passes each new comm to *handle_comm*.

    Start it with ``await listener.start()``, ``await listener`` or ``async with
    listener``. Each accepted comm first completes the comm handshake (a peer
    that does not within *handshake_timeout* is dropped), then *handle_comm* is
    called with it, in a task of its own. *handle_comm* may be a coroutine
    function or a plain function; the comm is its to close. If it raises, the
    error is logged with the peer's address and the comm is closed; the
    listener keeps serving.

    Args:
        addr: the address to listen on, such as ``"tcp://127.0.0.1:0"`` or
            ``"tcp://"`` (every interface, a free port).
        handle_comm: called with each new comm.
        deserialize: deserialize custom payloads on read.
        handshake_overrides: entries added to what this side announces.
        handshake_timeout: seconds a new peer may take to complete the handshake,
            counted from when the connection is accepted; default: the
            ``handshake_timeout`` setting.
        max_pending_handshakes: most connections kept before their handshake
            is done; one more drops the oldest silent one first (tcp, tls);
            default: the ``max_pending_handshakes`` setting.
        require_encryption: refuse backends that do not encrypt.
        same_host: offer dialers on this host (or in this process) a faster
            path in the greeting, such as a Unix socket serving the same
            *handle_comm*, if an installed plugin provides one; default: the
            ``same_host`` setting (on). Encrypting listeners (tls://) offer
            none (see :doc:`paths`).
        options: the settings to use, instead of those in force now; the
            arguments above win over it. The listener reads the result from
            its session and hands it to each comm it accepts.
        connection_args: passed to the backend, which ignores what it does not use.

    Raises:
        AddressError: *addr* is malformed or its scheme is not installed.
        EncryptionRequiredError: encryption is required and the backend lacks it.
        TypeError: *handle_comm* is not callable.
        ValueError: *handshake_overrides* break the limits of a handshake
            message (see :doc:`protocol`), or *max_pending_handshakes* is below 1.
    """
    if not callable(handle_comm):
        raise TypeError(f"handle_comm must be callable, got {type(handle_comm).__name__}")
    backend, _, loc = _backend_for(addr)
    if options is None:
        options = Options(
            handshake_timeout=handshake_timeout,
            max_pending_handshakes=max_pending_handshakes,
            require_encryption=require_encryption,
            same_host=same_host,
        )
    else:
        options = options.replace(
            handshake_timeout=handshake_timeout,
            max_pending_handshakes=max_pending_handshakes,
            require_encryption=require_encryption,
            same_host=same_host,
        )
    _check_encryption(backend, addr, options.require_encryption)
    from comm_core.session import ServerSession  # asyncio, on the first listen()

    session = ServerSession(
        addr,
        handle_comm,
        handshake_overrides,
        options,
        backend=backend,
        deserialize=deserialize,
        connection_args=connection_args,
    )
    listener = backend.get_listener(loc, session, deserialize, **connection_args)
    session.attach(listener)
    return listener
