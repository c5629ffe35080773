"""The session layer: the comm handshake, connecting with retries, serving a listener's comms.

Transports move messages; this module is what comm-core runs over them:

* :func:`handshake` exchanges the two sides' handshake messages over a fresh
  comm, under one deadline, and checks what the peer sent.
* :func:`connect_until` is the body of :func:`comm_core.connect`: it dials with
  the backend's connector, retries what may be retried with full-jitter
  backoff, and runs the handshake, all within one time budget.
* :class:`ServerSession` is what :func:`comm_core.listen` hands a backend's
  listener (as ``handle_comm``): it runs the handshake of each comm the
  listener accepts, then the user's handler, and gives a listener that wants
  them the greeting, the deadline and the timeout of its comms. A listener
  that only awaits ``session(comm)`` for each comm is served too.

A transport meets this layer through the small interface of
:class:`~comm_core.Comm` for the handshake (:attr:`~comm_core.Comm.early_handshake`,
:meth:`~comm_core.Comm.send_handshake`, :meth:`~comm_core.Comm.message_waiting`)
and, for a listener, through :class:`ServerSession`; never through private
names. :mod:`comm_core._api` imports this module on the first ``connect()`` or
``listen()``, so that ``import comm_core`` and looking up a backend import
neither asyncio nor logging.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from comm_core._compat import TimeoutScope, timeout_after
from comm_core._options import Options
from comm_core._ratelimit import LogLimiter
from comm_core._text import peer_text
from comm_core._version import PROTOCOL_VERSION, __version__
from comm_core.abc import Backend, Capability, Comm, Connector, Listener
from comm_core.exceptions import (
    CommClosedError,
    ConnectError,
    ConnectTimeoutError,
    FatalCommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    HostNotFoundError,
    IncompatibleProtocolError,
    ProtocolError,
    SerializationError,
)
from comm_core.selection import (
    Offer,
    Path,
    choose_path,
    forget_paths,
    known_offer,
    offer_of,
    remember_offer,
)

__all__ = [
    "HANDSHAKE_MAX_ENTRIES",
    "HANDSHAKE_MAX_ITEMS",
    "HANDSHAKE_MAX_KEY",
    "HANDSHAKE_MAX_TEXT",
    "HANDSHAKE_MAX_VALUES",
    "Admit",
    "ServerSession",
    "UserHandler",
    "check_handshake",
    "connect_until",
    "handshake",
    "local_handshake",
    "options_of",
]

#: A user's comm handler: a coroutine function or a plain function taking the comm.
UserHandler = Callable[[Comm], Any]

#: Checks a peer's handshake message before a listener answers it (see
#: :attr:`ServerSession.admit`): returns the entries to add to the answer, or
#: raises :class:`~comm_core.HandshakeError` saying why the peer is refused.
Admit = Callable[[Comm, Mapping[str, Any]], Mapping[str, Any] | None]

logger = logging.getLogger("comm_core")


# -- the handshake ---------------------------------------------------------------------

#: What a handshake message may hold (docs/protocol.rst, "The handshake message"): at
#: most this many entries, ...
HANDSHAKE_MAX_ENTRIES = 64
#: ... each with a str key of at most this many characters, ...
HANDSHAKE_MAX_KEY = 128
#: ... and a value that is None, a bool, an int, a float, a str of at most this many
#: characters or bytes of at most this many bytes, ...
HANDSHAKE_MAX_TEXT = 1024
#: ... or a list or tuple of at most this many such scalars (not nested); ...
HANDSHAKE_MAX_ITEMS = 64
#: ... and at most this many values in all, counting the items of lists and tuples.
HANDSHAKE_MAX_VALUES = 256

_SCALARS = (bool, int, float, str, bytes, type(None))
_PLAIN = frozenset({bool, int, float, type(None)})  # scalars of any size: no check needed
_TEXT = frozenset({str, bytes})


def _scalar_problem(value: Any) -> str | None:
    kind = type(value)
    if kind in _PLAIN:
        return None
    if kind not in _TEXT and not isinstance(value, _SCALARS):
        return f"a value of type {kind.__name__}"
    if isinstance(value, (str, bytes)) and len(value) > HANDSHAKE_MAX_TEXT:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"a {type(value).__name__} of {len(value)} {unit}"
    return None


def check_handshake(info: Mapping[Any, Any]) -> str | None:
    """What makes *info* unacceptable as a handshake message, or ``None`` if nothing does.

    The limits (``HANDSHAKE_MAX_*``) keep what a peer may make a listener hold
    for a comm's life small: a few kilobytes, whatever the peer sends. The
    description quotes what it names with :func:`~comm_core._text.peer_text`.
    """
    if len(info) > HANDSHAKE_MAX_ENTRIES:
        return f"it has {len(info)} entries, more than {HANDSHAKE_MAX_ENTRIES}"
    values = 0
    for key, value in info.items():
        if not isinstance(key, str):
            return f"it has a key of type {type(key).__name__}, {peer_text(key, 40)}; keys are str"
        if len(key) > HANDSHAKE_MAX_KEY:
            return f"it has a key of {len(key)} characters, more than {HANDSHAKE_MAX_KEY}"
        kind = type(value)
        if kind is list or kind is tuple or isinstance(value, (list, tuple)):
            if len(value) > HANDSHAKE_MAX_ITEMS:
                return (
                    f"entry {peer_text(key, 60)} is a {kind.__name__} of {len(value)} items, "
                    f"more than {HANDSHAKE_MAX_ITEMS}"
                )
            values += len(value)
            for item in value:
                problem = _scalar_problem(item)
                if problem is not None:
                    return f"entry {peer_text(key, 60)} holds {problem}"
        else:
            values += 1
            problem = _scalar_problem(value)
            if problem is not None:
                return f"entry {peer_text(key, 60)} is {problem}"
        if values > HANDSHAKE_MAX_VALUES:
            return f"it holds more than {HANDSHAKE_MAX_VALUES} values"
    return None


def check_overrides(overrides: Mapping[str, Any] | None) -> None:
    """Refuse *overrides* (``handshake_overrides``) that a peer would refuse.

    Raises:
        ValueError: naming what breaks the limits of a handshake message.
    """
    if not overrides:
        return
    problem = check_handshake(overrides)
    if problem is None and len(overrides) + 3 > HANDSHAKE_MAX_ENTRIES:  # with comm-core's own
        problem = f"it has {len(overrides)} entries, more than {HANDSHAKE_MAX_ENTRIES - 3}"
    if problem is not None:
        raise ValueError(
            f"handshake_overrides cannot be sent: {problem}; a handshake holds at most "
            f"{HANDSHAKE_MAX_ENTRIES} entries with str keys, each None, a bool, an int, a "
            f"float, a str or bytes of at most {HANDSHAKE_MAX_TEXT}, or a list or tuple of "
            f"at most {HANDSHAKE_MAX_ITEMS} of those"
        )


def local_handshake(comm: Comm, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The handshake message *comm* sends: comm-core's entries (``protocol``,
    ``library``, ``version``), the transport's (:meth:`Comm.handshake_options
    <comm_core.Comm.handshake_options>`), then *overrides*."""
    info: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "library": "comm-core"}
    info["version"] = __version__
    info.update(comm.handshake_options())
    if overrides:
        info.update(overrides)
    return info


