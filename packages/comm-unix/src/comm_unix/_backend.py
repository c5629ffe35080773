"""The unix backend: the one class comm-core needs in order to list the scheme.

comm-core imports every installed backend the first time any backend is needed,
so this module stays light: it imports neither asyncio nor socket. The
connector, the comm and the listener are imported by the first ``connect()``
or ``listen()`` on ``unix://``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from comm_core.abc import Backend, CommHandler, Connector, Listener
from comm_unix._address import SCHEME, check_path, require_unix_sockets

if TYPE_CHECKING:
    from comm_core.stream import StreamComm
    from comm_unix._comm import UnixComm

__all__ = ["UnixBackend"]


class UnixBackend(Backend):
    """The ``unix://`` backend: Unix domain sockets named by absolute paths, or by
    names in Linux's abstract namespace (``unix://@name``)."""

    scheme: ClassVar[str] = SCHEME

    def __init__(self) -> None:
        self._connector: Connector | None = None

    def get_connector(self) -> Connector:
        if self._connector is None:
            from comm_unix._connector import UnixConnector

            self._connector = UnixConnector()
        return self._connector

    def get_listener(
        self, loc: str, handle_comm: CommHandler, deserialize: bool, **connection_args: Any
    ) -> Listener:
        from comm_core.session import options_of
        from comm_unix._comm import UnixComm
        from comm_unix._connector import comm_options
        from comm_unix._listener import UnixListener

        path = check_path(loc, listening=True)
        require_unix_sockets(f"{SCHEME}://{path}")
        args = comm_options(connection_args)
        # The settings listen() resolved, from the session it passes as handle_comm.
        options = options_of(handle_comm)

        def make_comm(on_established: Callable[[StreamComm], None]) -> UnixComm:
            return UnixComm(
                deserialize=deserialize, on_established=on_established, options=options, **args
            )

        backlog = int(connection_args.get("backlog") or 1024)
        same_uid = connection_args.get("same_uid")  # None: the default, True
        return UnixListener(
            path, handle_comm, make_comm, backlog=backlog, same_uid=same_uid is None or same_uid
        )

    def get_address_host(self, loc: str) -> str:
        import socket

        # Every unix comm stays on this machine.
        check_path(loc, listening=True)
        return socket.gethostname()

    def resolve_address(self, loc: str) -> str:
        return check_path(loc, listening=True)  # paths need no resolving

    def get_local_address_for(self, loc: str) -> str:
        check_path(loc, listening=True)
        return ""  # a connecting end has no path of its own
