"""Waiting in async tests without hanging: bounded awaits and bounded polls.

They need no pytest: under pytest a timeout fails the test with
``pytest.fail`` (a short message, no traceback of the kit's own); without
pytest, it raises :class:`AssertionError`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from comm_core._compat import TimeoutScope, timeout_after

__all__ = ["until", "within"]

_T = TypeVar("_T")


def fail(message: str) -> NoReturn:
    """Fail the test with *message*: ``pytest.fail(message, pytrace=False)`` inside a
    pytest run, :class:`AssertionError` otherwise."""
    pytest = sys.modules.get("pytest")  # imported already if pytest runs this
    if pytest is not None:
        pytest.fail(message, pytrace=False)
    raise AssertionError(message)


async def within(aw: Awaitable[_T], what: str, timeout: float = 10.0) -> _T:
    """Await *aw* for at most *timeout* seconds; fail the test naming *what* otherwise.

    ``await within(comm.read(), "the server's reply")`` reads as what the test
    expects, and a hang becomes a failure that says what never came. A
    :class:`TimeoutError` that *aw* raises itself (such as
    :class:`~comm_core.ConnectTimeoutError`) goes through as it is.
    """
    scope: TimeoutScope | None = None
    try:
        async with timeout_after(timeout) as scope:
            return await aw
    except TimeoutError:
        if scope is not None and scope.expired():
            fail(f"timed out after {timeout:g}s waiting for {what}")
        raise


async def until(
    predicate: Callable[[], bool], what: str, timeout: float = 10.0, interval: float = 0.005
) -> float:
    """Wait until ``predicate()`` is true, checking every *interval* seconds.

    Only for states that no event announces (a transport pausing for flow
    control, a count of descriptors); await the event where there is one.
    Returns the seconds it took; fails the test, naming *what*, after
    *timeout* seconds.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)
    return loop.time() - start