#: Longest text of an error of the peer's making that a handshake error quotes.
_QUOTED = 400


async def handshake(
    comm: Comm,
    overrides: Mapping[str, Any] | None,
    timeout: float,
    who: str | Callable[[], str],
    *,
    limit: float | None = None,
    admit: Admit | None = None,
) -> None:
    """Send our info and read the peer's; abort *comm* on any failure.

    A comm whose transport sent this side's message ahead of the handshake
    (:attr:`Comm.early_handshake <comm_core.Comm.early_handshake>`: a
    listener's stream comms send :meth:`ServerSession.greeting` with the
    preamble) only reads, and if the peer's message is there already
    (:meth:`Comm.message_waiting <comm_core.Comm.message_waiting>`), no timer
    is needed for it. Otherwise this side's message goes out with
    :meth:`Comm.send_handshake <comm_core.Comm.send_handshake>`. *who* (or what it
    returns) names the two ends in error messages. *timeout* is the time left
    (it may be 0); *limit*, the whole time allowed, which a timeout's message
    names (default: *timeout*).

    With *admit* (a listener that checks who its peer is before saying
    anything: see :attr:`ServerSession.admit`), this side reads the peer's
    message first, and sends its own, with the entries *admit* returns, only
    if *admit* accepts the peer.

    Raises:
        HandshakeTimeoutError: the peer's handshake did not arrive in time.
        IncompatibleProtocolError: the peer speaks another protocol version.
        HandshakeError: the peer is not a comm endpoint (the message says what
            it looks like), or its handshake is malformed, too large, holds a
            value this side cannot decode, or breaks the limits of
            :func:`check_handshake`; or *admit* refused the peer.
        CommClosedError: the connection closed first.
    """
    sent = comm.early_handshake
    local = local_handshake(comm, overrides) if sent is None else sent
    gated = admit is not None and sent is None  # read the peer's first, then answer
    try:
        if sent is not None and comm.message_waiting():
            peer = await _read_handshake(comm, who)
        else:
            async with timeout_after(max(timeout, 0.0)):
                if sent is None and not gated:
                    await comm.send_handshake(local)
                peer = await _read_handshake(comm, who)
        _check_peer(comm, peer, who)
        if gated:
            assert admit is not None
            try:
                more = admit(comm, peer)
            except HandshakeError as exc:
                raise HandshakeError(f"{_name(who)}: refused the peer: {exc}") from None
            if more:
                local = {**local, **more}
            await comm.send_handshake(local)
    except TimeoutError as exc:
        comm.abort()
        raise HandshakeTimeoutError(
            f"{_name(who)}: the peer did not complete the comm handshake within "
            f"{timeout if limit is None else limit:g}s"
        ) from exc
    except BaseException:
        comm.abort()
        raise
    comm._set_handshake(local, peer)


