"""Same-host paths: how ``connect("tcp://...")`` takes a faster path without an address change.

comm-core knows no transport, so the paths come from plugins, through two
hooks (see :mod:`comm_core.hookspecs`):

* ``comm_same_host_offer``: when a listener that :func:`comm_core.listen` made
  starts (with the ``same_host`` setting on), each plugin may return an
  :class:`Offer`: a companion listener of its own that serves the same
  handler, and the handshake entries that tell a dialer how to reach it and
  how to prove that it did (entries whose names start with
  :data:`OFFER_PREFIX`). The listener's greeting carries them.
* ``comm_same_host_path``: when :func:`comm_core.connect` has read such a
  greeting, each plugin may return a :class:`Path`: a connection it has
  *already opened and verified*, synchronously (comm-unix: connected to the
  offered socket, and the kernel's peer credentials match the offer), or
  ``None``. comm-core takes the preferred one (lowest :attr:`Path.rank`),
  aborts the connection it dialled (whose own handshake message has not left
  yet, so the listener sees a connection close before its preamble: the
  handler never sees it), and runs the comm handshake over the path. If that
  fails, it dials the requested address again: nothing is lost.

A verified offer is remembered per requested address, so the next
``connect()`` to it asks the plugins for a path before dialling at all (they
verify it again each time); a path that fails is forgotten. It is remembered
with the connection arguments it was learnt with, and only a ``connect()``
with the same ones (the same objects, or equal ones) uses it: an offer that a
tls:// listener made to one client identity (``security=``) is never used by
another, nor by a ``connect()`` that would not have trusted that listener.

Only comm-core calls these functions; plugins implement :class:`Offer` and
:class:`Path`.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from comm_core._options import Options
from comm_core._registry import get_registry
from comm_core.abc import Capability
from comm_core.exceptions import PluginError

if TYPE_CHECKING:
    from comm_core.abc import Comm, Listener

__all__ = [
    "OFFER_PREFIX",
    "Offer",
    "Path",
    "choose_path",
    "forget_paths",
    "known_offer",
    "offer_of",
    "remember_offer",
    "start_offers",
]

logger = logging.getLogger("comm_core.selection")

#: Every handshake entry of an offer has a name that starts with this.
OFFER_PREFIX = "same_host_"

#: Most requested addresses whose verified offers are remembered.
_CACHE_SIZE = 1024
# requested address -> (offer, the connection arguments it was learnt with: held, so
# that no other object takes their identity while they are remembered)
_cache: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()
_cache_lock = threading.Lock()  # connect() may run on loops of several threads


class Offer(ABC):
    """A faster path a listener offers to dialers on its host (or in its process).

    A plugin's ``comm_same_host_offer`` returns one, unstarted. comm-core
    starts it before the listener itself, and stops it when the listener
    stops.
    """

    #: A short name for log lines, such as ``"unix"``.
    name: ClassVar[str] = "same-host"

    @abstractmethod
    async def start(self) -> Mapping[str, Any]:
        """Start serving the path; return the handshake entries that describe it.

        Every key starts with :data:`OFFER_PREFIX`; values follow the rules of
        a handshake message (scalars, lists of scalars).

        Raises:
            Exception: the path cannot be served; comm-core logs it and the
                listener offers nothing from this plugin (it still starts).
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop serving the path (comms already made stay open). Idempotent; never raises."""

    #: Whether :meth:`entries_for` adds entries of its own to each comm's greeting
    #: (the listener then makes every greeting when its comm's connection is up).
    per_comm: bool = False

    def entries_for(self, comm: Comm) -> Mapping[str, Any]:
        """Entries for the greeting of *comm* alone, such as a credential for that peer.

        Asked only if :attr:`per_comm`, once for each comm the listener accepts,
        when its connection is up (a tls:// comm: after the TLS handshake, so
        ``comm.extra_info`` holds the peer's certificate) and just before its
        greeting leaves. Keys follow the rules of :meth:`start`'s. The default
        adds nothing. Must not raise.
        """
        return {}


class Path(ABC):
    """A connection to a listener's offered path, opened and verified, not yet a comm.

    A plugin's ``comm_same_host_path`` returns one. comm-core either
    :meth:`open`\\ s it (the one it chose) or :meth:`discard`\\ s it.
    """

    #: A short name, shown as ``comm.extra_info["path"]``, such as ``"unix"``.
    name: ClassVar[str] = "same-host"
    #: The scheme of the comm :meth:`open` returns (``require_encryption`` checks its backend).
    scheme: ClassVar[str] = ""
    #: Preference: comm-core takes the path of lowest rank (inproc 0, unix 10).
    rank: ClassVar[int] = 100

    #: The address the path reached, such as ``"unix://@1f2a3"``.
    address: str = ""

    @abstractmethod
    async def open(
        self,
        requested: str,
        deserialize: bool,
        options: Options,
        connection_args: Mapping[str, Any],
    ) -> Comm:
        """Make the comm over this path (before its comm handshake, which comm-core runs).

        The comm's ``extra_info`` holds ``path`` (:attr:`name`) and
        ``requested`` (*requested*, the address given to ``connect()``).

        Raises:
            OSError: the connection failed meanwhile (comm-core then dials
                *requested* again).
        """

    @abstractmethod
    def discard(self) -> None:
        """Close the connection: another path was chosen, or none. Idempotent."""

    def handshake_entries(self) -> Mapping[str, Any]:
        """Entries this side's comm handshake over the path adds (a credential the
        listener asks for, such as a token its greeting handed out); default none.

        The listener's reply may renew ``same_host_*`` entries (a fresh token):
        comm-core remembers the offer with them for the next ``connect()``.
        """
        return {}


# -- the listener's side --------------------------------------------------------------


async def start_offers(
    listener: Listener, session: Any, scheme: str, encrypted: bool
) -> tuple[list[Offer], dict[str, Any]]:
    """Start the offers plugins make for *listener*, served by *session* (its
    :class:`~comm_core.session.ServerSession`); return them and their entries.

    A plugin that fails is logged (warning) and offers nothing; the listener
    is never refused for it.
    """
    offers: list[Offer] = []
    entries: dict[str, Any] = {}
    for impl in get_registry().implementations("comm_same_host_offer"):
        offer: Offer | None = None
        try:
            offer = impl.call(
                listener=listener, session=session, scheme=scheme, encrypted=encrypted
            )
            if offer is None:
                continue
            if not isinstance(offer, Offer):
                raise PluginError(f"returned {offer!r}, not a comm_core.selection.Offer")
            made = await offer.start()
            for key in made:
                if not isinstance(key, str) or not key.startswith(OFFER_PREFIX):
                    raise PluginError(f"offer entry {key!r} does not start with {OFFER_PREFIX!r}")
                if key in entries:
                    raise PluginError(f"offer entry {key!r} is another plugin's already")
        except Exception as exc:
            if offer is not None:
                offer.stop()
            logger.warning(
                "%s offers no same-host path for %s: %s: %s",
                impl.describe(),
                scheme,
                type(exc).__name__,
                exc,
            )
            continue
        offers.append(offer)
        entries.update(made)
    return offers, entries


# -- the dialer's side ----------------------------------------------------------------


def offer_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The offer entries of a peer's handshake *info* (empty: it offers nothing)."""
    return {key: value for key, value in info.items() if key.startswith(OFFER_PREFIX)}


