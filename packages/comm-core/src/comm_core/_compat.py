"""Small shims over differences between the supported Python versions."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

__all__ = ["TimeoutScope", "timeout_after"]


class TimeoutScope(Protocol):
    """What ``async with timeout_after(delay) as scope`` gives: whether it fired."""

    def expired(self) -> bool:
        """True once the delay ran out and the block was cancelled for it."""


if sys.version_info >= (3, 11):

    def timeout_after(delay: float | None) -> AbstractAsyncContextManager[TimeoutScope]:
        """Raise :class:`TimeoutError` in the block if it runs longer than *delay* seconds."""
        return asyncio.timeout(delay)

else:  # pragma: no cover - exercised on Python 3.10 only

    class _Scope:
        __slots__ = ("fired",)

        def __init__(self) -> None:
            self.fired = False

        def expired(self) -> bool:
            return self.fired

    @asynccontextmanager
    async def _timeout(delay: float | None) -> AsyncIterator[TimeoutScope]:
        scope = _Scope()
        if delay is None:
            yield scope
            return
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            scope.fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), expire)
        try:
            yield scope
        except asyncio.CancelledError:
            if scope.fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()

    def timeout_after(delay: float | None) -> AbstractAsyncContextManager[TimeoutScope]:
        """Raise :class:`TimeoutError` in the block if it runs longer than *delay* seconds."""
        return _timeout(delay)
