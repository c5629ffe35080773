"""The backend conformance kit: a pytest suite that a backend runs against itself.

See :class:`BackendConformance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import gc
import inspect
import logging
import os
import re
import uuid
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
from comm_core._version import PROTOCOL_VERSION
from comm_core.abc import Comm, Listener
from comm_core.exceptions import (
    AddressError,
    CommClosedError,
    ConnectTimeoutError,
    HandshakeError,
    MessageTooLargeError,
    SerializationError,
)
from comm_core.protocol import MAX_FIRST_MESSAGE
from comm_core.stream import StreamComm
from comm_core.testing import plugin as _plugin
from comm_core.testing._handlers import echo_handler
from comm_core.testing._leaks import LeakCheck

__all__ = ["BackendConformance"]

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


#: The max_message_size that the size checks give one end (the other keeps its default).
_SIZE_LIMIT = 100_000


def _nested(levels: int) -> Any:
    """Lists, dicts and tuples nested *levels* deep."""
    value: Any = []
    for level in range(levels - 1):
        value = (value,) if level % 3 == 0 else {"k": value} if level % 3 == 1 else [value]
    return value


#: How long a write may take before the backpressure check deems it waiting.
_STALL = 0.5

#: The size of each message the backpressure check writes.
_CHUNK = 2**20

#: The header of a message of one frame: the frame count (4 bytes) and one length (8).
_ONE_FRAME_HEADER = 12

#: Locations every host:port backend must refuse, with what is wrong with them.
_MALFORMED_HOST_PORT = (
    "127.0.0.1:port",  # a port that is no number
    "127.0.0.1:70000",  # a port above 65535
    "127.0.0.1:",  # an empty port
    "::1:8786",  # an IPv6 host and a port without brackets: which is it?
    "[::1:8786",  # a bracket never closed
    "[::1]8786",  # no ':' between the brackets and the port
    "127.0.0.1:1:2",  # a host with ':' that is no IPv6 address
)

#: The address functions, which ask the address's backend.
_ADDRESS_FUNCTIONS: tuple[tuple[str, Callable[[str], object]], ...] = (
    ("get_address_host", comm_core.get_address_host),
    ("get_address_host_port", comm_core.get_address_host_port),
    ("resolve_address", comm_core.resolve_address),
    ("get_local_address_for", comm_core.get_local_address_for),
)


def _client_handshake() -> dict[str, Any]:
    """A dialer's handshake message, for a raw comm to send."""
    return {"protocol": PROTOCOL_VERSION, "library": "comm-conformance-kit"}


