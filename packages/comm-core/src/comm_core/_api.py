"""connect(), listen(), the comm handshake, and the address functions that need a backend."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from comm_core._addressing import parse_address, unparse_address
from comm_core._compat import timeout_after
from comm_core._config import get_setting
from comm_core._registry import get_registry
from comm_core._version import PROTOCOL_VERSION, __version__
from comm_core.abc import Backend, Capability, Comm, Listener
from comm_core.exceptions import (
    CommClosedError,
    ConnectError,
    ConnectTimeoutError,
    EncryptionRequiredError,
    FatalCommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    IncompatibleProtocolError,
    ProtocolError,
)

__all__ = [
    "connect",
    "get_address_host",
    "get_address_host_port",
    "get_local_address_for",
    "listen",
    "resolve_address",
]

logger = logging.getLogger("comm_core")

#: A user's comm handler: a coroutine function or a plain function taking the comm.
UserHandler = Callable[[Comm], Any]


def _backend_for(addr: str) -> tuple[Backend, str, str]:
    scheme, loc = parse_address(addr)
    return get_registry().get_backend(scheme, address=addr), scheme, loc


def get_address_host(addr: str) -> str:
    """Return the host of *addr*, as its backend understands it.

    >>> get_address_host("tcp://[::1]:8786")  # doctest: +SKIP
    '::1'
    """
    backend, _, loc = _backend_for(addr)
    return backend.get_address_host(loc)


def get_address_host_port(addr: str) -> tuple[str, int]:
    """Return ``(host, port)`` of *addr*; an :class:`AddressError` for schemes without ports."""
    backend, _, loc = _backend_for(addr)
    return backend.get_address_host_port(loc)


def resolve_address(addr: str) -> str:
    """Return *addr* with its host name resolved (may block on DNS)."""
    backend, scheme, loc = _backend_for(addr)
    return unparse_address(scheme, backend.resolve_address(loc))


def get_local_address_for(addr: str) -> str:
    """Return the local address from which *addr* would be reached."""
    backend, scheme, loc = _backend_for(addr)
    return unparse_address(scheme, backend.get_local_address_for(loc))


def _check_encryption(backend: Backend, addr: str, required: bool | None) -> None:
    if required is None:
        required = bool(get_setting("require_encryption"))
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


# -- the handshake ---------------------------------------------------------------------


def _local_info(comm: Comm, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    info: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "library": "comm-core"}
    info["version"] = __version__
    info.update(comm.handshake_options())
    if overrides:
        info.update(overrides)
    return info


async def _handshake(
    comm: Comm, overrides: Mapping[str, Any] | None, timeout: float, who: str | Callable[[], str]
) -> None:
    """Send our info and read the peer's; abort *comm* on any failure.

    A listener's stream comms sent their info with the preamble already
    (:meth:`_ServerHandshake.greeting`); they only read, and if the peer's
    message has arrived already, no timer is needed for it. *who* (or what it
    returns) names the two ends in error messages.
    """
    sent = comm._handshake_sent
    local = _local_info(comm, overrides) if sent is None else sent
    try:
        if sent is not None and comm._message_waiting():
            peer = await comm.read()
        else:
            async with timeout_after(timeout):
                if sent is None:
                    await comm._send_handshake(local)
                peer = await comm.read()
    except TimeoutError as exc:
        comm.abort()
        raise HandshakeTimeoutError(
            f"{_name(who)}: the peer did not complete the comm handshake within {timeout:g}s"
        ) from exc
    except BaseException:
        comm.abort()
        raise
    if not isinstance(peer, dict) or not isinstance(peer.get("protocol"), int):
        comm.abort()
        raise HandshakeError(
            f"{_name(who)}: the peer sent {type(peer).__name__} {peer!r:.80} instead of a "
            "comm handshake; is a comm endpoint listening there?"
        )
    if peer["protocol"] != PROTOCOL_VERSION:
        comm.abort()
        raise IncompatibleProtocolError(
            f"{_name(who)}: the peer speaks comm protocol {peer['protocol']} "
            f"({peer.get('library', '?')} {peer.get('version', '?')}), this side speaks "
            f"protocol {PROTOCOL_VERSION} (comm-core {__version__})"
        )
    comm._set_handshake(local, peer)


def _name(who: str | Callable[[], str]) -> str:
    return who if isinstance(who, str) else who()


# -- connect ---------------------------------------------------------------------------


async def connect(
    addr: str,
    timeout: float | None = None,
    deserialize: bool = True,
    handshake_overrides: Mapping[str, Any] | None = None,
    *,
    handshake_timeout: float | None = None,
    require_encryption: bool | None = None,
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
        connection_args: passed to the backend, which ignores what it does not use.

    Raises:
        ConnectTimeoutError: the budget ran out; names the address, the time
            spent, the number of attempts, and chains the last failure.
        HandshakeError: the peer answered but not with a compatible handshake
            (not retried).
        FatalCommClosedError: a failure no retry can fix (not retried).
        AddressError: *addr* is malformed or its scheme is not installed.
        EncryptionRequiredError: encryption is required and the backend lacks it.
    """
    backend, _, loc = _backend_for(addr)
    _check_encryption(backend, addr, require_encryption)
    connector = backend.get_connector()
    budget = float(get_setting("connect_timeout") if timeout is None else timeout)
    hs_timeout = float(
        get_setting("handshake_timeout") if handshake_timeout is None else handshake_timeout
    )

    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + budget
    attempts = 0
    last_exc: BaseException | None = None
    who = f"connect to {addr!r}"
    while True:
        attempts += 1
        try:
            async with timeout_after(max(deadline - loop.time(), 0.0)):
                comm = await connector.connect(loc, deserialize=deserialize, **connection_args)
        except FatalCommClosedError:
            raise
        except (ConnectError, CommClosedError, TimeoutError, asyncio.TimeoutError) as exc:
            # An attempt cut short by the budget says less than the failure before it.
            if last_exc is None or loop.time() < deadline:
                last_exc = exc
        except OSError as exc:  # a backend that let an OS error through: still transient
            last_exc = exc
        else:
            remaining = deadline - loop.time()
            try:
                await _handshake(comm, handshake_overrides, min(hs_timeout, remaining), who)
            except HandshakeTimeoutError as exc:
                if remaining >= hs_timeout:
                    raise
                last_exc = exc  # the connect budget ran out, not the handshake's own
            except FatalCommClosedError:
                raise
            except CommClosedError as exc:  # the peer went away during the handshake
                last_exc = exc
            else:
                return comm

        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        delay_min = float(get_setting("retry_delay_min"))
        delay_max = float(get_setting("retry_delay_max"))
        import random  # only a retried connect needs it

        delay = random.uniform(0, min(delay_max, delay_min * 2 ** (attempts - 1)))
        await asyncio.sleep(min(delay, remaining))
        if loop.time() >= deadline:  # no time left for another attempt
            break

    elapsed = loop.time() - start
    cause = type(last_exc).__name__ if last_exc else "no attempt finished"
    if last_exc and str(last_exc):
        cause += f": {last_exc}"
    raise ConnectTimeoutError(
        f"timed out connecting to {addr!r} after {elapsed:.2f}s and {attempts} "
        f"attempt{'s' if attempts != 1 else ''}; last error: {cause}",
        address=addr,
        elapsed=elapsed,
        attempts=attempts,
    ) from last_exc


