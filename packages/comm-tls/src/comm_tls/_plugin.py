"""The entry point of comm-tls: registers the tls backend and its part of the ``comm`` command.

Imported whenever comm-core builds its registry, so it imports nothing of the
backend, nor ssl: each hook imports what it needs when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import comm_core
from comm_core.abc import Backend

if TYPE_CHECKING:
    import argparse

    from comm_core.cli import DoctorStep, Parser


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    from comm_tls._backend import TLSBackend

    return [TLSBackend]


@comm_core.hookimpl
def comm_cli_add_options(command: str, parser: Parser) -> None:
    from comm_tls._cli import add_options

    add_options(command, parser)


@comm_core.hookimpl
def comm_cli_connection_args(
    scheme: str,
    backend: Backend,
    options: argparse.Namespace,
    server_side: bool,
    in_process: bool,
    notes: list[str],
) -> Mapping[str, Any] | None:
    from comm_tls._cli import connection_args

    return connection_args(scheme, backend, options, server_side, in_process, notes)


@comm_core.hookimpl
def comm_cli_doctor_steps(scheme: str, backend: Backend) -> Sequence[DoctorStep]:
    from comm_tls._cli import doctor_steps

    return doctor_steps(scheme, backend)
