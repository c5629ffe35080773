"""The entry point of comm-tcp: registers the tcp backend, imported only when needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import comm_core
from comm_core.abc import Backend

if TYPE_CHECKING:
    from comm_core.cli import DoctorStep


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    from comm_tcp._backend import TCPBackend

    return [TCPBackend]


@comm_core.hookimpl
def comm_cli_doctor_steps(scheme: str) -> Sequence[DoctorStep] | None:
    """``comm doctor`` opens a TCP connection to a tcp:// address (comm-core's step)."""
    if scheme != "tcp":
        return None
    from comm_core.cli import TCP_CONNECT

    return [TCP_CONNECT]
