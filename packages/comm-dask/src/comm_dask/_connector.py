"""Dialing: Dask's ``Connector`` over comm's ``connect()``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta
from distributed.comm.core import CommClosedError, Connector, FatalCommClosedError

import comm_core
from comm_dask._comm import DaskComm

if TYPE_CHECKING:
    from comm_dask._backend import CommBackend

__all__ = ["CommConnector"]


class CommConnector(Connector):
    """Dials a location of *backend*'s transport with :func:`comm_core.connect`.

    Dask's ``connect()`` calls :meth:`connect` in a loop of its own, each attempt
    bounded by part of its ``timeout``, and then runs Dask's handshake on the
    comm. comm's ``connect()`` inside runs comm's handshake (so the connect
    timeout covers it) and retries what a retry may fix until Dask's bound
    cancels it.
    """

    def __init__(self, backend: CommBackend) -> None:
        self.backend = backend

    async def connect(
        self, address: str, deserialize: bool = True, **connection_args: Any
    ) -> DaskComm:
        """Connect to *address* (a location of the backend's scheme) and return a comm.

        Raises:
            FatalCommClosedError: (Dask's) what no retry fixes: a certificate
                refused by either side, a peer that is not a comm endpoint.
            CommClosedError: (Dask's) the peer closed during comm's handshake.
            OSError: comm's :class:`~comm_core.ConnectError` and
                :class:`~comm_core.ConnectTimeoutError` (Dask retries them).
            ValueError: comm's :class:`~comm_core.AddressError` (malformed
                address), and comm-tls's ``TLSConfigurationError`` (no
                ``ssl_context``), at once.
        """
        backend = self.backend
        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
        try:
            comm = await comm_core.connect(
                backend.comm_address(address),
                timeout=timeout,
                deserialize=deserialize,
                options=backend.options,
                **backend.comm_args(connection_args, listening=False),
            )
        except (comm_core.FatalCommClosedError, comm_core.HandshakeError) as exc:
            raise FatalCommClosedError(
                f"connecting to {backend.scheme}://{address}: {exc}"
            ) from exc
        except comm_core.CommClosedError as exc:
            raise CommClosedError(f"connecting to {backend.scheme}://{address}: {exc}") from exc
        return DaskComm(comm, backend, deserialize=deserialize)
