"""The plugin that the ``unix`` entry point of ``comm_core.backends`` names.

comm-core imports this module the first time it needs a backend, so it stays
light: the backend's own modules are imported inside the hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import comm_core
from comm_core.abc import Backend

if TYPE_CHECKING:
    from comm_core.cli import DoctorStep
    from comm_core.selection import Offer, Path
    from comm_core.session import ServerSession


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    """Provide :class:`~comm_unix.UnixBackend` for the ``unix`` scheme."""
    from comm_unix._backend import UnixBackend

    return [UnixBackend]


@comm_core.hookimpl
def comm_cli_doctor_steps(scheme: str, backend: Backend) -> Sequence[DoctorStep] | None:
    """``comm doctor unix://...`` connects a plain socket first and says who listens."""
    from comm_unix._cli import doctor_steps

    return doctor_steps(scheme)


@comm_core.hookimpl
def comm_same_host_offer(session: ServerSession, scheme: str, encrypted: bool) -> Offer | None:
    """A tcp:// or ws:// listener also listens on a fresh Unix socket serving the same
    handler."""
    from comm_unix._select import offer_for

    return offer_for(session, scheme, encrypted)


@comm_core.hookimpl
def comm_same_host_path(requested: str, offer: Mapping[str, Any]) -> Path | None:
    """The offered Unix socket, connected and verified by its peer credentials."""
    if "same_host_unix" not in offer:
        return None
    from comm_unix._select import find_path

    return find_path(requested, offer)
