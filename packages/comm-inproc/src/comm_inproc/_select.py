"""Same-process selection: a listener's companion inproc address, and the dialer's way to it.

A ``tcp://`` listener made by ``comm_core.listen()`` (with the ``same_host``
setting on) also listens on a fresh ``inproc://`` address serving the same
session (:class:`InProcOffer`); its greeting carries the address
(``same_host_inproc``) and this process's random token
(``same_host_token``, 128 bits, new after a fork). A dialer whose token is
the same is in the same process: it connects to the inproc address
(:func:`find_path`), and messages are no longer serialized at all.

Both sides need the ``same_process`` setting (off by default): an inproc comm
shares each message with its reader instead of copying it, and refuses
nothing that serialization would, so taking it is not transparent.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from typing import Any, ClassVar

from comm_core import Options
from comm_core.abc import Comm
from comm_core.exceptions import ConnectError
from comm_core.selection import Offer, Path
from comm_core.session import ServerSession
from comm_inproc import _registry
from comm_inproc._address import SCHEME, format_address, new_location, parse_location
from comm_inproc._comm import InProcComm
from comm_inproc._listener import InProcListener

__all__ = ["InProcOffer", "InProcPath", "SelectedInProcComm", "find_path", "offer_for", "token"]

#: The schemes whose listeners get a companion inproc address.
_OFFERED_FOR = frozenset({"tcp"})

_token = secrets.token_hex(16)


def _new_token() -> None:
    global _token
    _token = secrets.token_hex(16)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_token)


def token() -> str:
    """This process's token: equal tokens mean one process."""
    return _token


class InProcOffer(Offer):
    """A companion inproc listener serving *session*, started with the listener."""

    name: ClassVar[str] = "inproc"

    def __init__(self, session: ServerSession) -> None:
        self.session = session
        self.listener: InProcListener | None = None

    async def start(self) -> Mapping[str, Any]:
        listener = InProcListener("", self.session, self.session.deserialize)
        listener.session = self.session  # serves it, without becoming its listener
        await listener.start()
        self.listener = listener
        return {"same_host_inproc": listener.contact_address, "same_host_token": _token}

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()


def offer_for(session: ServerSession, scheme: str, encrypted: bool) -> InProcOffer | None:
    """The offer for a listener on *scheme*, if its ``same_process`` option is on: tcp://
    only (a tls:// listener authenticates its peers, which an inproc connection skips)."""
    if encrypted or scheme not in _OFFERED_FOR or not session.options.same_process:
        return None
    return InProcOffer(session)


class SelectedInProcComm(InProcComm):
    """An inproc comm that ``connect()`` chose for another address (its dialing end's
    ``extra_info`` has ``path`` and ``requested``)."""

    __slots__ = ("requested",)

    requested: str | None

    @property
    def extra_info(self) -> Mapping[str, Any]:
        requested = getattr(self, "requested", None)
        if requested is None:
            return {}
        return {"path": "inproc", "requested": requested}


class InProcPath(Path):
    """The inproc listener of this process that a listener offered."""

    name: ClassVar[str] = "inproc"
    scheme: ClassVar[str] = SCHEME
    rank: ClassVar[int] = 0

    def __init__(self, listener: InProcListener, address: str) -> None:
        self.listener: InProcListener | None = listener
        self.address = address

    async def open(
        self,
        requested: str,
        deserialize: bool,
        options: Options,
        connection_args: Mapping[str, Any],
    ) -> Comm:
        listener, self.listener = self.listener, None
        if listener is None:
            raise ConnectError(f"the path to {self.address} was opened or discarded already")
        client, server = SelectedInProcComm.pair(
            addresses=(format_address(new_location()), listener.contact_address)
        )
        assert isinstance(client, SelectedInProcComm)
        client.requested = requested
        client.deserialize = deserialize
        server.deserialize = listener._deserialize
        listener._accept(server)
        return client

    def discard(self) -> None:
        self.listener = None


def find_path(requested: str, offer: Mapping[str, Any], options: Options) -> InProcPath | None:
    """The offered inproc listener if ``options.same_process`` is on, the offer comes from
    this process (same token) and it still listens; else ``None``."""
    if not options.same_process:
        return None
    address = offer.get("same_host_inproc")
    if type(address) is not str or offer.get("same_host_token") != _token:
        return None
    try:
        listener = _registry.lookup(parse_location(address.removeprefix(f"{SCHEME}://")))
    except Exception:
        return None
    return InProcPath(listener, address)
