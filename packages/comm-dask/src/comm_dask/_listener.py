"""Listening: Dask's ``Listener`` over comm's ``listen()``."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from distributed.comm.core import BaseListener, CommClosedError

import comm_core
from comm_core.sockets import WILDCARD_HOSTS
from comm_dask._comm import DaskComm

if TYPE_CHECKING:
    from comm_dask._backend import CommBackend

__all__ = ["CommListener"]

logger = logging.getLogger("comm_dask")


class CommListener(BaseListener):
    """A Dask listener over a comm listener of *backend*'s transport.

    Each comm that completes comm's handshake becomes a :class:`DaskComm`, runs
    Dask's handshake (``Listener.on_connection``), then goes to *handle_comm*.
    ``stop()`` stops comm's listener: comms already accepted are still served,
    and Dask aborts those in Dask's handshake (``abort_handshaking_comms``).

    *allow_offload* is set on each comm (Dask's ``Server.listen`` passes it);
    *default_host* is the host of the contact address of a listener on every
    interface (Dask's worker passes it); other connection arguments are read as
    :meth:`CommBackend.comm_args` says.
    """

    def __init__(
        self,
        backend: CommBackend,
        loc: str,
        handle_comm: Any,
        deserialize: bool = True,
        allow_offload: bool = True,
        default_host: str | None = None,
        **connection_args: Any,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.location = backend.listen_location(loc)
        self.handle_comm = handle_comm
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.default_host = default_host
        self._args = backend.comm_args(connection_args, listening=True)
        self.listener: comm_core.Listener | None = None

    async def start(self) -> None:
        """Listen.

        Raises:
            OSError: comm's :class:`~comm_core.ConnectError`, with the ``errno``
                of the OS's error (Dask's worker tries the next port on
                ``EADDRINUSE``).
            ValueError: a malformed address; no ``ssl_context`` for tls.
        """
        listener = comm_core.listen(
            self.backend.comm_address(self.location),
            self._serve,
            deserialize=self.deserialize,
            options=self.backend.options,
            **self._args,
        )
        try:
            await listener.start()
        except comm_core.ConnectError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno is not None and exc.errno is None:
                raise OSError(cause.errno, str(exc)) from exc
            raise
        self.listener = listener

    def stop(self) -> None:
        """Stop accepting. Never raises; idempotent."""
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()

    @property
    def prefix(self) -> str:
        """``scheme://``: Dask's worker reads it to log where it listens."""
        return f"{self.backend.scheme}://"

    def _started(self) -> comm_core.Listener:
        if self.listener is None:
            raise ValueError(f"{self.backend.scheme}:// listener on {self.location!r} not started")
        return self.listener

    @property
    def listen_address(self) -> str:
        """Where it listens, in Dask's scheme; every interface shows as ``0.0.0.0``, as
        over Dask's tcp."""
        location = comm_core.parse_address(self._started().listen_address)[1]
        if self.backend.host_port:
            host, port = comm_core.parse_host_port(location)
            if host == "":
                location = comm_core.unparse_host_port("0.0.0.0", port)
        return f"{self.backend.scheme}://{location}"

    @property
    def contact_address(self) -> str:
        """An address that peers dial (for a listener on every interface: this machine's
        primary address, or *default_host*)."""
        listener = self._started()
        if self.default_host and self.backend.host_port:
            host, port = comm_core.parse_host_port(
                comm_core.parse_address(listener.listen_address)[1]
            )
            if host in WILDCARD_HOSTS:
                return f"{self.backend.scheme}://" + comm_core.unparse_host_port(
                    self.default_host, port
                )
        return self.backend.dask_address(listener.contact_address)

    def get_host_port(self) -> tuple[str, int]:
        """The host and port listened on (host:port transports), as Dask's tcp listener
        has them.

        Raises:
            ValueError: not started, or the transport has no ports.
        """
        location = comm_core.parse_address(self.listen_address)[1]
        return comm_core.parse_host_port(location)

    async def _serve(self, comm: comm_core.Comm) -> None:
        """comm's handler: Dask's handshake, then Dask's handler."""
        dask_comm = DaskComm(comm, self.backend, deserialize=self.deserialize)
        dask_comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(dask_comm)
        except CommClosedError:
            logger.info("connection from %s closed before Dask's handshake", dask_comm.peer_address)
            dask_comm.abort()
            return
        result = self.handle_comm(dask_comm)
        if inspect.isawaitable(result):
            await result
