"""Running a coroutine on the asyncio or the uvloop event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], loop: str) -> T:
    """Run *coro* to completion on a new event loop of kind *loop* (``asyncio`` or ``uvloop``)."""
    if loop == "asyncio":
        return asyncio.run(coro)
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coro)
    coro.close()
    raise ValueError(f"unknown event loop {loop!r}")