def _handshake_of(size: int) -> dict[str, Any]:
    """A valid handshake message that takes exactly *size* bytes on the wire, header
    included (one frame: a 12-byte header, then the msgpack body), for *size* between
    about 1 KiB and 250 KiB. Its padding is within every limit of a handshake message
    (lists of at most 64 bytes values of at most 1024 bytes each)."""
    import msgpack

    target = size - _ONE_FRAME_HEADER
    lists: list[list[bytes]] = [[] for _ in range(4)]
    info: dict[str, Any] = _client_handshake()
    info.update({f"kit-padding-{i}": items for i, items in enumerate(lists)})

    def packed() -> int:
        return len(msgpack.packb(info, use_bin_type=True))

    def add(item: bytes) -> None:
        for items in lists:
            if len(items) < 64:
                items.append(item)
                return
        raise ValueError(f"a handshake message cannot take {size} bytes")

    while target - packed() > 1300:
        add(b"\0" * 1000)
    rest = target - packed()
    # 300 to 1300 bytes to go: one or two values of 256 to 1024 bytes (3-byte headers).
    for part in [rest] if rest <= 1027 else [rest // 2, rest - rest // 2]:
        add(b"\0" * (part - 3))
    last = next(items for items in reversed(lists) if items)
    last[-1] = last[-1][: len(last[-1]) - (packed() - target)]  # a list's header grew
    if packed() != target:
        raise AssertionError(f"the kit built a handshake of {packed()} bytes, not {target}")
    return info


async def _collect(comm: Comm) -> list[Any]:
    """What ``async for`` yields from *comm* until it ends."""
    return [msg async for msg in comm]


def _names(exc: BaseException, text: str) -> bool:
    """Whether *exc*'s message quotes *text* (as is, or escaped as repr() escapes it)."""
    message = str(exc)
    return text in message or repr(text)[1:-1] in message


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

    **What the backend does** (class attributes that switch checks on or off
    where they cannot apply; the defaults check the most):

    ``serializes``
        Whether messages are serialized (comm's wire protocol or another
        encoding). Then the kit checks ``max_message_size`` on both ends (a
        writer refuses a larger message and stays usable; a reader drops the
        comm; both raise :class:`~comm_core.MessageTooLargeError`) and that a
        pickled value is neither written nor read unless ``"pickle"`` is named.
        The backend must take ``max_message_size`` as a connection argument.
        Default ``True``; ``False`` for a backend that passes objects by
        reference (inproc).
    ``bounded_writes``
        Whether ``write()`` waits while too much is queued for a peer that
        does not read (backpressure). Default ``True``; ``False`` for a
        backend whose queue is unbounded by design (inproc).
        ``backpressure_bound`` (256 MiB) is the most a writer may hand over to
        a peer that reads nothing before its ``write()`` must wait.
    ``stream_transport``
        Whether the backend carries comm's wire protocol over a byte stream (a
        :class:`~comm_core.stream.StreamComm`, as tcp, tls and unix do). Then
        the kit checks the first-message limit: each end refuses a first
        message (the handshake) above 64 KiB, header included. Default
        ``None``: decided by whether the backend's comms are ``StreamComm``.
    ``host_port``
        Whether locations are ``host:port`` (tcp, tls). Then the kit checks the
        address functions with ports (never made up where missing) and IPv6
        hosts (in brackets, which are not part of the host). Default ``None``:
        decided by whether the contact address of a listener is one.
    ``malformed_locations``
        Locations (what follows ``scheme://``) that are malformed for the
        backend: every address function, :func:`comm_core.connect` and
        :func:`comm_core.listen` must refuse them with
        :class:`~comm_core.AddressError`. For ``host:port`` backends the kit
        adds bad ports and IPv6 hosts without brackets. Default: none.

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
    serializes: ClassVar[bool] = True
    bounded_writes: ClassVar[bool] = True
    backpressure_bound: ClassVar[int] = 256 * 2**20
    stream_transport: ClassVar[bool | None] = None
    host_port: ClassVar[bool | None] = None
    malformed_locations: ClassVar[Sequence[str]] = ()

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

        _plugin.warm_up(loop_name)
        check = LeakCheck().start()
        yield
        problems = check.finish()
        if problems:
            pytest.fail(LeakCheck.describe(problems, "the test"), pytrace=False)

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

    async def _expect(
        self, aw: Awaitable[Any], expected: type[BaseException], what: str
    ) -> BaseException:
        """Await *aw* (bounded by ``event_timeout``), which must raise *expected*; return it.

        Anything else fails the test, naming *what* and what happened instead (a
        library's own exception where comm's is due, say).
        """
        try:
            result = await self.wait(aw, what)
        except expected as exc:
            return exc
        except Exception as exc:
            raise AssertionError(
                f"{what}: raised {type(exc).__module__}.{type(exc).__qualname__}: {exc}; "
                f"expected {expected.__name__}"
            ) from exc
        raise AssertionError(f"{what}: returned {result!r}; expected {expected.__name__}")

    def _expect_address_error(self, what: str, call: Callable[[], object], loc: str) -> None:
        """*call* must raise AddressError naming *loc*."""
        error: AddressError | None = None
        try:
            result = call()
        except AddressError as exc:
            error = exc
        except Exception as exc:
            raise AssertionError(
                f"{what} raised {type(exc).__qualname__}: {exc}; expected AddressError"
            ) from exc
        if error is None:
            raise AssertionError(f"{what} returned {result!r}; expected AddressError")
        assert _names(error, loc), f"{what} raised AddressError without naming {loc!r}: {error}"

    async def _host_port(self, contact: str | None = None) -> bool:
        """``host_port``, or whether a listener's contact address is ``host:port``."""
        if self.host_port is not None:
            return self.host_port
        if contact is None:
            async with self.echo_server() as listener:
                contact = listener.contact_address
        try:
            comm_core.parse_host_port(parse_address(contact)[1])
        except AddressError:
            return False
        return True

    def _skip_unless(self, flag: bool, why: str) -> None:
        if not flag:
            pytest.skip(f"{type(self).__name__}: {why}")

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
    async def test_every_read_after_the_peer_closed_raises(self) -> None:
        """A read pending when the peer closes (or aborts), and every read after it, raises
        CommClosedError, never another error; so does a write."""
        for how in ("close", "abort"):
            close_now = self._new_future()

            async def handler(comm: Comm, how: str = how, close_now: Any = close_now) -> None:
                await close_now
                if how == "close":
                    await comm.close()
                else:
                    comm.abort()

            async with (
                self.serve(handler) as listener,
                await self.connect(listener.contact_address) as client,
            ):
                started = self._new_future()

                async def read(client: Comm = client, started: Any = started) -> Any:
                    _resolve(started)
                    return await client.read()

                pending = asyncio.ensure_future(read())
                await started  # the task is now suspended inside client.read()
                _resolve(close_now)
                await self._expect(
                    pending, CommClosedError, f"the read pending when the server's comm did {how}()"
                )
                for count in range(2, 5):
                    await self._expect(
                        client.read(),
                        CommClosedError,
                        f"read number {count} after the server's comm did {how}()",
                    )
                received = await self.wait(_collect(client), "async for after the peer closed")
                assert received == [], f"async for yielded {received!r} after the peer closed"
                await self._expect(
                    client.write("late"),
                    CommClosedError,
                    f"write() after the server's comm did {how}()",
                )

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
    async def test_comm_survives_an_immediate_stop(self) -> None:
        """A comm that connect() returned works after its listener stops at once."""
        tracker = _HandlerTracker()
        listener = self.listen(tracker.wrap(echo_handler))
        clean = False
        try:
            async with listener:
                comm = await self.connect(listener.contact_address)
            # A dialer may send its own handshake after connect() returned (with its first
            # write): a stopped listener must still serve the connections it accepted.
            async with comm:
                try:
                    await self._ping(comm)
                except CommClosedError as exc:
                    raise AssertionError(
                        "a comm that connect() returned was lost when its listener stopped "
                        f"right after: {exc!r}; stop() must let the connections it accepted "
                        "complete their handshake (within their deadline) and serve them"
                    ) from exc
            clean = True
        finally:
            listener.stop()
            await tracker.finish(self.event_timeout, clean=clean)

    @_bounded
    async def test_stop_serves_comms_in_their_handshake(self) -> None:
        """stop() aborts no comm in its handshake: one that completes it is served; stop()
        is idempotent."""
        long = max(self.test_timeout, 30.0)
        tracker = _HandlerTracker()
        async with (
            self._serve(echo_handler, tracker, handshake_timeout=long) as listener,
            await self.raw_connect(listener.contact_address) as raw,
        ):
            greeting = await self.wait(raw.read(), "the server's handshake")
            self._check_greeting(greeting)
            listener.stop()
            listener.stop()
            try:
                await raw.write(_client_handshake())
                msg = {"op": "ping", "after": "stop"}
                await raw.write(msg)
                reply = await self.wait(
                    raw.read(), "the echo over a comm whose handshake completed after stop()"
                )
            except CommClosedError as exc:
                raise AssertionError(
                    f"stop() dropped a comm still in its handshake: {exc!r}; its dialer "
                    "may hold a comm that connect() returned already"
                ) from exc
            assert reply == msg, f"sent {msg!r}, the echo server answered {reply!r}"
        assert tracker.calls == 1, f"the handler was called {tracker.calls} times, not once"

    @_bounded
    async def test_stop_keeps_the_handshake_deadline(self) -> None:
        """After stop(), a peer that never handshakes is dropped at its deadline, unhandled."""
        tracker = _HandlerTracker()
        timeout = self.handshake_timeout
        async with (
            self._serve(echo_handler, tracker, handshake_timeout=timeout) as listener,
            await self.raw_connect(listener.contact_address) as raw,
        ):
            greeting = await self.wait(raw.read(), "the server's handshake")
            self._check_greeting(greeting)
            listener.stop()
            await self._expect(
                raw.read(),
                CommClosedError,
                "a stopped listener to drop a peer that never handshakes, at its deadline",
            )
        assert tracker.calls == 0, "the handler was called for a client that never handshook"

    @_bounded
    async def test_stop_leaves_established_comms_working(self) -> None:
        """Comms handed to the handler before stop() keep working both ways, then close."""
        server_side = self._new_future()
        finished = self._new_future()

        async def handler(comm: Comm) -> None:
            _resolve(server_side, comm)
            await echo_handler(comm)
            _resolve(finished)

        tracker = _HandlerTracker()
        listener = self.listen(tracker.wrap(handler))
        clean = False
        try:
            await listener.start()
            async with await self.connect(listener.contact_address) as client:
                await self._ping(client)
                listener.stop()
                server: Comm = await self.wait(server_side, "the handler to be called")
                assert not server.closed(), "stop() closed a comm the handler was serving"
                for trip in range(3):
                    await self._ping(client, {"after stop": trip})
            await self.wait(finished, "the handler to see the client close")
            clean = True
        finally:
            listener.stop()
            await tracker.finish(self.event_timeout, clean=clean)

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

    # -- 18. address functions --------------------------------------------------------

    @_bounded
    async def test_address_functions(self) -> None:
        """The address functions take a listener's contact address; what resolve_address()
        returns still reaches the listener."""
        async with self.echo_server() as listener:
            contact = listener.contact_address
            host = comm_core.get_address_host(contact)
            assert isinstance(host, str), f"get_address_host({contact!r}) returned {host!r}"
            resolved = comm_core.resolve_address(contact)
            self._check_uri(resolved, f"resolve_address({contact!r})")
            local = comm_core.get_local_address_for(contact)
            self._check_uri(local, f"get_local_address_for({contact!r})")
            if await self._host_port(contact):
                got = comm_core.get_address_host_port(contact)
                shape = f"get_address_host_port({contact!r}) returned {got!r}, not (host, port)"
                assert isinstance(got, tuple), shape
                assert len(got) == 2, shape
                assert isinstance(got[0], str), shape
                assert type(got[1]) is int, shape
                assert got[0] == host, (
                    f"get_address_host_port({contact!r}) gives the host {got[0]!r}, "
                    f"get_address_host() {host!r}"
                )
                assert 0 < got[1] <= 65535, f"the contact address {contact!r} has port {got[1]}"
                port = comm_core.get_address_host_port(resolved)[1]
                assert port == got[1], f"resolve_address({contact!r}) gave {resolved!r}"
            else:
                try:
                    comm_core.get_address_host_port(contact)
                except AddressError:
                    pass  # a scheme without ports
                except Exception as exc:
                    raise AssertionError(
                        f"get_address_host_port({contact!r}) raised {type(exc).__qualname__}: "
                        f"{exc}; a scheme without ports raises AddressError"
                    ) from exc
            async with await self.connect(resolved) as comm:
                await self._ping(comm)

    @_bounded
    async def test_malformed_locations_are_refused(self) -> None:
        """Every address function, connect() and listen() refuse a malformed location with
        AddressError, naming it."""
        locations = list(self.malformed_locations)
        if await self._host_port():
            locations += _MALFORMED_HOST_PORT
        self._skip_unless(
            bool(locations), "no malformed_locations to try (set malformed_locations)"
        )
        for loc in locations:
            addr = f"{self.scheme}://{loc}"
            for name, function in _ADDRESS_FUNCTIONS:
                self._expect_address_error(
                    f"{name}({addr!r})", functools.partial(function, addr), loc
                )
            error = await self._expect(
                self.connect(addr, timeout=self.connect_timeout),
                AddressError,
                f"connect({addr!r})",
            )
            assert _names(error, loc), f"connect({addr!r}) raised, not naming {loc!r}: {error}"
            try:
                listener = self.listen(echo_handler, address=addr)
            except AddressError as exc:
                error = exc
                assert _names(error, loc), f"listen({addr!r}) raised, not naming {loc!r}: {error}"
                continue
            except Exception as exc:
                raise AssertionError(
                    f"listen({addr!r}) raised {type(exc).__qualname__}: {exc}; "
                    "expected AddressError"
                ) from exc
            try:
                await self._expect(listener.start(), AddressError, f"listen({addr!r}).start()")
            finally:
                listener.stop()

    @_bounded
    async def test_host_port_addresses(self) -> None:
        """host:port locations: a missing port is never made up; IPv6 hosts are bracketed,
        and the brackets are no part of the host."""
        self._skip_unless(await self._host_port(), "its locations are not host:port")
        scheme = self.scheme
        for host, loc in (("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")):
            addr = f"{scheme}://{loc}"
            self._expect_address_error(
                f"get_address_host_port({addr!r}) (an address without a port)",
                functools.partial(comm_core.get_address_host_port, addr),
                loc,
            )
            got = comm_core.get_address_host(addr)
            assert got == host, f"get_address_host({addr!r}) returned {got!r}, not {host!r}"
            resolved = comm_core.resolve_address(addr)
            self._check_uri(resolved, f"resolve_address({addr!r})")
            self._expect_address_error(
                f"get_address_host_port(resolve_address({addr!r})) (a port was made up: "
                f"{resolved!r})",
                functools.partial(comm_core.get_address_host_port, resolved),
                "",
            )
            error = await self._expect(
                self.connect(addr, timeout=self.connect_timeout),
                AddressError,
                f"connect({addr!r}), which names no port",
            )
            assert _names(error, loc), f"connect({addr!r}) raised, not naming {loc!r}: {error}"
        for host, loc in (
            ("127.0.0.1", "127.0.0.1:8786"),
            ("::1", "[::1]:8786"),
            ("2001:db8::5", "[2001:db8::5]:8786"),
        ):
            addr = f"{scheme}://{loc}"
            got_host = comm_core.get_address_host(addr)
            assert got_host == host, f"get_address_host({addr!r}) returned {got_host!r}"
            pair = comm_core.get_address_host_port(addr)
            assert pair == (host, 8786), f"get_address_host_port({addr!r}) returned {pair!r}"
        addr = f"{scheme}://[::1]:8786"
        resolved = comm_core.resolve_address(addr)
        pair = comm_core.get_address_host_port(resolved)
        assert pair == ("::1", 8786), f"resolve_address({addr!r}) returned {resolved!r}"

    # -- 19. size limits --------------------------------------------------------------

    @_bounded
    async def test_writer_refuses_a_message_above_max_message_size(self) -> None:
        """A write above the writer's max_message_size raises MessageTooLargeError, sends
        nothing, and leaves the comm usable."""
        self._skip_unless(self.serializes, "it does not serialize messages (serializes=False)")
        limit = _SIZE_LIMIT
        async with (
            self.echo_server() as listener,
            await self.connect(listener.contact_address, max_message_size=limit) as comm,
        ):
            await self._expect(
                comm.write({"data": b"\0" * (limit + 1)}),
                MessageTooLargeError,
                f"write() of a message above max_message_size={limit}",
            )
            # Nothing was sent: the next reply is the echo of the next message.
            await self._ping(comm)
            await self._ping(comm, b"\1" * (limit // 2))

    @_bounded
    async def test_writer_refuses_a_message_nested_deeper_than_max_message_depth(self) -> None:
        """A write whose dicts, lists and tuples nest deeper than max_message_depth raises
        SerializationError and sends nothing (a peer with that setting would drop the
        connection); one exactly that deep goes through."""
        self._skip_unless(self.serializes, "it does not serialize messages (serializes=False)")
        depth = comm_core.get_setting("max_message_depth")
        async with (
            self.echo_server() as listener,
            await self.connect(listener.contact_address) as comm,
        ):
            await self._expect(
                comm.write(_nested(depth + 1)),
                SerializationError,
                f"write() of a message nested {depth + 1} deep (max_message_depth={depth})",
            )
            # Nothing was sent: the echo server is still there, and takes the deepest.
            await self._ping(comm)
            deepest = _nested(depth - 1)  # inside _ping's dict: depth levels in all
            await self._ping(comm, deepest)

    @_bounded
    async def test_reader_drops_a_message_above_max_message_size(self) -> None:
        """A reader refuses a message above its max_message_size: the read raises
        MessageTooLargeError and the comm is dropped (the peer's reads end)."""
        self._skip_unless(self.serializes, "it does not serialize messages (serializes=False)")
        limit = _SIZE_LIMIT
        outcome = self._new_future()
        closed = self._new_future()

        async def handler(comm: Comm) -> None:
            async with comm:
                try:
                    msg = await comm.read()
                except Exception as exc:
                    _resolve(outcome, exc)
                else:
                    _resolve(outcome, f"read() returned a {type(msg).__name__}")
                _resolve(closed, comm.closed())

        async with (
            self.serve(handler, max_message_size=limit) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            with contextlib.suppress(CommClosedError):  # the reader may drop it early
                await client.write({"data": b"\0" * (limit + 1)})
            result = await self.wait(outcome, "the server's read of a message above its limit")
            assert isinstance(result, MessageTooLargeError), (
                f"a read of a message above the reader's max_message_size={limit} should raise "
                f"MessageTooLargeError; {result!r}"
            )
            assert await closed, "the reader's comm is open after it refused a message"
            await self._expect(
                client.read(), CommClosedError, "the writer's read after the reader dropped it"
            )

    # -- 20. the first message --------------------------------------------------------

    @_bounded
    async def test_first_message_limit(self) -> None:
        """Each end refuses a first message (the handshake) above 64 KiB, header included,
        and accepts one of exactly 64 KiB."""
        tracker = _HandlerTracker()
        long = max(self.test_timeout, 30.0)
        limit = MAX_FIRST_MESSAGE
        async with self._serve(echo_handler, tracker, handshake_timeout=long) as listener:
            contact = listener.contact_address
            async with await self.raw_connect(contact) as raw:
                stream = self.stream_transport
                if stream is None:
                    stream = isinstance(raw, StreamComm)
                self._skip_unless(
                    stream,
                    "it carries no byte stream (stream_transport=False)"
                    if self.stream_transport is False
                    else "its comms are no StreamComm (set stream_transport if it has a stream)",
                )
                self._check_greeting(await self.wait(raw.read(), "the server's handshake"))
                with contextlib.suppress(CommClosedError):  # the listener may drop it early
                    await raw.write(_handshake_of(limit + 1))
                    await raw.write({"op": "ping"})  # a listener that took it answers this
                await self._expect(
                    raw.read(),
                    CommClosedError,
                    f"the listener to drop a peer whose first message takes {limit + 1} bytes",
                )
            assert tracker.calls == 0, (
                f"the listener accepted a first message of {limit + 1} bytes (above 64 KiB)"
            )
            async with await self.raw_connect(contact) as raw:
                self._check_greeting(await self.wait(raw.read(), "the server's handshake"))
                try:
                    await raw.write(_handshake_of(limit))
                    await self._ping(raw)
                except CommClosedError as exc:
                    raise AssertionError(
                        f"the listener refused a first message of exactly {limit} bytes "
                        f"(64 KiB, header included): {exc!r}"
                    ) from exc
        padding = _handshake_of(limit + 1)
        overrides = {key: value for key, value in padding.items() if key.startswith("kit-")}
        async with self.echo_server(handshake_overrides=overrides) as listener:
            await self._expect(
                self.connect(listener.contact_address, timeout=self.event_timeout),
                HandshakeError,
                "connect() to a listener whose handshake is above 64 KiB",
            )

    # -- 21. pickle -------------------------------------------------------------------

    @_bounded
    async def test_pickle_only_where_named(self) -> None:
        """A value only pickle can carry is written only with serializers=['pickle'] and read
        only with deserializers=['pickle']; a refused read consumes it, the comm goes on."""
        self._skip_unless(self.serializes, "it does not serialize messages (serializes=False)")
        value = {"value": fractions.Fraction(1, 3)}
        results = self._new_future()

        async def handler(comm: Comm) -> None:
            async with comm:
                try:
                    first: Any = await comm.read()
                except Exception as exc:
                    first = exc
                second = await comm.read(deserializers=["pickle"])
                _resolve(results, (first, second))
                for _ in range(2):
                    await comm.write(value, serializers=["pickle"])
                with contextlib.suppress(CommClosedError):
                    await comm.read()  # until the client closes

        async with (
            self.serve(handler) as listener,
            await self.connect(listener.contact_address) as client,
        ):
            await self._expect(
                client.write(value),
                SerializationError,
                "write() of a value only pickle can carry, with no serializers named",
            )
            for _ in range(2):
                await client.write(value, serializers=["pickle"])
            first, second = await self.wait(results, "the server's two reads")
            assert isinstance(first, SerializationError), (
                "read() without deserializers=['pickle'] must refuse a pickled value with "
                f"SerializationError; it gave {first!r}"
            )
            assert second == value, f"read(deserializers=['pickle']) returned {second!r}"
            await self._expect(
                client.read(),
                SerializationError,
                "read() of a pickled value without deserializers=['pickle']",
            )
            got = await self.wait(client.read(deserializers=["pickle"]), "a pickled value")
            assert got == value, f"read(deserializers=['pickle']) returned {got!r}"

    # -- 22. backpressure -------------------------------------------------------------

    @_bounded
    async def test_writer_waits_for_a_peer_that_does_not_read(self) -> None:
        """write() waits while the peer reads nothing, having handed over a bounded amount,
        and goes on once the peer reads; every message whose write returned arrives."""
        self._skip_unless(self.bounded_writes, "its writes never wait (bounded_writes=False)")
        server_side = self._new_future()
        release = self._new_future()
        received = self._new_future()

        async def handler(comm: Comm) -> None:
            _resolve(server_side, comm)
            await release  # read nothing until told
            async with comm:
                count = 0
                with contextlib.suppress(CommClosedError):
                    async for _ in comm:
                        count += 1
                _resolve(received, count)

        chunk = b"\0" * _CHUNK
        bound = self.backpressure_bound
        async with self.serve(handler) as listener:
            client = await self.connect(listener.contact_address)
            try:
                await self.wait(server_side, "the handler to be called")
                written = returned = 0
                while True:
                    write = asyncio.ensure_future(client.write({"n": returned, "data": chunk}))
                    done, _ = await asyncio.wait({write}, timeout=_STALL)
                    if not done:
                        break  # it waits for the peer
                    write.result()
                    returned += 1
                    written += _CHUNK
                    if written > bound:
                        pytest.fail(
                            f"write() never waited: {written} bytes handed over to a peer that "
                            f"reads nothing (more than backpressure_bound={bound})",
                            pytrace=False,
                        )
                _resolve(release)
                await self.wait(write, "the waiting write() to return once the peer reads")
                returned += 1
            except BaseException:
                client.abort()  # close() would wait to flush to a peer that does not read
                raise
            await client.close()
            count = await self.wait(received, "the peer to read every message")
            assert count == returned, f"{returned} writes returned, the peer read {count} messages"
