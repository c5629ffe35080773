"""The Dask backend that serves one comm transport: addresses, connection arguments, options.

Dask creates one backend per scheme (``comm+tcp``, ...) through the entry points
of ``distributed.comm.backends`` and asks it for connectors, listeners and
facts about addresses. Each question about an address goes to comm's backend of
the transport, with the location translated between Dask's conventions and
comm's (see :meth:`CommBackend.listen_location`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from distributed.comm.registry import Backend as DaskBackend

import comm_core
from comm_core import Capability

if TYPE_CHECKING:
    from comm_dask._connector import CommConnector
    from comm_dask._listener import CommListener

__all__ = ["PREFIX", "CommBackend", "dask_scheme"]

#: What comm-dask puts before a comm scheme to make Dask's scheme: ``comm+tcp``.
PREFIX = "comm+"

#: The connection arguments Dask passes that comm's ``connect()``/``listen()`` take as they are.
_PASSED_ON = ("ssl_context", "server_hostname")


def dask_scheme(comm_scheme: str) -> str:
    """Dask's scheme for comm's transport *comm_scheme*: ``"tcp"`` -> ``"comm+tcp"``."""
    return f"{PREFIX}{comm_scheme}"


class CommBackend(DaskBackend):
    """A Dask backend (``distributed.comm.registry.Backend``) over comm's transport
    *comm_scheme*, under Dask's scheme *scheme* (default ``comm+<comm_scheme>``).

    Addresses that Dask hands it are ``scheme://location``; comm sees
    ``comm_scheme://location``, the location translated for listening (Dask's
    wildcards, a missing port). Comms and listeners report their addresses under
    *scheme*.

    Raises (from its methods): comm's :class:`~comm_core.AddressError` (a
    ``ValueError``, as Dask expects) for a malformed location, and
    :class:`~comm_core.UnknownSchemeError` when no comm transport serves
    *comm_scheme* (its message names the distribution to install).
    """

    def __init__(self, comm_scheme: str, scheme: str | None = None) -> None:
        self.comm_scheme = comm_scheme
        self.scheme = scheme if scheme is not None else dask_scheme(comm_scheme)
        self._options: comm_core.Options | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.scheme}:// over comm's {self.comm_scheme}://>"

    # -- comm's side ------------------------------------------------------------------

    @property
    def comm_backend(self) -> comm_core.Backend:
        """comm's backend of :attr:`comm_scheme` (looked up on each use; comm caches it)."""
        return comm_core.get_backend(self.comm_scheme)

    @property
    def host_port(self) -> bool:
        """Whether the transport's locations are ``host:port``."""
        return isinstance(self.comm_backend, comm_core.HostPortBackend)

    @property
    def in_process(self) -> bool:
        """Whether the transport never leaves the process (inproc)."""
        return Capability.IN_PROCESS in self.comm_backend.capabilities

    @property
    def options(self) -> comm_core.Options:
        """The comm options of every comm and listener of this backend, made on first use.

        comm's settings, but ``max_message_size`` is at least half this machine's
        memory, as Dask's tcp allows: Dask sends a task's result as one message,
        however large (comm's default is 1 GiB).
        """
        options = self._options
        if options is None:
            from distributed.system import MEMORY_LIMIT

            options = comm_core.Options()
            floor = int(MEMORY_LIMIT // 2)
            if options.max_message_size < floor:
                options = options.replace(max_message_size=floor)
            self._options = options
        return options

    def comm_address(self, location: str) -> str:
        """comm's address of a location of this backend."""
        return f"{self.comm_scheme}://{location}"

    def dask_address(self, comm_address: str) -> str:
        """Dask's address of a comm address of this transport: ``tcp://h:p`` ->
        ``comm+tcp://h:p``."""
        _, location = comm_core.parse_address(comm_address)
        return f"{self.scheme}://{location}"

    def listen_location(self, location: str) -> str:
        """comm's location to listen on for Dask's *location*.

        For ``host:port`` transports, as Dask's tcp reads them: no port, an empty
        port or ``*`` is port 0 (a free port); no host or ``*`` is every
        interface. Others: unchanged.

        Raises:
            AddressError: the location is malformed.
        """
        if not self.host_port:
            return location
        host, port = _split_host_port(location)
        if host == "*":
            host = ""
        if port in ("", "*"):
            port = "0"
        if not port.isdigit():
            raise comm_core.AddressError(
                f"malformed address {self.scheme}://{location}: the port {port!r} is not a number"
            )
        return comm_core.unparse_host_port(host, int(port))

    def comm_args(self, connection_args: Mapping[str, Any], *, listening: bool) -> dict[str, Any]:
        """comm's connection arguments from those Dask passes (a ``Security``'s among them).

        ``ssl_context`` (what ``Security.get_connection_args``/``get_listen_args``
        make; ``None`` when TLS is not configured) and ``server_hostname`` are
        passed on; ``require_encryption`` becomes comm's; the entries of
        ``extra_conn_args`` (a dict, ``Security(extra_conn_args=...)``) are passed
        on as they are, for comm's transport to read (comm-tls's ``security=``,
        for instance). Dask's other arguments are for Dask's own transports.
        """
        args: dict[str, Any] = {}
        for name in _PASSED_ON:
            value = connection_args.get(name)
            if value is not None and not (listening and name == "server_hostname"):
                args[name] = value
        if connection_args.get("require_encryption"):
            args["require_encryption"] = True
        extra = connection_args.get("extra_conn_args")
        if isinstance(extra, Mapping):
            args.update(extra)
        return args

    # -- Dask's Backend ----------------------------------------------------------------

    def get_connector(self) -> CommConnector:
        from comm_dask._connector import CommConnector

        return CommConnector(self)

    def get_listener(
        self, loc: str, handle_comm: Any, deserialize: bool, **connection_args: Any
    ) -> CommListener:
        from comm_dask._listener import CommListener

        return CommListener(self, loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc: str) -> str:
        return self.comm_backend.get_address_host(loc)

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        if not self.host_port:
            # Dask's own convention for addresses without a port: its
            # get_address_host_port() turns this into a ValueError.
            raise NotImplementedError(f"{self.scheme}:// addresses have no port")
        return self.comm_backend.get_address_host_port(loc)

    def resolve_address(self, loc: str) -> str:
        return self.comm_backend.resolve_address(loc)

    def get_local_address_for(self, loc: str) -> str:
        return self.comm_backend.get_local_address_for(loc)


def _split_host_port(location: str) -> tuple[str, str]:
    """``host:port`` -> ``("host", "port")``, IPv6 hosts in brackets; the port may be
    missing (``""``).

    Raises:
        AddressError: unbalanced brackets, or an IPv6 host without them.
    """
    if location.startswith("["):
        host, bracket, tail = location[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise comm_core.AddressError(f"malformed address {location!r}: write [ipv6]:port")
        return host, tail[1:]
    host, _, port = location.rpartition(":") if ":" in location else (location, "", "")
    if ":" in host:
        raise comm_core.AddressError(
            f"malformed address {location!r}: an IPv6 host needs brackets, as in [::1]:8786"
        )
    return host, port
