"""comm: message-oriented communication for Python distributed systems.

Connect to an address and exchange Python objects::

    import comm_core

    async def echo(comm):
        async for msg in comm:
            await comm.write(msg)

    async with comm_core.listen("tcp://127.0.0.1:0", echo) as listener:
        async with await comm_core.connect(listener.contact_address) as comm:
            await comm.write({"op": "ping"})
            print(await comm.read())

Transports are separate distributions (comm-tcp, comm-tls, comm-inproc, or a
third party's comm-<name>) found through the ``comm_core.backends`` entry
point group. Importing comm_core imports no transport and scans nothing; the
registry is built on first use. Neither importing it nor looking up a backend
imports asyncio, ssl or msgpack: the first connect() or listen() does.
"""

from typing import TYPE_CHECKING

from comm_core import exceptions
from comm_core._addressing import (
    normalize_address,
    parse_address,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)
from comm_core._api import (
    connect,
    get_address_host,
    get_address_host_port,
    get_local_address_for,
    listen,
    resolve_address,
)
from comm_core._config import SETTINGS, Setting, configure, get_setting
from comm_core._families import serializer_families
from comm_core._hostport import ComposedBackend, HostPortBackend
from comm_core._lazy import imported_on_use, lazy_exports
from comm_core._options import Options
from comm_core._registry import (
    ENTRY_POINT_GROUP,
    BackendInfo,
    BrokenPlugin,
    HookImplementation,
    Registry,
    backends,
    get_backend,
    get_registry,
    register_backend,
    register_plugin,
)
from comm_core._version import PROTOCOL_VERSION, __version__
from comm_core.abc import Backend, Capability, Comm, CommHandler, Connector, Listener
from comm_core.exceptions import (
    AddressError,
    BackendConflictError,
    BackendError,
    CommClosedError,
    CommError,
    ConnectError,
    ConnectTimeoutError,
    EncryptionRequiredError,
    FatalCommClosedError,
    HandshakeError,
    HandshakeTimeoutError,
    HostNotFoundError,
    IncompatibleProtocolError,
    MessageTooLargeError,
    PluginError,
    ProtocolError,
    SerializationError,
    UnknownSchemeError,
)
from comm_core.hookspecs import hookimpl

if TYPE_CHECKING:
    from comm_core._ratelimit import LogLimiter

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROTOCOL_VERSION",
    "SETTINGS",
    "AddressError",
    "Backend",
    "BackendConflictError",
    "BackendError",
    "BackendInfo",
    "BrokenPlugin",
    "Capability",
    "Comm",
    "CommClosedError",
    "CommError",
    "CommHandler",
    "ComposedBackend",
    "ConnectError",
    "ConnectTimeoutError",
    "Connector",
    "EncryptionRequiredError",
    "FatalCommClosedError",
    "HandshakeError",
    "HandshakeTimeoutError",
    "HookImplementation",
    "HostNotFoundError",
    "HostPortBackend",
    "IncompatibleProtocolError",
    "Listener",
    "LogLimiter",
    "MessageTooLargeError",
    "Options",
    "PluginError",
    "ProtocolError",
    "Registry",
    "SerializationError",
    "Setting",
    "UnknownSchemeError",
    "__version__",
    "backends",
    "configure",
    "connect",
    "exceptions",
    "get_address_host",
    "get_address_host_port",
    "get_backend",
    "get_local_address_for",
    "get_registry",
    "get_setting",
    "hookimpl",
    "imported_on_use",
    "lazy_exports",
    "listen",
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "register_backend",
    "register_plugin",
    "resolve_address",
    "serializer_families",
    "unparse_address",
    "unparse_host_port",
]

#: Submodules reachable as attributes without being imported first (the first comm
#: imports them: they need msgpack or asyncio).
_SUBMODULES = frozenset({"message", "protocol", "session", "sockets", "stream", "transport"})


def _import_submodule(name: str) -> object:
    """``comm_core.message``, ``.protocol``, ``.session``, ``.sockets``, ``.stream`` and
    ``.transport``, imported on first access; so is :class:`LogLimiter` (it needs
    :mod:`logging`)."""
    if name in _SUBMODULES:
        from importlib import import_module

        return import_module(f"{__name__}.{name}")
    if name == "LogLimiter":
        from comm_core._ratelimit import LogLimiter

        return LogLimiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not TYPE_CHECKING:  # type checkers see the real submodules, and no catch-all
    __getattr__ = _import_submodule


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
