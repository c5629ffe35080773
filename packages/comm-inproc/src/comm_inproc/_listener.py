"""The inproc listener: an entry in the process-wide address table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from comm_core.abc import CommHandler, Listener
from comm_core.exceptions import ConnectError
from comm_inproc import _registry
from comm_inproc._address import Location, format_address, parse_location
from comm_inproc._comm import InProcComm

__all__ = ["InProcListener"]

logger = logging.getLogger("comm_inproc")

_get_running_loop = asyncio._get_running_loop


class InProcListener(Listener):
    """Accepts inproc connections on an ``inproc://<host>/<pid>/<n>`` address.

    Listening on ``inproc://`` (an empty location) picks a fresh address when
    started. The listener belongs to the event loop that starts it: each
    accepted comm is handed to *handle_comm* in a new task on that loop, even
    when the peer connects from another thread. A stopped listener may be
    started again, on the same address.

    Args:
        loc: ``"<host>/<pid>/<n>"`` of this process, or ``""`` for a fresh one.
        handle_comm: awaited once for each accepted comm, in a task of its own.
        deserialize: the ``deserialize`` flag of accepted comms (no effect).

    Raises:
        AddressError: *loc* is malformed.
    """

    def __init__(self, loc: str, handle_comm: CommHandler, deserialize: bool = True) -> None:
        self._location: Location | None = parse_location(loc) if loc else None
        self._address: str | None = None
        self._handle_comm = handle_comm
        self._deserialize = deserialize
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = False
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Start accepting on the address; idempotent.

        Raises:
            ConnectError: the address is in use, or is not an address of this process.
        """
        if self._accepting:
            return
        self._loop = asyncio.get_running_loop()
        location = _registry.bind(self, self._location)
        self._location = location
        self._address = format_address(location)
        self._accepting = True

    def stop(self) -> None:
        """Stop accepting: the address is free again and connecting to it is refused.

        Comms already accepted stay open. Idempotent; never raises.
        """
        if self._accepting:
            self._accepting = False
            assert self._location is not None
            _registry.unbind(self._location, self)
        super().stop()

    @property
    def listen_address(self) -> str:
        """The ``inproc://`` address listened on (the same as :attr:`contact_address`)."""
        return self.contact_address

    @property
    def contact_address(self) -> str:
        """The ``inproc://<host>/<pid>/<n>`` address to connect to.

        Raises:
            ValueError: the listener was started on ``inproc://`` and not yet started.
        """
        if self._address is None:
            if self._location is None:
                raise ValueError("an inproc listener on 'inproc://' has no address until started")
            self._address = format_address(self._location)
        return self._address

    @property
    def extra_info(self) -> Mapping[str, Any]:
        """``{"handlers_running": n}``: accepted comms whose handler has not returned yet."""
        return {"handlers_running": len(self._tasks)}

    # -- called by the connector -----------------------------------------------------

    def _accept(self, comm: InProcComm) -> None:
        """Hand *comm* to the handler on this listener's loop; may be called from any thread.

        Raises:
            ConnectError: the listener's event loop is closed.
        """
        loop = self._loop
        assert loop is not None
        if loop is _get_running_loop():
            self._spawn(comm)
            return
        try:
            loop.call_soon_threadsafe(self._spawn, comm)
        except RuntimeError as exc:  # the listener's loop is closed
            comm.abort()
            raise ConnectError(
                f"connection refused: the event loop of the listener on "
                f"{self.contact_address} is closed"
            ) from exc

    def _spawn(self, comm: InProcComm) -> None:
        # Runs on the listener's loop.
        if not self._accepting:  # stopped since the connector found it
            comm.abort()
            return
        assert self._loop is not None
        task = self._loop.create_task(self._serve(comm))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, comm: InProcComm) -> None:
        try:
            await self._handle_comm(comm)
        except Exception:
            logger.exception(
                "comm handler failed for the comm from %s on %s; aborting that comm",
                comm.peer_address,
                self.contact_address,
            )
            comm.abort()
