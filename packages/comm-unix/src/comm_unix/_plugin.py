"""The plugin that the ``unix`` entry point of ``comm_core.backends`` names.

comm-core imports this module the first time it needs a backend, so it stays
light: the backend's own modules are imported inside the hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import comm_core
from comm_core.abc import Backend


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    """Provide :class:`~comm_unix.UnixBackend` for the ``unix`` scheme."""
    from comm_unix._backend import UnixBackend

    return [UnixBackend]
