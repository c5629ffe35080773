"""Finding what a test leaves behind: comms, listeners, file descriptors, tasks.

:class:`LeakCheck` is what the conformance kit checks after each of its tests,
usable on its own, with or without pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import warnings
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from comm_core.abc import Comm, Listener, _live_comms, _live_listeners

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LeakCheck", "open_comms", "open_listeners"]

#: What comm-core's ResourceWarnings about a comm or listener collected while open say.
_COLLECTED = "garbage-collected while"


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


def open_fds() -> dict[int, str] | None:
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


def _is_closed(comm: Comm) -> bool:
    try:
        return bool(comm.closed())
    except Exception:  # a broken comm counts as open: it needs attention
        return False


def _task_name(task: asyncio.Task[Any]) -> str:
    return repr(task.get_coro())


class LeakCheck:
    """Finds what the code between :meth:`start` and :meth:`finish` left behind.

    * **comms** still open, or garbage-collected while open (which warns with
      :class:`ResourceWarning`);
    * **listeners** started and never stopped;
    * **descriptors** (sockets, pipes, files) open at the end that were not
      open at the start, or now refer to something else. This reads
      ``/proc/self/fd``, so it runs on Linux only, and is skipped elsewhere;
    * **tasks** (with ``async with`` only) started in the block and still
      running a few seconds after it.

    Use it as a context manager, which raises :class:`AssertionError` listing
    every leak (unless the block raised)::

        with LeakCheck():
            asyncio.run(main())

        async def test_something():
            async with LeakCheck():
                ...

    ``async with`` also waits (up to *settle* seconds) for the tasks started in
    the block to end, and for descriptors closed in the block to be released
    (a transport closes its socket on a later loop iteration). Or call
    :meth:`start` and :meth:`finish`, which returns the leaks as a list of
    lines. comm-core's pytest plugin offers it as the ``comm_leak_check``
    fixture; the conformance kit runs it after each of its tests.

    Args:
        comms, listeners, descriptors, tasks: which checks to make.
        cleanup: abort the comms, stop the listeners and cancel the tasks that
            leaked, so that what runs next does not see them.
        settle: the most seconds ``async with`` waits for tasks and descriptors.
    """

    def __init__(
        self,
        *,
        comms: bool = True,
        listeners: bool = True,
        descriptors: bool = True,
        tasks: bool = True,
        cleanup: bool = True,
        settle: float = 5.0,
    ) -> None:
        self.comms = comms
        self.listeners = listeners
        self.descriptors = descriptors
        self.tasks = tasks
        self.cleanup = cleanup
        self.settle = settle
        self._comms_before: weakref.WeakSet[Comm] = weakref.WeakSet()
        self._listeners_before: weakref.WeakSet[Listener] = weakref.WeakSet()
        self._fds_before: dict[int, str] | None = None
        self._tasks_before: set[asyncio.Task[Any]] = set()
        self._started = False

    def start(self) -> Self:
        """Note what exists now; what :meth:`finish` finds beyond it is a leak."""
        self._comms_before = weakref.WeakSet(_live_comms)
        self._listeners_before = weakref.WeakSet(_live_listeners)
        self._fds_before = open_fds() if self.descriptors else None
        self._started = True
        return self

    def finish(self) -> list[str]:
        """What leaked since :meth:`start`, one line each (empty if nothing did).

        Collects garbage first, so that comms nobody holds are collected, not
        reported as open (those collected while open are reported as such).
        Warnings other than comm-core's about objects collected while open are
        warned again, for the run's warning filters to judge.

        Raises:
            RuntimeError: :meth:`start` was not called.
        """
        if not self._started:
            raise RuntimeError("LeakCheck.finish() called before start()")
        self._started = False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
            leaked = [
                comm
                for comm in list(_live_comms)
                if comm not in self._comms_before and not _is_closed(comm)
            ]
        problems: list[str] = []
        if self.comms:
            problems += [f"left open: {comm!r}" for comm in leaked]
        running = [lst for lst in open_listeners() if lst not in self._listeners_before]
        if self.listeners:
            problems += [f"left running: {lst!r} (never stopped)" for lst in running]
        if self.cleanup:  # what runs next must not see them
            for comm in leaked:
                with contextlib.suppress(Exception):
                    comm.abort()
            for lst in running:
                with contextlib.suppress(Exception):
                    lst.stop()
        for item in caught:
            collected = issubclass(item.category, ResourceWarning) and _COLLECTED in str(
                item.message
            )
            if collected and self.comms:
                problems.append(f"garbage-collected: {item.message}")
            elif not collected:  # not ours to judge: let the run's warning filters decide
                warnings.warn_explicit(
                    item.message, item.category, item.filename, item.lineno, source=item.source
                )
        problems += self._new_fds()
        return problems

    def _new_fds(self) -> list[str]:
        before = self._fds_before
        if before is None or not self.descriptors:
            return []
        after = open_fds()
        if after is None:
            return []
        return [
            f"left open: file descriptor {fd} ({target})"
            for fd, target in sorted(after.items())
            if before.get(fd) != target
        ]

    def check(self) -> None:
        """:meth:`finish`, raising :class:`AssertionError` if anything leaked."""
        problems = self.finish()
        if problems:
            raise AssertionError(self.describe(problems))

    @staticmethod
    def describe(problems: list[str], subject: str = "the code checked") -> str:
        """A message that lists *problems*, left behind by *subject*."""
        return f"{subject} left {len(problems)} thing(s) behind:\n  " + "\n  ".join(problems)

    # -- with ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = self.finish()
        if problems and exc is None:
            raise AssertionError(self.describe(problems, "the block"))

    # -- async with ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._tasks_before = set(asyncio.all_tasks())
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        problems = await self._settle_tasks() if self.tasks else []
        await self._settle_fds()
        problems += self.finish()
        if problems and exc is None:
            raise AssertionError(self.describe(problems, "the block"))

    async def _settle_tasks(self) -> list[str]:
        """Wait up to ``settle`` seconds for the tasks started in the block; report (and
        cancel, with ``cleanup``) those still running."""
        current = asyncio.current_task()
        before = self._tasks_before
        self._tasks_before = set()
        started = {t for t in asyncio.all_tasks() if t is not current and t not in before}
        if not started:
            return []
        _, running = await asyncio.wait(started, timeout=self.settle)
        if not running:
            return []
        problems = [
            f"left running: task {_task_name(task)} ({self.settle:g}s after the block)"
            for task in running
        ]
        if self.cleanup:
            for task in running:
                task.cancel()
            await asyncio.wait(running, timeout=self.settle)
        return problems

    async def _settle_fds(self) -> None:
        """Give descriptors closed in the block the loop iterations their release takes
        (a transport closes its socket in a callback), for at most ``settle`` seconds."""
        if self._fds_before is None or not self.descriptors:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle
        for _ in range(3):  # most transports need one or two iterations
            await asyncio.sleep(0)
        # No event says that a socket was released: poll, for a bounded time.
        while self._new_fds() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
