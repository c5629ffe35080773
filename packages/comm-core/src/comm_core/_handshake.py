"""The asyncio half of :func:`~comm_core.connect` and :func:`~comm_core.listen`.

The comm handshake, ``connect()``'s retry loop and the handler that runs the
handshake for each comm a listener accepts. :mod:`comm_core._api` imports this
module on the first ``connect()`` or ``listen()``, so that ``import comm_core``
and looking up a backend import neither asyncio nor logging.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from comm_core._compat import timeout_after
from comm_core._config import get_setting
from comm_core._version import PROTOCOL_VERSION, __version__
from comm_core.abc import Comm, Connector, Listener
from comm_core.exceptions import (
    CommClosedError,
    ConnectError,
    ConnectTimeoutError,
    FatalCommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    IncompatibleProtocolError,
    ProtocolError,
)

if TYPE_CHECKING:
    from comm_core._api import UserHandler

__all__ = ["ServerHandshake", "connect_until", "handshake"]

logger = logging.getLogger("comm_core")


# -- the handshake ---------------------------------------------------------------------


def _local_info(comm: Comm, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    info: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "library": "comm-core"}
    info["version"] = __version__
    info.update(comm.handshake_options())
    if overrides:
        info.update(overrides)
    return info


async def handshake(
    comm: Comm, overrides: Mapping[str, Any] | None, timeout: float, who: str | Callable[[], str]
) -> None:
    """Send our info and read the peer's; abort *comm* on any failure.

    A listener's stream comms sent their info with the preamble already
    (:meth:`ServerHandshake.greeting`); they only read, and if the peer's
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


async def connect_until(
    connector: Connector,
    addr: str,
    loc: str,
    budget: float,
    hs_timeout: float,
    deserialize: bool,
    handshake_overrides: Mapping[str, Any] | None,
    connection_args: dict[str, Any],
) -> Comm:
    """Dial *loc* with *connector* and handshake, retrying, for at most *budget* seconds.

    The body of :func:`comm_core.connect`, which has checked the address and the
    arguments; see there for what it raises.
    """
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
                await handshake(comm, handshake_overrides, min(hs_timeout, remaining), who)
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


class ServerHandshake:
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
            await handshake(comm, self.overrides, self.timeout, lambda: self._who(comm))
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
