"""The entry point of comm-tls: registers the tls backend, imported only when needed."""

from __future__ import annotations

from collections.abc import Sequence

import comm_core
from comm_core.abc import Backend


@comm_core.hookimpl
def comm_register_backends() -> Sequence[type[Backend]]:
    from comm_tls._backend import TLSBackend

    return [TLSBackend]
