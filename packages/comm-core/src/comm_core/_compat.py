"""Small shims over differences between the supported Python versions."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

__all__ = ["timeout_after"]

if sys.version_info >= (3, 11):

    def timeout_after(delay: float | None) -> AbstractAsyncContextManager[object]:
        """Raise :class:`TimeoutError` in the block if it runs longer than *delay* seconds."""
        return asyncio.timeout(delay)

else:  # pragma: no cover - exercised on Python 3.10 only

    @asynccontextmanager
    async def _timeout(delay: float | None) -> AsyncIterator[None]:
        if delay is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(max(delay, 0.0), expire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError from None
            raise
        finally:
            handle.cancel()

    def timeout_after(delay: float | None) -> AbstractAsyncContextManager[object]:
        """Raise :class:`TimeoutError` in the block if it runs longer than *delay* seconds."""
        return _timeout(delay)
