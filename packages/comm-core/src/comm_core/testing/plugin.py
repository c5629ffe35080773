"""An opt-in pytest plugin that runs ``async def`` tests, each in a fresh event loop.

Enable it in a test suite with ``-p comm_core.testing.plugin`` (for example in
``addopts``) or ``pytest_plugins = ["comm_core.testing.plugin"]`` in the root
``conftest.py``. It is not registered through ``pytest11``, so it never loads
into a test run that did not ask for it.

Options:
    ``--comm-loop=asyncio|uvloop``: the event loop implementation (default
    asyncio; uvloop must be installed).

Markers:
    ``@pytest.mark.comm_loop("asyncio"|"uvloop")``: run the marked test (or
    every test of a marked class or module) on that event loop, whatever
    ``--comm-loop`` says. A test marked for a loop that cannot be imported
    (uvloop on Windows or PyPy) is skipped, while ``--comm-loop=uvloop`` without
    uvloop is an error. To run a suite on both loops, mark two subclasses, or
    parametrize a fixture::

        @pytest.fixture(
            params=[
                pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio")),
                pytest.param("uvloop", marks=pytest.mark.comm_loop("uvloop")),
            ]
        )
        def loop_name(request):
            return request.param

    :func:`loop_name` tells which loop a test item runs on.

After each async test, the plugin fails the test if tasks it started are still
pending.

Fixtures:
    ``comm_leak_check``: fails the test that requests it if it leaves a comm
    open (or lets one be garbage-collected while open), a listener running,
    or a file descriptor open (on Linux); see :class:`comm_core.testing.LeakCheck`.
    The conformance kit runs the same checks after each of its tests. Tasks
    left running are failed by the plugin already (for async tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from comm_core.testing._leaks import LeakCheck

__all__ = ["LOOPS", "MARKER", "comm_leak_check", "loop_factory", "loop_name", "run", "warm_up"]

#: The event loops the plugin can run tests on.
LOOPS = ("asyncio", "uvloop")
#: The marker that picks a test's event loop.
MARKER = "comm_loop"


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


def loop_name(item: pytest.Item) -> str:
    """The event loop *item* runs on: its ``comm_loop`` marker's, else ``--comm-loop``'s.

    Raises:
        pytest.UsageError: the marker does not name exactly one known loop.
    """
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return str(item.config.getoption("--comm-loop"))
    if len(marker.args) != 1 or marker.kwargs or marker.args[0] not in LOOPS:
        raise pytest.UsageError(
            f"{item.nodeid}: use @pytest.mark.{MARKER}(name) with one name of {LOOPS}, "
            f"not {MARKER}(*{marker.args!r}, **{marker.kwargs!r})"
        )
    return str(marker.args[0])


_warmed_up: set[str] = set()


def warm_up(name: str) -> None:
    """Create and close one event loop called *name*, once per process.

    A loop library may open descriptors of its own on first use (uvloop opens a
    pipe), which are no leak: call this before a descriptor check starts.
    """
    if name in _warmed_up:
        return
    _warmed_up.add(name)
    with contextlib.suppress(Exception):
        loop_factory(name)().close()


@pytest.fixture
def comm_leak_check(request: pytest.FixtureRequest) -> Iterator[LeakCheck]:
    """Fail the test if it leaves a comm open, a listener running or a descriptor open.

    Request it before the fixtures that open comms or listeners (or make it
    autouse in a ``conftest.py``), so that its check runs after their
    teardown. Set its attributes (``descriptors = False``, ...) in the test to
    skip a check.
    """
    warm_up(loop_name(request.node))
    check = LeakCheck().start()
    yield check
    problems = check.finish()
    if problems:
        pytest.fail(LeakCheck.describe(problems, "the test"), pytrace=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("comm")
    group.addoption(
        "--comm-loop",
        default="asyncio",
        choices=LOOPS,
        help="event loop for async tests not marked comm_loop (default: asyncio)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(name): run this async test on the event loop 'asyncio' or 'uvloop', "
        "whatever --comm-loop says; skipped if that loop cannot be imported",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked for a loop that cannot be imported, before its fixtures run."""
    if item.get_closest_marker(MARKER) is None:
        return
    name = loop_name(item)
    if name == "asyncio":
        return
    try:
        importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"the {name} event loop is not available: {exc}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    factory = loop_factory(loop_name(pyfuncitem))
    run(func(**kwargs), factory)
    return True
