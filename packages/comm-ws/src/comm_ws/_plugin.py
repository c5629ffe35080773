"""The entry point of comm-ws: registers the ws and wss backends.

Imported whenever comm-core builds its registry, so it imports nothing of the
backends here: the hook imports them when called. The ``comm`` command's TLS
options (``--ca``, ``--cert``, ...) reach ``wss://`` through comm-tls's own
command hooks, which serve every encrypted backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import comm_core
from comm_core.abc import Backend

if TYPE_CHECKING:
    import argparse


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    from comm_ws._backend import WSBackend, WSSBackend

    return [WSBackend, WSSBackend]


#: The ``dest`` of comm-tls's command options: given any, comm-tls configures ``wss://``.
_TLS_OPTIONS = ("ca", "cert", "key", "temporary_credentials", "no_check_hostname", "no_client_cert")


@comm_core.hookimpl
def comm_cli_connection_args(
    scheme: str, options: argparse.Namespace, in_process: bool
) -> Mapping[str, Any] | None:
    """``comm bench wss``, measured in one process with no TLS option given, uses throwaway
    credentials, as ``comm bench tls`` does; otherwise comm-tls's options configure wss."""
    if scheme != "wss" or not in_process:
        return None
    if any(getattr(options, name, None) for name in _TLS_OPTIONS):
        return None
    from comm_tls import Security

    return {"security": Security.temporary()}
