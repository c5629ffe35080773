"""Comm handlers for tests and examples; they need no pytest."""

from __future__ import annotations

import contextlib

from comm_core.abc import Comm
from comm_core.exceptions import CommClosedError

__all__ = ["echo_handler"]


async def echo_handler(comm: Comm) -> None:
    """A comm handler that writes back every message it reads, then closes the comm.

    It returns when the peer closes; a peer that goes away while a reply is
    being written ends it quietly.
    """
    async with comm:
        with contextlib.suppress(CommClosedError):
            async for msg in comm:
                await comm.write(msg)
