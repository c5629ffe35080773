"""The plugin that the ``unix`` entry point of ``comm_core.backends`` names.

comm-core imports this module the first time it needs a backend, so it stays
light: the backend's own modules are imported inside the hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import comm_core
from comm_core.abc import Backend

if TYPE_CHECKING:
    from comm_core.cli import DoctorStep


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