def _check_peer(comm: Comm, peer: Any, who: str | Callable[[], str]) -> None:
    """Refuse (aborting *comm*) a *peer* message that is no comm handshake of ours."""
    if not isinstance(peer, dict) or type(peer.get("protocol")) is not int:
        comm.abort()
        raise HandshakeError(
            f"{_name(who)}: the peer sent {type(peer).__name__} {peer_text(peer, 80)} instead "
            "of a comm handshake; is a comm endpoint listening there?"
        )
    if peer["protocol"] != PROTOCOL_VERSION:
        comm.abort()
        library = peer_text(peer.get("library", "?"), 60, bare=True)
        version = peer_text(peer.get("version", "?"), 60, bare=True)
        raise IncompatibleProtocolError(
            f"{_name(who)}: the peer speaks comm protocol {peer_text(peer['protocol'], 30)} "
            f"({library} {version}), this side speaks protocol {PROTOCOL_VERSION} "
            f"(comm-core {__version__})"
        )
    problem = check_handshake(peer)
    if problem is not None:
        comm.abort()
        raise HandshakeError(f"{_name(who)}: refused the peer's comm handshake: {problem}")


async def _read_handshake(comm: Comm, who: str | Callable[[], str]) -> Any:
    """The peer's handshake message; what goes wrong reading it is a HandshakeError."""
    try:
        return await comm.read()
    except HandshakeError:
        raise
    except ProtocolError as exc:
        # Not a comm endpoint (its first bytes say what it is instead), or a malformed or
        # oversized first message: the text says it all.
        raise HandshakeError(peer_text(str(exc), _QUOTED, bare=True)) from exc
    except SerializationError as exc:  # a custom value of a family not accepted here
        raise HandshakeError(
            f"{_name(who)}: the peer's handshake holds a value this side cannot decode: "
            f"{peer_text(str(exc), _QUOTED, bare=True)}"
        ) from exc


def _name(who: str | Callable[[], str]) -> str:
    return who if isinstance(who, str) else who()


# -- connect ---------------------------------------------------------------------------


