"""The backend conformance kit: a pytest suite that a backend runs against itself.

See :class:`BackendConformance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import logging
import os
import re
import uuid
import warnings
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from types import MappingProxyType
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

import pytest

import comm_core
from comm_core._addressing import parse_address
from comm_core.abc import Comm, Listener, _live_comms, _live_listeners
from comm_core.exceptions import CommClosedError, ConnectTimeoutError, HandshakeError
from comm_core.testing import plugin as _plugin

__all__ = ["BackendConformance", "echo_handler", "open_comms", "open_listeners"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self", bound="BackendConformance")

#: The name under which pytest registers the plugin that runs the kit's async tests.
_PLUGIN = "comm_core.testing.plugin"

#: Keyword arguments of comm_core.connect() that are not the backend's connection_args.
_CONNECT_ONLY = frozenset(
    {"timeout", "deserialize", "handshake_overrides", "handshake_timeout", "require_encryption"}
)

#: What the comm handshake dict always holds.
_HANDSHAKE_KEY = "protocol"

#: A handshake entry by which a test recognizes its own listeners.
_TOKEN_KEY = "kit-token"

#: How many addresses the tests that dial a stopped listener try, in case one is reused.
_ADDRESS_TRIES = 3

#: How long the end of a test waits for tasks it started (its handlers) to finish.
_SETTLE_TIMEOUT = 5.0

#: How long cleanup after a failed test waits for handlers before cancelling them.
_CLEANUP_TIMEOUT = 1.0


def open_comms(*, collect: bool = True) -> list[Comm]:
    """Return every :class:`~comm_core.Comm` in this process that is still open.

    Every comm registers itself on creation (``Comm.__init__``), so this finds
    comms of any backend, including ones a test forgot to close.

    Args:
        collect: run :func:`gc.collect` first, so that comms nobody refers to
            any more are collected (and warn with :class:`ResourceWarning`)
            instead of being reported.
    """
    if collect:
        gc.collect()
    return [comm for comm in list(_live_comms) if not _is_closed(comm)]


def open_listeners() -> list[Listener]:
    """Return every :class:`~comm_core.Listener` in this process that was started and
    has not been stopped since (of any backend)."""
    return list(_live_listeners)


def _open_fds() -> dict[int, str] | None:
    """This process's open file descriptors and what each refers to; ``None`` where
    the system does not tell (it reads ``/proc/self/fd``, on Linux)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    fds = {}
    for name in names:
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except (OSError, ValueError):  # closed since (the listing's own descriptor)
            continue
    return fds


_warmed_up: set[str] = set()


def _warm_up(loop_name: str) -> None:
    """Create and close one event loop of *loop_name*, once per process: a loop library may
    open descriptors of its own on first use (uvloop opens a pipe), which are no leak."""
    if loop_name in _warmed_up:
        return
    _warmed_up.add(loop_name)
    with contextlib.suppress(Exception):
        _plugin.loop_factory(loop_name)().close()


def _is_closed(comm: Comm) -> bool:
    try:
        return bool(comm.closed())
    except Exception:  # a broken comm counts as open: it needs attention
        return False


async def echo_handler(comm: Comm) -> None:
    """A comm handler that writes back every message it reads, then closes the comm.

    It returns when the peer closes; a peer that goes away while a reply is
    being written ends it quietly.
    """
    async with comm:
        with contextlib.suppress(CommClosedError):
            async for msg in comm:
                await comm.write(msg)


def _resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    """Set *future*'s result unless it is done already (cancelled by a timed-out wait)."""
    if not future.done():
        future.set_result(value)


class _DeliberateError(Exception):
    """Raised by the kit's failing handler; never by a backend."""


