"""An opt-in pytest plugin that runs ``async def`` tests, each in a fresh event loop.

Enable it in a test suite with ``-p comm_core.testing.plugin`` (for example in
``addopts``) or ``pytest_plugins = ["comm_core.testing.plugin"]`` in the root
``conftest.py``. It is not registered through ``pytest11``, so it never loads
into a test run that did not ask for it.

Options:
    ``--comm-loop=asyncio|uvloop``: the event loop implementation (default
    asyncio; uvloop must be installed).

After each async test, the plugin fails the test if tasks it started are still
pending.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

__all__ = ["loop_factory", "run"]


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return a factory for the event loop called *name* (``"asyncio"`` or ``"uvloop"``)."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        uvloop = importlib.import_module("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise ValueError(f"unknown event loop {name!r}; expected 'asyncio' or 'uvloop'")


def run(
    coro: Coroutine[Any, Any, Any],
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    *,
    check_tasks: bool = True,
) -> Any:
    """Run *coro* in a new event loop from *factory*, then close the loop.

    With *check_tasks*, raise :class:`AssertionError` if tasks other than the
    main one are still pending when *coro* returns (they are cancelled first,
    so the loop closes cleanly either way).
    """
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        main = loop.create_task(coro)
        result = loop.run_until_complete(main)
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        # Give tasks that are finishing (a handler after close) one chance to end.
        if leftover:
            loop.run_until_complete(asyncio.sleep(0))
            leftover = [t for t in leftover if not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        if check_tasks and leftover:
            names = ", ".join(repr(t.get_coro()) for t in leftover)
            raise AssertionError(f"test left {len(leftover)} task(s) running: {names}")
        return result
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("comm")
    group.addoption(
        "--comm-loop",
        default="asyncio",
        choices=("asyncio", "uvloop"),
        help="event loop for async tests (default: asyncio)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    factory = loop_factory(pyfuncitem.config.getoption("--comm-loop"))
    run(func(**kwargs), factory)
    return True