def _same_args(remembered: Mapping[str, Any], given: Mapping[str, Any]) -> bool:
    if remembered.keys() != given.keys():
        return False
    for name, value in given.items():
        known = remembered[name]
        if known is value:
            continue
        try:
            if not bool(known == value):
                return False
        except Exception:  # a value that cannot say: not the same
            return False
    return True


def known_offer(
    requested: str, connection_args: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The offer remembered for *requested*, if a path to it was verified before with
    *connection_args* (``None``: with any)."""
    with _cache_lock:
        entry = _cache.get(requested)
    if entry is None:
        return None
    offer, remembered = entry
    if connection_args is not None and not _same_args(remembered, connection_args):
        return None
    return offer


def remember_offer(
    requested: str, offer: dict[str, Any], connection_args: Mapping[str, Any] | None = None
) -> None:
    """Remember *offer*, which led to a verified path, for the next ``connect()`` to
    *requested* with the same *connection_args*."""
    with _cache_lock:
        _cache[requested] = (offer, dict(connection_args or {}))
        _cache.move_to_end(requested)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def forget_paths(requested: str | None = None) -> None:
    """Forget the offer remembered for *requested* (``None``: every one)."""
    with _cache_lock:
        if requested is None:
            _cache.clear()
        else:
            _cache.pop(requested, None)


def choose_path(
    requested: str,
    offer: Mapping[str, Any],
    options: Options,
    connection_args: Mapping[str, Any],
) -> Path | None:
    """Ask the plugins for a verified path to the listener that made *offer*; take the best.

    Synchronous on purpose: comm-core calls it in the same step as the
    handshake that brought *offer* ends, before the dialled connection sends
    anything. A path whose backend does not encrypt is not taken when
    ``options.require_encryption`` (an in-process one is). A plugin that
    raises is logged and skipped.
    """
    if not offer:
        return None
    found: list[Path] = []
    registry = get_registry()
    for impl in registry.implementations("comm_same_host_path"):
        try:
            path = impl.call(
                requested=requested,
                offer=offer,
                options=options,
                connection_args=connection_args,
            )
        except Exception as exc:
            logger.warning(
                "%s failed choosing a same-host path to %s: %s: %s",
                impl.describe(),
                requested,
                type(exc).__name__,
                exc,
            )
            continue
        if path is None:
            continue
        if not isinstance(path, Path):
            logger.warning("%s returned %r, not a comm_core.selection.Path", impl.describe(), path)
            continue
        found.append(path)
    if not found:
        return None
    found.sort(key=lambda path: path.rank)
    chosen: Path | None = None
    for path in found:
        if chosen is None and _allowed(path, options):
            chosen = path
        else:
            path.discard()
    return chosen


def _allowed(path: Path, options: Options) -> bool:
    if not options.require_encryption:
        return True
    try:
        capabilities = get_registry().get_backend(path.scheme).capabilities
    except Exception:
        return False
    return Capability.ENCRYPTED in capabilities or Capability.IN_PROCESS in capabilities