class _HandlerTracker:
    """Wraps comm handlers to record the comms and the tasks that run them.

    The kit uses it to wait, when a test's listener is stopped, until every
    handler has returned, so that no test leaves a task behind.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.comms: list[Comm] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def _record(self, comm: Comm) -> None:
        self.calls += 1
        self.comms.append(comm)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)

    def wrap(self, handler: Callable[[Comm], Any]) -> Callable[[Comm], Any]:
        """Return *handler*, recording each call; a plain function stays a plain function."""
        if inspect.iscoroutinefunction(handler):

            async def tracked_async(comm: Comm) -> None:
                self._record(comm)
                await handler(comm)

            return tracked_async

        def tracked(comm: Comm) -> Any:
            self._record(comm)
            return handler(comm)

        return tracked

    async def finish(self, timeout: float, *, clean: bool) -> None:
        """Wait for the handlers to return.

        With *clean* (the test passed so far), handlers get *timeout* seconds to
        return on their own, and :class:`AssertionError` is raised if any had
        to be stopped. Otherwise their comms are aborted first, so they end
        quickly, and nothing is raised.
        """
        if not clean:
            self.abort_comms()
            timeout = min(timeout, _CLEANUP_TIMEOUT)
        current = asyncio.current_task()
        pending = {task for task in self.tasks if task is not current and not task.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        if not pending:
            return
        self.abort_comms()
        _, still = await asyncio.wait(pending, timeout=_CLEANUP_TIMEOUT)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=_CLEANUP_TIMEOUT)
        if clean:
            raise AssertionError(
                f"{len(pending)} comm handler(s) were still running {timeout:g}s after the "
                "listener stopped and their peers closed; a comm whose peer closed must make "
                "the pending read raise CommClosedError"
            )

    def abort_comms(self) -> None:
        """Abort every comm handed to the handlers; never raises."""
        for comm in self.comms:
            with contextlib.suppress(Exception):
                comm.abort()


def _bounded(
    test: Callable[Concatenate[_Self, _P], Awaitable[None]],
) -> Callable[Concatenate[_Self, _P], Coroutine[Any, Any, None]]:
    """Bound an async test by ``test_timeout`` and wait for the tasks it started.

    A test that runs too long fails with a message instead of hanging the run.
    A test that passes then waits (up to a few seconds) for the tasks it left,
    such as handlers still finishing, so that the plugin's check for leftover
    tasks only catches tasks that never end.
    """

    @functools.wraps(test)
    async def bounded(self: _Self, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        timeout = self.test_timeout
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = loop.call_later(timeout, expire)
        try:
            await test(self, *args, **kwargs)
        except asyncio.CancelledError:
            if not expired:
                raise
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            pytest.fail(
                f"{test.__name__} did not finish within test_timeout={timeout:g}s", pytrace=False
            )
        finally:
            handle.cancel()
        await _settle(_SETTLE_TIMEOUT)

    return bounded


async def _settle(timeout: float) -> None:
    """Wait up to *timeout* seconds for every other task of this loop to finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = asyncio.current_task()
    while True:
        others = {task for task in asyncio.all_tasks() if task is not current}
        remaining = deadline - loop.time()
        if not others or remaining <= 0:
            return
        await asyncio.wait(others, timeout=remaining)


