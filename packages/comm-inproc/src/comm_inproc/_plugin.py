"""The comm plugin of comm-inproc: the ``inproc`` entry point of ``comm_core.backends``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import comm_core

if TYPE_CHECKING:
    from comm_core.abc import Backend


@comm_core.hookimpl
def comm_register_backends() -> list[type[Backend]]:
    """Provide :class:`~comm_inproc.InProcBackend` for the ``inproc`` scheme."""
    from comm_inproc._backend import InProcBackend

    return [InProcBackend]
