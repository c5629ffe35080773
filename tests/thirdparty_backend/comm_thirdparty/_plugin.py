"""The plugin published through the ``comm_core.backends`` entry point."""

from __future__ import annotations

import comm_core


@comm_core.hookimpl
def comm_register_backends() -> list[type[comm_core.Backend]]:
    from comm_thirdparty._backend import ThirdPartyBackend

    return [ThirdPartyBackend]