class BackendConformance:
    """A pytest suite that checks a backend against the contracts of :mod:`comm_core.abc`.

    Subclass it in a test module of your backend, name the scheme, and pytest
    runs every test below against that backend, through the public API
    (:func:`comm_core.connect` and :func:`comm_core.listen`)::

        # tests/test_conformance.py
        from comm_core.testing import BackendConformance

        class TestMyConformance(BackendConformance):
            scheme = "my"
            listen_address = "my://127.0.0.1:0"
            connection_args = {"some_option": 1}
            distribution = "comm-my"

    The tests are ``async def`` methods, run by comm-core's opt-in pytest
    plugin (pytest-asyncio is not needed). Enable the plugin for the test
    suite, with ``addopts = ["-p", "comm_core.testing.plugin"]`` in the pytest
    configuration or ``pytest_plugins = ["comm_core.testing.plugin"]`` in the
    root ``conftest.py``. It runs each test in a fresh event loop (choose it
    with ``--comm-loop=asyncio|uvloop``, or per class with the ``comm_loop``
    marker, which wins) and fails tests that leave tasks running. At
    teardown, the kit also fails a test that leaves behind a comm open (or
    lets one be garbage-collected while open), a listener started and never
    stopped, or a file descriptor (a socket, a file...) that was not open
    before it; the descriptor check reads ``/proc/self/fd`` and so runs on
    Linux only. The same checks guard the tests a subclass adds.

    The backend must be installed (or registered in code, e.g. with
    :func:`comm_core.register_backend` in a ``conftest.py``) so that
    :func:`comm_core.connect` finds it by scheme.

    **What to set** (class attributes):

    ``scheme``
        Required. The URI scheme of the backend under test.
    ``listen_address``
        The address the tests listen on; default ``f"{scheme}://"``. It must
        yield a dialable ``contact_address`` and may be used by 100 listeners
        at once (so name port 0, not a fixed port). To compute an address per
        listener instead, override :meth:`new_listen_address`.
    ``connection_args``
        Keyword arguments given to both :func:`comm_core.connect` and
        :func:`comm_core.listen` (TLS contexts, options of your own...).
    ``listen_args`` / ``connect_args``
        Keyword arguments for one side only; they override ``connection_args``.
    ``distribution``
        The distribution that publishes the backend's entry point, such as
        ``"comm-my"``; when set, the kit checks that the backend was found
        through that entry point. Default ``None``: not checked.
    ``supported_loops``
        The event loops (``--comm-loop`` names) the backend supports; the
        tests are skipped on others. Default ``("asyncio", "uvloop")``.
    ``large_sizes``
        Payload sizes in bytes sent through one comm in one test; shrink it
        for slow transports. Default 0 B to 4 MiB.
    ``concurrent_clients``, ``round_trips``
        How many clients talk to one server at once (20), and how many round
        trips each makes (5).
    ``listener_count``
        How many listeners run at once (100).
    ``connect_timeout``, ``handshake_timeout``
        The short timeouts of the negative tests: connecting where nobody
        listens (0.5 s) and a peer that never handshakes (0.3 s).
    ``timing_slack``
        How much longer than ``connect_timeout`` a failing connect may take (5 s).
    ``event_timeout``
        How long a test waits for something that should happen (10 s).
    ``test_timeout``
        How long one test may run in total (60 s).

    To run the kit on both loops in one run, mark one subclass per loop;
    a subclass marked for a loop that is not installed is skipped::

        @pytest.mark.comm_loop("uvloop")
        class TestMyConformanceUvloop(TestMyConformance):
            pass

    **What to override** (methods):

    ``new_listen_address()``
        The address for the next listener a test starts; the default returns
        ``listen_address`` (or ``f"{scheme}://"``). Override it to give each
        listener an address of its own, such as a socket path in a temporary
        directory.
    ``async unserved_address()``
        An address of the scheme where nobody listens. The default starts a
        listener, notes its ``contact_address`` and stops it.

    **Helpers** for tests a backend adds to its subclass: :meth:`connect`,
    :meth:`listen`, :meth:`serve`, :meth:`echo_server`, :meth:`raw_connect`
    and :meth:`wait`. They merge the class's connection arguments and close
    what they open, even when the test fails.
    """

    scheme: ClassVar[str]
    listen_address: ClassVar[str | None] = None
    connection_args: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    listen_args: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    connect_args: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    distribution: ClassVar[str | None] = None
    supported_loops: ClassVar[Collection[str]] = ("asyncio", "uvloop")
    large_sizes: ClassVar[Sequence[int]] = (0, 1, 100, 64 * 2**10, 2**20, 4 * 2**20)
    concurrent_clients: ClassVar[int] = 20
    round_trips: ClassVar[int] = 5
    listener_count: ClassVar[int] = 100
    connect_timeout: ClassVar[float] = 0.5
    handshake_timeout: ClassVar[float] = 0.3
    timing_slack: ClassVar[float] = 5.0
    event_timeout: ClassVar[float] = 10.0
    test_timeout: ClassVar[float] = 60.0

    # -- the harness ------------------------------------------------------------------

    @pytest.fixture(autouse=True)
    def _comm_conformance_guard(self, request: pytest.FixtureRequest) -> Iterator[None]:
        """Check the setup, then fail the test if it leaves a comm, listener or descriptor."""
        config = request.config
        if not config.pluginmanager.has_plugin(_PLUGIN):
            pytest.fail(
                f"{type(self).__name__} needs comm-core's pytest plugin to run its async tests: "
                f"add '-p {_PLUGIN}' to addopts, or pytest_plugins = ['{_PLUGIN}'] "
                "to the root conftest.py",
                pytrace=False,
            )
        if not isinstance(getattr(self, "scheme", None), str):
            pytest.fail(
                f"{type(self).__name__} must set the class attribute 'scheme' to the URI "
                "scheme of the backend under test, such as scheme = 'tcp'",
                pytrace=False,
            )
        loop_name = _plugin.loop_name(request.node)
        if loop_name not in self.supported_loops:
            pytest.skip(f"the {self.scheme!r} backend does not support the {loop_name} loop")

        _warm_up(loop_name)
        before: weakref.WeakSet[Comm] = weakref.WeakSet(_live_comms)
        listeners_before: weakref.WeakSet[Listener] = weakref.WeakSet(_live_listeners)
        fds_before = _open_fds()
        yield
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
            leaked = [c for c in list(_live_comms) if c not in before and not _is_closed(c)]
        problems = [f"left open: {comm!r}" for comm in leaked]
        for comm in leaked:  # the loop is gone: abort, so later tests do not see them
            with contextlib.suppress(Exception):
                comm.abort()
        running = [lst for lst in open_listeners() if lst not in listeners_before]
        problems += [f"left running: {lst!r} (never stopped)" for lst in running]
        for lst in running:
            with contextlib.suppress(Exception):
                lst.stop()
        for item in caught:
            if issubclass(item.category, ResourceWarning) and "garbage-collected while" in str(
                item.message
            ):
                problems.append(f"garbage-collected: {item.message}")
            else:  # not ours to judge: let the run's warning filters decide
                warnings.warn_explicit(
                    item.message, item.category, item.filename, item.lineno, source=item.source
                )
        fds_after = _open_fds()
        if fds_before is not None and fds_after is not None:
            problems += [
                f"left open: file descriptor {fd} ({target})"
                for fd, target in sorted(fds_after.items())
                if fds_before.get(fd) != target
            ]
        if problems:
            pytest.fail(
                f"the test left {len(problems)} thing(s) behind:\n  " + "\n  ".join(problems),
                pytrace=False,
            )

    # -- helpers ----------------------------------------------------------------------

    def new_listen_address(self) -> str:
        """Return the address the next listener of a test listens on.

        Called once for every listener the kit starts (up to ``listener_count``
        at once). The default returns ``listen_address``, or ``f"{scheme}://"``
        when that is not set. Override it when a fixed address will not do,
        such as a backend whose listeners need a fresh file path each::

            def new_listen_address(self) -> str:
                return f"unix://{self.socket_dir}/{uuid.uuid4().hex}.sock"
        """
        return self.listen_address or f"{self.scheme}://"

    def connect_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments the kit passes to :func:`comm_core.connect`, merged."""
        return {**self.connection_args, **self.connect_args, **overrides}

    def listen_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments the kit passes to :func:`comm_core.listen`, merged."""
        return {**self.connection_args, **self.listen_args, **overrides}

    async def connect(self, addr: str, **kwargs: Any) -> Comm:
        """:func:`comm_core.connect` to *addr* with the class's connection arguments."""
        return await comm_core.connect(addr, **self.connect_kwargs(**kwargs))

    def listen(
        self, handler: Callable[[Comm], Any], address: str | None = None, **kwargs: Any
    ) -> Listener:
        """:func:`comm_core.listen` (unstarted) with the class's arguments and address."""
        return comm_core.listen(
            address or self.new_listen_address(), handler, **self.listen_kwargs(**kwargs)
        )

    @contextlib.asynccontextmanager
    async def serve(self, handler: Callable[[Comm], Any], **kwargs: Any) -> AsyncIterator[Listener]:
        """Run a started listener with *handler* for the duration of the block.

        On exit the listener is stopped and the block waits for every handler
        call to return; if the block raised, their comms are aborted first.
        """
        async with self._serve(handler, _HandlerTracker(), **kwargs) as listener:
            yield listener

    @contextlib.asynccontextmanager
    async def _serve(
        self, handler: Callable[[Comm], Any], tracker: _HandlerTracker, **kwargs: Any
    ) -> AsyncIterator[Listener]:
        listener = self.listen(tracker.wrap(handler), **kwargs)
        await listener.start()
        try:
            yield listener
        except BaseException:
            listener.stop()
            await tracker.finish(self.event_timeout, clean=False)
            raise
        listener.stop()
        await tracker.finish(self.event_timeout, clean=True)

    def echo_server(self, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[Listener]:
        """:meth:`serve` with :func:`echo_handler`."""
        return self.serve(echo_handler, **kwargs)

    async def raw_connect(self, addr: str, **kwargs: Any) -> Comm:
        """Dial *addr* with the backend's connector directly: no handshake, no retries."""
        scheme, loc = parse_address(addr)
        connector = comm_core.get_backend(scheme).get_connector()
        args = {k: v for k, v in self.connect_kwargs(**kwargs).items() if k not in _CONNECT_ONLY}
        return await self.wait(connector.connect(loc, **args), f"the connector to dial {addr}")

    async def wait(self, aw: Awaitable[_R], what: str, timeout: float | None = None) -> _R:
        """Await *aw* for at most ``event_timeout`` seconds; fail the test naming *what*.

        On timeout, *aw* is cancelled.
        """
        timeout = self.event_timeout if timeout is None else timeout
        future = asyncio.ensure_future(aw)
        try:
            done, _ = await asyncio.wait({future}, timeout=timeout)
        except BaseException:
            future.cancel()
            raise
        if not done:
            future.cancel()
            with contextlib.suppress(BaseException):
                await future
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        return future.result()

    async def unserved_address(self) -> str:
        """Return an address of the scheme where nobody listens.

        The default starts a listener, notes its contact address and stops it.
        Override it if the backend may reuse that address at once.
        """
        async with self.echo_server(handshake_overrides=self._token_info()) as listener:
            return listener.contact_address

    def _token_info(self) -> dict[str, str]:
        """A handshake entry unique to this test, to tell its listeners from others'."""
        token = self.__dict__.get("_kit_token")
        if token is None:
            token = self.__dict__["_kit_token"] = uuid.uuid4().hex
        return {_TOKEN_KEY: token}

    async def _ping(self, comm: Comm, payload: Any = "ping") -> None:
        msg = {"op": "ping", "payload": payload}
        await comm.write(msg)
        reply = await self.wait(comm.read(), "the echo of a message")
        assert reply == msg, f"sent {msg!r}, the echo server answered {reply!r}"

    def _check_uri(self, addr: object, what: str) -> None:
        assert isinstance(addr, str), f"{what} must be a str, got {type(addr).__name__} {addr!r}"
        scheme, _ = parse_address(addr, strict=True)
        assert scheme == self.scheme, f"{what} {addr!r} is not a URI of the {self.scheme!r} scheme"
        assert addr.startswith(f"{self.scheme}://"), f"{what} {addr!r} lacks '{self.scheme}://'"

    @staticmethod
    def _check_greeting(greeting: object) -> None:
        assert isinstance(greeting, dict), (
            f"the server's first message should be its handshake dict, got {greeting!r}"
        )
        assert _HANDSHAKE_KEY in greeting, f"the server's handshake lacks {_HANDSHAKE_KEY!r}"

    async def _connect_expecting_timeout(self, addr: str) -> ConnectTimeoutError | None:
        """Dial *addr*, where nobody should listen, and return the ConnectTimeoutError.

        Return ``None`` if a stranger answered: a listener of another test run
        that reused the freed address (a port, say). Fail if a listener this
        test stopped answered.
        """
        try:
            comm = await self.connect(addr, timeout=self.connect_timeout)
        except ConnectTimeoutError as exc:
            return exc
        except HandshakeError:  # not even a comm endpoint
            return None
        ours = comm.handshake_info.get(_TOKEN_KEY) == self._token_info()[_TOKEN_KEY]
        comm.abort()
        if ours:
            pytest.fail(
                f"connecting to {addr!r} reached a listener the test had stopped; "
                "expected ConnectTimeoutError"
            )
        return None

    def _new_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    # -- 1. round trips ---------------------------------------------------------------

    @_bounded
    async def test_ping_pong(self) -> None:
        """A client writes a message and reads the echo server's reply."""
        async with (
            self.echo_server() as listener,
            await self.connect(listener.contact_address) as comm,
        ):
            await self._ping(comm)
            await self._ping(comm, {"nested": [1, 2.5, None, True, "x", b"bytes"]})

    @_bounded
    async def test_concurrent_clients(self) -> None:
        """Many clients, each doing several round trips, all at once."""

        async def client(index: int) -> None:
            async with await self.connect(listener.contact_address) as comm:
                for trip in range(self.round_trips):
                    await self._ping(comm, {"client": index, "trip": trip})

        async with self.echo_server() as listener:
            await asyncio.gather(*(client(i) for i in range(self.concurrent_clients)))

    # -- 2, 3. addresses --------------------------------------------------------------

    @_bounded
    async def test_listener_addresses(self) -> None:
        """Listen and contact addresses are URIs of the scheme; the contact address is dialable."""
        async with self.echo_server() as listener:
            self._check_uri(listener.listen_address, "listener.listen_address")
            self._check_uri(listener.contact_address, "listener.contact_address")
            async with await self.connect(listener.contact_address) as comm:
                self._check_uri(comm.local_address, "comm.local_address")
                self._check_uri(comm.peer_address, "comm.peer_address")
                await self._ping(comm)

    @_bounded
    async def test_local_and_peer_addresses_match(self) -> None:
        """Each end's peer address is the other end's local address."""
        server_side = self._new_future()

        async def handler(comm: Comm) -> None:
            _resolve(server_side, comm)
            await echo_handler(comm)

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            server: Comm = await self.wait(server_side, "the handler to be called")
            assert client.peer_address == server.local_address, (
                f"client.peer_address {client.peer_address!r} != "
                f"server comm's local_address {server.local_address!r}"
            )
            assert client.local_address == server.peer_address, (
                f"client.local_address {client.local_address!r} != "
                f"server comm's peer_address {server.peer_address!r}"
            )

    # -- 4. closing -------------------------------------------------------------------

    @_bounded
    async def test_client_close_ends_server_read(self) -> None:
        """When the client closes, the server's pending read raises CommClosedError."""
        reading = self._new_future()
        outcome = self._new_future()

        async def handler(comm: Comm) -> None:
            async with comm:
                _resolve(reading)
                try:
                    msg = await comm.read()
                except CommClosedError as exc:
                    _resolve(outcome, exc)
                else:
                    _resolve(outcome, f"read returned {msg!r}")

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            await self.wait(reading, "the handler to start reading")
            await client.close()
            result = await self.wait(outcome, "the server's read to end")
        assert isinstance(result, CommClosedError), (
            f"after the client closed, the server's pending read should raise CommClosedError; "
            f"{result}"
        )

    @_bounded
    async def test_server_close_ends_client_read(self) -> None:
        """When the server closes, the client's pending read raises CommClosedError."""
        close_now = self._new_future()

        async def handler(comm: Comm) -> None:
            await close_now
            await comm.close()

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            read = asyncio.ensure_future(client.read())  # runs before the handler wakes
            _resolve(close_now)
            with pytest.raises(CommClosedError):
                await self.wait(read, "the client's read to end after the server closed")

    @_bounded
    async def test_read_and_write_after_close_raise(self) -> None:
        """After its own close(), a comm's read() and write() raise CommClosedError."""
        async with self.echo_server() as listener:
            client = await self.connect(listener.contact_address)
            await client.close()
            assert client.closed(), "closed() is false after close()"
            with pytest.raises(CommClosedError):
                await self.wait(client.read(), "read() after close()")
            with pytest.raises(CommClosedError):
                await self.wait(client.write("late"), "write() after close()")

            client = await self.connect(listener.contact_address)
            client.abort()
            with pytest.raises(CommClosedError):
                await self.wait(client.read(), "read() after abort()")
            with pytest.raises(CommClosedError):
                await self.wait(client.write("late"), "write() after abort()")

    @_bounded
    async def test_read_after_peer_closed_raises(self) -> None:
        """Once the peer has closed, a later read raises CommClosedError."""
        server_closed = self._new_future()

        async def handler(comm: Comm) -> None:
            await comm.close()
            _resolve(server_closed)

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            await self.wait(server_closed, "the server to close its comm")
            with pytest.raises(CommClosedError):
                await self.wait(client.read(), "the client's read after the server closed")

    @_bounded
    async def test_close_and_abort_are_idempotent(self) -> None:
        """close() and abort() may be called repeatedly, in any order, without raising."""
        async with self.echo_server() as listener:
            closing = await self.connect(listener.contact_address)
            try:
                await self.wait(closing.close(), "close()")
                assert closing.closed(), "closed() is false after close()"
                await self.wait(closing.close(), "a second close()")
                closing.abort()
                assert closing.closed(), "closed() is false after close() and abort()"
            finally:
                closing.abort()

            aborting = await self.connect(listener.contact_address)
            try:
                aborting.abort()
                assert aborting.closed(), "closed() is false after abort()"
                aborting.abort()
                await self.wait(aborting.close(), "close() after abort()")
                assert aborting.closed(), "closed() is false after abort() and close()"
            finally:
                aborting.abort()

    # -- 5. repr ----------------------------------------------------------------------

    @_bounded
    async def test_repr(self) -> None:
        """repr() names the class, both addresses, and whether the comm is open."""
        async with self.echo_server() as listener:
            async with await self.connect(listener.contact_address) as comm:
                text = repr(comm)
                for part in (type(comm).__name__, comm.local_address, comm.peer_address):
                    assert part in text, f"repr of an open comm lacks {part!r}: {text}"
                assert re.search(r"\bopen\b", text), f"repr of an open comm lacks 'open': {text}"
                assert not re.search(r"\bclosed\b", text), f"open comm's repr says closed: {text}"
            text = repr(comm)
            for part in (type(comm).__name__, comm.local_address, comm.peer_address):
                assert part in text, f"repr of a closed comm lacks {part!r}: {text}"
            assert re.search(r"\bclosed\b", text), f"repr of a closed comm lacks 'closed': {text}"

    # -- 6. many listeners ------------------------------------------------------------

    @_bounded
    async def test_many_listeners(self) -> None:
        """Many listeners started at once get distinct contact addresses, each reaching its own."""
        count = self.listener_count
        tracker = _HandlerTracker()
        handler = tracker.wrap(echo_handler)
        listeners = [
            self.listen(handler, handshake_overrides={"kit-listener": i}) for i in range(count)
        ]
        clean = False
        try:
            results = await self.wait(
                asyncio.gather(*(lst.start() for lst in listeners), return_exceptions=True),
                f"{count} listeners to start",
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise AssertionError(
                    f"{len(errors)} of {count} listeners failed to start; first: {errors[0]!r}"
                ) from errors[0]
            addresses = [lst.contact_address for lst in listeners]
            for addr in addresses:
                self._check_uri(addr, "contact_address")
            assert len(set(addresses)) == count, (
                f"{count} listeners have only {len(set(addresses))} distinct contact addresses"
            )
            for index in sorted({0, count // 2, count - 1}):
                async with await self.connect(addresses[index]) as comm:
                    seen = comm.handshake_info.get("kit-listener")
                    assert seen == index, (
                        f"dialling {addresses[index]!r} (listener {index}) reached listener {seen}"
                    )
                    await self._ping(comm)
            clean = True
        finally:
            for lst in listeners:
                lst.stop()
            await tracker.finish(self.event_timeout, clean=clean)

    # -- 7. connect timeout -----------------------------------------------------------

    @_bounded
    async def test_connect_timeout(self) -> None:
        """Dialling an address nobody serves raises ConnectTimeoutError after the timeout."""
        timeout = self.connect_timeout
        loop = asyncio.get_running_loop()
        for _ in range(_ADDRESS_TRIES):
            addr = await self.unserved_address()
            start = loop.time()
            exc = await self._connect_expecting_timeout(addr)
            elapsed = loop.time() - start
            if exc is not None:
                break
        else:
            pytest.fail(
                f"{_ADDRESS_TRIES} addresses from unserved_address() were served by other "
                "listeners (reused by another process?); override unserved_address()"
            )
        assert isinstance(exc, OSError)
        assert isinstance(exc, TimeoutError)
        assert addr in str(exc), f"the error does not name the address {addr!r}: {exc}"
        assert exc.attempts >= 1, f"attempts = {exc.attempts}"
        low, high = timeout - 0.05, timeout + self.timing_slack
        assert low <= elapsed <= high, (
            f"connect(timeout={timeout:g}) gave up after {elapsed:.3f}s (expected {low:g}-{high:g})"
        )

    # -- 8. handshake timeout ---------------------------------------------------------

    @_bounded
    async def test_silent_client_never_reaches_handler(self) -> None:
        """A peer that never handshakes is dropped after handshake_timeout, never handled."""
        tracker = _HandlerTracker()
        timeout = self.handshake_timeout
        async with self._serve(echo_handler, tracker, handshake_timeout=timeout) as listener:
            async with await self.raw_connect(listener.contact_address) as raw:
                greeting = await self.wait(raw.read(), "the server's handshake")
                self._check_greeting(greeting)
                with pytest.raises(CommClosedError):
                    await self.wait(raw.read(), "the server to drop a client that never handshakes")
            assert tracker.calls == 0, "the handler was called for a client that never handshook"
            async with await self.connect(listener.contact_address) as comm:
                await self._ping(comm)  # the listener still serves

    # -- 9. message sizes -------------------------------------------------------------

    @_bounded
    async def test_message_sizes(self) -> None:
        """Messages of many sizes arrive unchanged and in order."""
        messages: list[dict[str, Any]] = [
            {"index": i, "data": os.urandom(n)} for i, n in enumerate(self.large_sizes)
        ]

        async def write_all(comm: Comm) -> None:
            for msg in messages:
                await comm.write(msg)

        async def read_all(comm: Comm) -> list[Any]:
            return [await comm.read() for _ in messages]

        async with (
            self.echo_server() as listener,
            await self.connect(listener.contact_address) as comm,
        ):
            # Read while writing: waiting for all writes first could stall on backpressure.
            _, received = await self.wait(
                asyncio.gather(write_all(comm), read_all(comm)), "the echoed messages"
            )
        assert len(received) == len(messages)
        for sent, got in zip(messages, received, strict=True):
            size = len(sent["data"])
            assert isinstance(got, dict), f"{size}-byte message came back as {type(got)}"
            assert got.get("index") == sent["index"], (
                f"message {sent['index']} ({size} bytes) arrived as message {got.get('index')}"
            )
            assert bytes(got["data"]) == sent["data"], f"the {size}-byte payload changed"

    # -- 10. iteration and context manager --------------------------------------------

    @_bounded
    async def test_async_for_ends_when_peer_closes(self) -> None:
        """``async for msg in comm`` yields every message, then stops when the peer closes."""
        expected = [{"n": n} for n in range(5)]

        async def handler(comm: Comm) -> None:
            async with comm:
                for msg in expected:
                    await comm.write(msg)

        async def collect(comm: Comm) -> list[Any]:
            return [msg async for msg in comm]

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            received = await self.wait(collect(client), "async for to end")
        assert received == expected

    @_bounded
    async def test_async_with_closes(self) -> None:
        """``async with comm`` closes the comm on exit, also when the block raises."""
        async with self.echo_server() as listener:
            async with await self.connect(listener.contact_address) as comm:
                await self._ping(comm)
            assert comm.closed(), "comm is open after its async with block"

            with pytest.raises(_DeliberateError):
                async with await self.connect(listener.contact_address) as failing:
                    raise _DeliberateError
            assert failing.closed(), "comm is open after its async with block raised"

    # -- 11, 12. handlers -------------------------------------------------------------

    @_bounded
    async def test_failing_handler(self, caplog: pytest.LogCaptureFixture) -> None:
        """A handler's error is logged with the peer; its comm closes; the listener serves on."""
        caplog.set_level(logging.ERROR)
        calls = 0

        async def handler(comm: Comm) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise _DeliberateError("conformance kit: a deliberate handler failure")
            await echo_handler(comm)

        async with self.serve(handler) as listener:
            async with await self.connect(listener.contact_address) as first:
                peer = first.local_address
                with pytest.raises(CommClosedError):
                    await self.wait(first.read(), "the failed handler's comm to close")
            async with await self.connect(listener.contact_address) as second:
                await self._ping(second)
        records = [
            r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], _DeliberateError)
        ]
        assert records, "the handler's exception was not logged (with its traceback)"
        messages = [r.getMessage() for r in records]
        assert any(peer in m for m in messages), (
            f"no log message about the handler's exception names the peer {peer!r}: {messages}"
        )

    @_bounded
    async def test_sync_handler(self) -> None:
        """A plain (non-async) function works as a handler."""
        server_side = self._new_future()

        def handler(comm: Comm) -> None:
            _resolve(server_side, comm)

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            server: Comm = await self.wait(server_side, "the sync handler to be called")
            async with server:
                assert not server.closed(), "the comm given to a sync handler is closed"
                await server.write({"from": "server"})
                assert await self.wait(client.read(), "a message from the server") == {
                    "from": "server"
                }
                await client.write({"from": "client"})
                assert await self.wait(server.read(), "a message from the client") == {
                    "from": "client"
                }

    # -- 13. stopping listeners -------------------------------------------------------

    @_bounded
    async def test_stop_aborts_comms_in_handshake(self) -> None:
        """stop() aborts comms still in their handshake; it is idempotent."""
        long = max(self.test_timeout, 30.0)
        tracker = _HandlerTracker()
        async with self._serve(echo_handler, tracker, handshake_timeout=long) as listener:
            async with await self.raw_connect(listener.contact_address) as raw:
                greeting = await self.wait(raw.read(), "the server's handshake")
                self._check_greeting(greeting)
                listener.stop()
                with pytest.raises(CommClosedError):
                    await self.wait(raw.read(), "stop() to abort the comm in its handshake")
                listener.stop()
            assert tracker.calls == 0, "the handler was called for a client that never handshook"

    @_bounded
    async def test_connect_after_stop_fails(self) -> None:
        """After stop(), dialling the listener's address times out."""
        for _ in range(_ADDRESS_TRIES):
            async with self.echo_server(handshake_overrides=self._token_info()) as listener:
                addr = listener.contact_address
                listener.stop()
                listener.stop()
                if await self._connect_expecting_timeout(addr) is not None:
                    return
        pytest.fail(
            f"{_ADDRESS_TRIES} stopped listeners' addresses were served by other listeners "
            "(reused by another process?)"
        )

    # -- 14. cancellation -------------------------------------------------------------

    @_bounded
    async def test_cancelled_read_aborts_comm(self) -> None:
        """Cancelling a pending read aborts the comm: the peer sees it closed."""
        reading = self._new_future()
        outcome = self._new_future()

        async def handler(comm: Comm) -> None:
            async with comm:
                _resolve(reading)
                try:
                    msg = await comm.read()
                except CommClosedError as exc:
                    _resolve(outcome, exc)
                else:
                    _resolve(outcome, f"read returned {msg!r}")

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            await self.wait(reading, "the handler to start reading")
            started = self._new_future()

            async def read() -> Any:
                _resolve(started)
                return await client.read()

            task = asyncio.ensure_future(read())
            await started  # the task is now suspended inside client.read()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.closed(), "a comm whose read was cancelled is still open"
            result = await self.wait(outcome, "the peer's read to end")
            assert isinstance(result, CommClosedError), (
                "after a client's read was cancelled, the server's pending read should raise "
                f"CommClosedError; {result}"
            )
            with pytest.raises(CommClosedError):
                await self.wait(client.read(), "read() after a cancelled read")

    # -- 15. handshake ----------------------------------------------------------------

    @_bounded
    async def test_handshake_info(self) -> None:
        """Each side sees the other's handshake_overrides and the protocol version."""
        server_side = self._new_future()

        async def handler(comm: Comm) -> None:
            _resolve(server_side, comm)
            await echo_handler(comm)

        async with (
            self.serve(handler, handshake_overrides={"kit-server": "s"}) as listener,
            await self.connect(
                listener.contact_address, handshake_overrides={"kit-client": 7}
            ) as client,
        ):
            server: Comm = await self.wait(server_side, "the handler to be called")
            sides = [(client, "client", "kit-server", "s"), (server, "server", "kit-client", 7)]
            for comm, side, key, value in sides:
                info = comm.handshake_info
                assert info.get(key) == value, f"the {side} saw handshake {dict(info)}"
                assert info.get("protocol") == comm_core.PROTOCOL_VERSION, (
                    f"the {side} saw protocol {info.get('protocol')!r}"
                )
            assert client.local_handshake_info.get("kit-client") == 7
            assert server.local_handshake_info.get("kit-server") == "s"

    # -- 16. garbage collection -------------------------------------------------------

    @_bounded
    async def test_gc_of_open_comm_warns(self) -> None:
        """Garbage-collecting an open comm warns with ResourceWarning and aborts it."""
        server_side = self._new_future()
        outcome = self._new_future()

        async def handler(comm: Comm) -> None:
            _resolve(server_side, comm)
            async with comm:
                try:
                    await comm.read()
                except CommClosedError as exc:
                    _resolve(outcome, exc)

        async with self.serve(handler) as listener:
            client: Comm | None = await self.connect(listener.contact_address)
            assert client is not None
            try:
                await self.wait(server_side, "the handler to be called")
                local, peer = client.local_address, client.peer_address
                with pytest.warns(ResourceWarning) as record:  # noqa: PT031
                    client = None  # drop the only reference
                    gc.collect()
                messages = [str(w.message) for w in record if w.category is ResourceWarning]
                assert any(local in m and peer in m for m in messages), (
                    f"no ResourceWarning names both {local!r} and {peer!r}: {messages}"
                )
                result = await self.wait(outcome, "the peer to see the collected comm closed")
                assert isinstance(result, CommClosedError)
            finally:
                if client is not None:
                    client.abort()

    # -- 17. registration -------------------------------------------------------------

    def test_backend_is_registered(self) -> None:
        """The backend is registered for its scheme, through its distribution if named."""
        installed = comm_core.backends()
        info = installed.get(self.scheme)
        assert info is not None, (
            f"no backend registered for {self.scheme!r}; installed: {sorted(installed)}"
        )
        assert info.scheme == self.scheme
        assert info.backend_class.scheme == self.scheme
        assert isinstance(comm_core.get_backend(self.scheme), info.backend_class)
        if self.distribution is not None:
            assert info.distribution == self.distribution, (
                f"the {self.scheme!r} backend comes from {info.describe()}, "
                f"not from the entry point of {self.distribution}"
            )
