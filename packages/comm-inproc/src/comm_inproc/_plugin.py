"""The comm plugin of comm-inproc: the ``inproc`` entry point of ``comm_core.backends``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import comm_core

if TYPE_CHECKING:
    from comm_core import Options
    from comm_core.abc import Backend
    from comm_core.selection import Offer, Path
    from comm_core.session import ServerSession


@comm_core.hookimpl
def comm_register_backends() -> list[type[Backend]]:
    """Provide :class:`~comm_inproc.InProcBackend` for the ``inproc`` scheme."""
    from comm_inproc._backend import InProcBackend

    return [InProcBackend]


@comm_core.hookimpl
def comm_same_host_offer(session: ServerSession, scheme: str, encrypted: bool) -> Offer | None:
    """A tcp:// listener also listens on a fresh inproc address serving the same handler."""
    from comm_inproc._select import offer_for

    return offer_for(session, scheme, encrypted)


@comm_core.hookimpl
def comm_same_host_path(requested: str, offer: Mapping[str, Any], options: Options) -> Path | None:
    """The offered inproc listener, if the offer comes from this process (and the
    ``same_process`` setting is on)."""
    if "same_host_inproc" not in offer or not options.same_process:
        return None
    from comm_inproc._select import find_path

    return find_path(requested, offer, options)