# -- listen ----------------------------------------------------------------------------


class _ServerHandshake:
    """The handler a backend's listener calls for each accepted comm.

    Runs the handshake under its timeout, then the user's handler; logs and
    closes the comm if the handler fails. Tracks comms still in their handshake
    so that :meth:`Listener.stop` can abort them.
    """

    def __init__(
        self,
        address: str,
        handler: UserHandler,
        overrides: Mapping[str, Any] | None,
        timeout: float | None,
    ) -> None:
        self.address = address
        self.handler = handler
        self.overrides = overrides
        #: The handshake timeout of every comm accepted; the setting is read once, here.
        self.timeout = float(get_setting("handshake_timeout") if timeout is None else timeout)
        self.listener: Listener | None = None
        self._pending: set[Comm] = set()

    @property
    def where(self) -> str:
        """The listener's contact address, for messages; the address it was given if unknown."""
        try:
            return self.listener.contact_address if self.listener else self.address
        except Exception:  # not started, or stopped
            return self.address

    def _who(self, comm: Comm) -> str:
        return f"listener {self.where!r}, comm from {_peer(comm)}"

    def greeting(self, comm: Comm) -> dict[str, Any]:
        """The handshake message of *comm*, for a transport that sends it before hearing
        from the peer (comm_core.stream.StreamAcceptor). The transport then sets
        ``comm._handshake_sent`` to it, and the handshake only reads."""
        return _local_info(comm, self.overrides)

    def abort_pending(self) -> None:
        pending, self._pending = self._pending, set()
        for comm in pending:
            comm.abort()

    async def __call__(self, comm: Comm) -> None:
        self._pending.add(comm)
        try:
            await _handshake(comm, self.overrides, self.timeout, lambda: self._who(comm))
        except (ProtocolError, CommClosedError) as exc:
            level = logging.WARNING if isinstance(exc, IncompatibleProtocolError) else logging.INFO
            logger.log(level, "dropped a comm that failed its handshake: %s", exc)
            return
        finally:
            self._pending.discard(comm)
        try:
            result = self.handler(comm)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            comm.abort()
            raise
        except Exception:
            logger.exception(
                "comm handler %r failed on %s for the comm from %s; closing that comm",
                getattr(self.handler, "__qualname__", self.handler),
                self.where,
                _peer(comm),
            )
            await comm.close()


def _peer(comm: Comm) -> str:
    try:
        return comm.peer_address
    except Exception:
        return "an unknown peer"


def listen(
    addr: str,
    handle_comm: UserHandler,
    deserialize: bool = True,
    *,
    handshake_overrides: Mapping[str, Any] | None = None,
    handshake_timeout: float | None = None,
    require_encryption: bool | None = None,
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
        handshake_timeout: seconds a new peer may take to complete the handshake.
        require_encryption: refuse backends that do not encrypt.
        connection_args: passed to the backend, which ignores what it does not use.

    Raises:
        AddressError: *addr* is malformed or its scheme is not installed.
        EncryptionRequiredError: encryption is required and the backend lacks it.
        TypeError: *handle_comm* is not callable.
    """
    if not callable(handle_comm):
        raise TypeError(f"handle_comm must be callable, got {type(handle_comm).__name__}")
    backend, _, loc = _backend_for(addr)
    _check_encryption(backend, addr, require_encryption)
    handler = _ServerHandshake(addr, handle_comm, handshake_overrides, handshake_timeout)
    listener = backend.get_listener(loc, handler, deserialize, **connection_args)
    listener._comm_handler = handler
    handler.listener = listener
    return listener
