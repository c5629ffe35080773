"""Registering comm's other transports with Dask, by code."""

from __future__ import annotations

from distributed.comm import registry

import comm_core
from comm_dask._backend import CommBackend, dask_scheme

__all__ = ["register_backends"]


def register_backends() -> list[str]:
    """Make every installed comm transport a Dask scheme, ``comm+<scheme>``.

    ``comm+tcp``, ``comm+tls`` and ``comm+inproc`` need no call: comm-dask's
    entry points name them. A transport of another distribution (such as
    ``comm-unix``) becomes ``comm+unix`` once this runs in the process (for
    Dask's command line: in a preload). Schemes that Dask already knows are left
    alone. Returns the schemes it added.

    Raises:
        comm_core.PluginError: a comm plugin is broken (as for any comm lookup).
    """
    added = []
    for scheme in sorted(comm_core.backends()):
        name = dask_scheme(scheme)
        if name not in registry.backends:
            registry.backends[name] = CommBackend(scheme)
            added.append(name)
    return added