async def connect_until(
    connector: Connector,
    addr: str,
    loc: str,
    options: Options,
    deserialize: bool,
    handshake_overrides: Mapping[str, Any] | None,
    connection_args: dict[str, Any],
) -> Comm:
    """Dial *loc* with *connector* and handshake, retrying, within ``options.connect_timeout``.

    The body of :func:`comm_core.connect`, which has checked the address and the
    arguments; see there for what it raises. The connector gets *options* as
    ``options=``.
    """
    check_overrides(handshake_overrides)
    budget = options.connect_timeout
    hs_timeout = options.handshake_timeout
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + budget
    attempts = 0
    last_exc: BaseException | None = None
    who = f"connect to {addr!r}"
    # Same-host selection (comm_core.selection): a path verified before is tried first.
    select = options.same_host
    if select:
        known = known_offer(addr, connection_args)
        if known is not None:
            path = choose_path(addr, known, options, connection_args)
            if path is None:
                forget_paths(addr)
                logger.debug("connect to %r: the same-host path used before is gone", addr)
            else:
                chosen = await _take_path(
                    path, addr, known, options, deserialize, handshake_overrides,
                    connection_args, deadline, who,
                )  # fmt: skip
                if chosen is not None:
                    return chosen
    while True:
        attempts += 1
        scope: TimeoutScope | None = None
        try:
            async with timeout_after(max(deadline - loop.time(), 0.0)) as scope:
                comm = await connector.connect(
                    loc, deserialize=deserialize, options=options, **connection_args
                )
        except (FatalCommClosedError, HandshakeError, HostNotFoundError):  # final
            raise
        except (ConnectError, CommClosedError, TimeoutError, asyncio.TimeoutError) as exc:
            # An attempt cut short by the budget says less than the failure before it.
            # (Asked of the scope, not the clock: uvloop's timers fire up to a
            # millisecond before the deadline its clock reports.)
            if last_exc is None or scope is None or not scope.expired():
                last_exc = exc
        except OSError as exc:  # a backend that let an OS error through: still transient
            last_exc = exc
        else:
            remaining = max(deadline - loop.time(), 0.0)
            try:
                await handshake(comm, handshake_overrides, min(hs_timeout, remaining), who)
            except HandshakeTimeoutError as exc:
                if remaining >= hs_timeout:
                    raise
                # The connect budget ran out, not the handshake's own: this says less
                # than the failure before it.
                if last_exc is None:
                    last_exc = exc
            except FatalCommClosedError:
                raise
            except CommClosedError as exc:  # the peer went away during the handshake
                last_exc = exc
            else:
                offer = offer_of(comm.handshake_info) if select else None
                if not offer:
                    return comm
                # In the step the handshake ended in: this side's handshake message has
                # not left yet (it waits for the end of the loop iteration).
                path = choose_path(addr, offer, options, connection_args)
                if path is None:
                    logger.debug("connect to %r: no same-host path offered is usable", addr)
                    return comm
                # Nothing of ours went out on it: the listener sees a connection close
                # before its preamble, and never hands it to its handler.
                comm.abort()
                chosen = await _take_path(
                    path, addr, offer, options, deserialize, handshake_overrides,
                    connection_args, deadline, who,
                )  # fmt: skip
                if chosen is not None:
                    return chosen
                select = False
                continue  # dial the address again, at once: nothing was lost

        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        delay_min = options.retry_delay_min
        delay_max = options.retry_delay_max
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


async def _take_path(
    path: Path,
    addr: str,
    offer: dict[str, Any],
    options: Options,
    deserialize: bool,
    overrides: Mapping[str, Any] | None,
    connection_args: dict[str, Any],
    deadline: float,
    who: str,
) -> Comm | None:
    """The comm over *path*, handshake done; ``None`` (logged at debug level) if it fails."""
    loop = asyncio.get_running_loop()
    # Half the time left at most: a path that fails (a socket that accepts and then says
    # nothing) leaves the other half for dialling the address again.
    budget = max(min((deadline - loop.time()) / 2, options.handshake_timeout), 0.0)
    until = loop.time() + budget
    comm: Comm | None = None
    try:
        async with timeout_after(budget):
            comm = await path.open(addr, deserialize, options, connection_args)
        entries = path.handshake_entries()
        await handshake(
            comm,
            {**overrides, **entries} if overrides else entries,
            until - loop.time(),
            who,
            limit=budget,
        )
    except Exception as exc:
        if comm is None:
            path.discard()
        else:
            comm.abort()
        forget_paths(addr)
        logger.debug(
            "connect to %r: the %s path %s failed (%s: %s); dialling %r instead",
            addr, path.name, path.address, type(exc).__name__, exc, addr,
        )  # fmt: skip
        return None
    except BaseException:
        if comm is None:
            path.discard()
        else:
            comm.abort()
        raise
    renewed = offer_of(comm.handshake_info)  # the path's listener may renew its offer
    remember_offer(addr, {**offer, **renewed} if renewed else offer, connection_args)
    logger.debug("connect to %r: took the %s path %s", addr, path.name, path.address)
    return comm


# -- listen ----------------------------------------------------------------------------


def options_of(handle_comm: Any) -> Options:
    """The options of the comms a listener makes for *handle_comm*, the handler it was given.

    Those of the :class:`ServerSession` that :func:`comm_core.listen` passes;
    for any other handler (a listener made by hand), the settings in force
    now, ``Options()``.
    """
    return handle_comm.options if isinstance(handle_comm, ServerSession) else Options()


