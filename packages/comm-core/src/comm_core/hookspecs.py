"""The hooks through which a plugin extends comm.

A plugin is a module (or any object) with functions marked
``@comm_core.hookimpl`` whose names match the hooks below. A distribution
publishes its plugin through one entry point in the ``comm_core.backends``
group::

    # pyproject.toml of comm-example
    [project.entry-points."comm_core.backends"]
    example = "comm_example._plugin"

    # comm_example/_plugin.py
    import comm_core

    @comm_core.hookimpl
    def comm_register_backends():
        from comm_example._backend import ExampleBackend  # import lazily
        return [ExampleBackend]

comm's own transports (comm-tcp, comm-tls, comm-inproc) register exactly this
way. Applications and tests can register a plugin or a backend in code with
:func:`comm_core.register_plugin` and :func:`comm_core.register_backend`.

A hook implementation with a name not listed here makes the registry fail with
:class:`~comm_core.exceptions.PluginError`, so a misspelled hook never goes
unnoticed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from comm_core.abc import Backend
    from comm_core.protocol import SerializerFamily

__all__ = [
    "PROJECT_NAME",
    "comm_register_backends",
    "comm_register_serializers",
    "hookimpl",
    "hookspec",
]

#: The pluggy project name shared by specs and implementations.
PROJECT_NAME = "comm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for plugin functions that implement a comm hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def comm_register_backends() -> Sequence[type[Backend]]:  # type: ignore[empty-body]
    """Return the :class:`~comm_core.Backend` subclasses this plugin provides.

    Each class names its URI scheme in its ``scheme`` attribute. Called once,
    when comm first needs a backend, whichever scheme that is: keep the plugin
    module and the module of each returned class light, and import heavy
    dependencies (asyncio, the transport's libraries) in the backend's methods,
    such as ``get_connector()`` and ``get_listener()``.

    Two plugins that return backends for the same scheme make that scheme
    unusable with :class:`~comm_core.exceptions.BackendConflictError`, naming
    both distributions.

    :return: a sequence of ``Backend`` subclasses (may be empty).
    """


@hookspec
def comm_register_serializers() -> Sequence[SerializerFamily]:  # type: ignore[empty-body]
    """Return the :class:`~comm_core.protocol.SerializerFamily` objects this plugin provides.

    Stream transports use them for values msgpack cannot carry. A family whose
    ``trusted_by_default`` is true is used on write and accepted on read
    unless the caller names other families; one that is false (such as
    ``pickle``, which comm-core provides) only when named. Two families with
    one name raise :class:`~comm_core.exceptions.BackendConflictError`.

    :return: a sequence of ``SerializerFamily`` (may be empty).
    """