class ServerSession:
    """What a listener serves its comms with: the handshake, then the user's handler.

    :func:`comm_core.listen` makes one and passes it to
    :meth:`Backend.get_listener <comm_core.Backend.get_listener>` as
    ``handle_comm``, then :meth:`attaches <attach>` it to the listener. A
    listener awaits :meth:`serve` (or the session itself, ``await
    session(comm)``) once for each comm it accepts, in a task of its own: the
    session runs the comm handshake within :attr:`timeout`, then the user's
    handler; it logs and closes the comm if the handler fails, and drops (with
    a log line) a comm that fails its handshake. It keeps track of comms still
    in their handshake so that the listener's :meth:`~comm_core.Listener.stop`
    can end them.

    A stream listener does more with it (see
    :class:`comm_core.stream.StreamAcceptor`, which does this for it): it
    sends :meth:`greeting` with its preamble as soon as it accepts a
    connection, and passes :meth:`serve` the deadline that started then, so
    that everything before the user's handler (a transport's own handshake,
    such as TLS's, the preamble and the comm handshake) shares one
    :attr:`timeout`.

    Args:
        address: the address given to ``listen()``, for log lines until the
            listener has a contact address.
        handler: the user's handler, a coroutine function or a plain function.
        overrides: entries added to this side's handshake message.
        options: the settings of the listener and of every comm it accepts;
            default: those in force now.

    Raises:
        ValueError: *overrides* break the limits of a handshake message.
    """

    def __init__(
        self,
        address: str,
        handler: UserHandler,
        overrides: Mapping[str, Any] | None = None,
        options: Options | None = None,
        *,
        backend: Backend | None = None,
        deserialize: bool = True,
        connection_args: Mapping[str, Any] | None = None,
    ) -> None:
        check_overrides(overrides)
        self.address = address
        self.handler = handler
        self.overrides = overrides
        #: The listener's backend, if known: with it (and ``options.same_host``), the
        #: listener offers same-host paths (see :mod:`comm_core.selection`).
        self.backend = backend
        #: The ``deserialize`` flag and the connection arguments given to ``listen()``,
        #: for the listeners of the same-host paths offered, which serve this session too.
        self.deserialize = deserialize
        self.connection_args: Mapping[str, Any] = dict(connection_args or {})
        #: The same-host paths offered, started with the listener (:meth:`starting`).
        self.offers: list[Offer] = []
        self._offering = False  # starting() ran for the listener, stopped() not yet
        # What every handshake message of this session's comms says: the offers'
        # entries, then the overrides (None: the overrides alone).
        self._announced: Mapping[str, Any] | None = overrides
        #: The settings of the listener and of every comm it accepts
        #: (:func:`options_of` gives them to a listener).
        self.options = Options() if options is None else options
        #: The listener served, once :meth:`attach` ran.
        self.listener: Listener | None = None
        #: If set, the listener's comms say nothing before the peer's handshake
        #: message came and this accepted it (see :data:`Admit`): no greeting
        #: ahead of the handshake; a refused peer is dropped (logged like a
        #: failed handshake) without having heard a byte of the comm protocol
        #: from this side. For a listener whose peers must prove something
        #: first, such as a same-host path's companion listener.
        self.admit: Admit | None = None
        # The offers whose entries differ for each comm (Offer.per_comm).
        self._per_comm: list[Offer] = []
        self._dropped = LogLimiter(logger, "comms dropped for failing their handshake")

    def companion(self, admit: Admit | None = None) -> ServerSession:
        """A session that serves the same handler with the same settings, for a
        companion listener (a same-host path's), with *admit* as its :attr:`admit`.

        It offers nothing itself; :meth:`attach` it to the companion listener.
        """
        twin = ServerSession(
            self.address,
            self.handler,
            self.overrides,
            self.options,
            deserialize=self.deserialize,
            connection_args=self.connection_args,
        )
        twin.admit = admit
        return twin

    @property
    def greets_early(self) -> bool:
        """Whether the listener's comms send :meth:`greeting` before hearing from the
        peer (not with an :attr:`admit` check)."""
        return self.admit is None

    @property
    def greets_alike(self) -> bool:
        """Whether :meth:`greeting` is the same for every comm (as far as this session
        decides it): no offer adds entries for each comm. A stream listener then
        encodes it once, when it accepts its first comm; otherwise for each comm,
        once the comm's connection is up."""
        return not self._per_comm

    def attach(self, listener: Listener) -> None:
        """Serve *listener*: it is named in log lines, and its settings are :attr:`options`.

        Sets :attr:`listener` and the listener's :attr:`~comm_core.Listener.session`;
        :func:`comm_core.listen` calls it.
        """
        self.listener = listener
        listener.session = self

    async def starting(self, listener: Listener) -> None:
        r"""*listener* is about to start: start the same-host paths the plugins offer for it.

        Called by the :class:`~comm_core.Listener` base class before the
        listener's own ``start()``; does nothing for another listener than the
        one :meth:`attach`\ ed (a companion listener that serves this session
        too), nor without a :attr:`backend`, nor if ``options.same_host`` is
        off, nor if the offers run already. Never raises for a plugin's failure
        (see :func:`comm_core.selection.start_offers`).
        """
        if listener is not self.listener or self._offering or self.backend is None:
            return
        if not self.options.same_host:
            return
        self._offering = True
        from comm_core.selection import start_offers

        backend = self.backend
        self.offers, entries = await start_offers(
            listener, self, backend.scheme, Capability.ENCRYPTED in backend.capabilities
        )
        if entries:
            self._announced = {**entries, **(self.overrides or {})}
        self._per_comm = [offer for offer in self.offers if offer.per_comm]

    def stopped(self, listener: Listener) -> None:
        """*listener* stopped: stop the paths offered for it. Never raises."""
        if listener is not self.listener:
            return
        self._offering = False
        self._announced = self.overrides
        self._per_comm = []
        offers, self.offers = self.offers, []
        for offer in offers:
            try:
                offer.stop()
            except Exception:
                logger.exception("stopping the same-host path %r failed", offer)

    @property
    def timeout(self) -> float:
        """Seconds a comm has to complete its handshake (``options.handshake_timeout``)."""
        return self.options.handshake_timeout

    @property
    def max_pending(self) -> int:
        """Most comms the listener keeps before their handshake is done
        (``options.max_pending_handshakes``); the listener enforces it."""
        return self.options.max_pending_handshakes

    def deadline(self) -> float:
        """The event loop time by which a comm accepted now must be done with its handshake.

        Raises:
            RuntimeError: no event loop is running.
        """
        return asyncio.get_running_loop().time() + self.options.handshake_timeout

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
        """The handshake message *comm* sends, for a transport that sends it before
        hearing from the peer; the transport then records it with
        :meth:`Comm.set_early_handshake <comm_core.Comm.set_early_handshake>`, and
        the handshake only reads the peer's.

        The same for every comm whose class adds nothing to it
        (:meth:`~comm_core.Comm.handshake_options`) while :attr:`greets_alike`,
        so that a listener may encode it once. Otherwise it holds the entries
        the offers make for *comm* (:meth:`Offer.entries_for
        <comm_core.selection.Offer.entries_for>`): ask for it when *comm*'s
        connection is up.
        """
        if not self._per_comm:
            return local_handshake(comm, self._announced)
        own: dict[str, Any] = {}
        for offer in self._per_comm:
            try:
                own.update(offer.entries_for(comm))
            except Exception:  # a plugin's bug: this comm is offered less, nothing fails
                logger.exception("the same-host path %r failed making a comm's entries", offer)
        return local_handshake(comm, {**(self._announced or {}), **own, **(self.overrides or {})})

    async def __call__(self, comm: Comm) -> None:
        """:meth:`serve` *comm*, with :attr:`timeout` from now."""
        await self.serve(comm)

    async def serve(
        self,
        comm: Comm,
        deadline: float | None = None,
        handshake_over: Callable[[Comm], None] | None = None,
    ) -> None:
        """Run the handshake of *comm*, then the user's handler; never raises but
        :class:`asyncio.CancelledError` (which aborts *comm*).

        A comm that fails its handshake is aborted and dropped, with a log line;
        if the handler raises, the failure is logged and the comm closed.

        Args:
            deadline: the event loop time by which the handshake must be done;
                default: :attr:`timeout` from now.
            handshake_over: called with *comm* once its handshake is over
                (done or failed), before the user's handler runs.
        """
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.options.handshake_timeout
        try:
            await handshake(
                comm,
                self._announced,
                deadline - loop.time(),
                lambda: self._who(comm),
                limit=self.timeout,
                admit=self.admit,
            )
        except (ProtocolError, CommClosedError) as exc:
            level = logging.WARNING if isinstance(exc, IncompatibleProtocolError) else logging.INFO
            self._dropped.log(level, "dropped a comm that failed its handshake: %s", exc)
            return
        finally:
            if handshake_over is not None:
                handshake_over(comm)
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
