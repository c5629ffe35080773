"""What the commands share: exit statuses, errors, terminal output, finding the backend."""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from comm_core._addressing import parse_address, unparse_address
from comm_core._config import _parse_size
from comm_core._registry import get_registry
from comm_core.abc import Comm
from comm_core.exceptions import BackendError, CommError

if TYPE_CHECKING:
    import asyncio

    from comm_core.abc import Backend

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CLIError",
    "Status",
    "Style",
    "about",
    "backend_for",
    "echo",
    "format_seconds",
    "format_size",
    "format_table",
    "non_negative_float",
    "positive_float",
    "positive_int",
    "print_error",
    "refused",
    "size",
    "stop_on_signals",
    "unicode_ok",
]

#: Success.
EXIT_OK = 0
#: What the command checks failed: no reply, could not connect or listen, an unhealthy address.
EXIT_FAILURE = 1
#: Usage errors, and errors in what the command was given (a malformed address, an
#: uninstalled scheme, options a plugin cannot use): argparse's status for usage errors.
EXIT_ERROR = 2
#: Interrupted by Ctrl-C (128 + SIGINT), for the commands where Ctrl-C is not the way to stop.
EXIT_INTERRUPTED = 130

PROG = "comm"


class CLIError(Exception):
    """An error to report as ``comm: error: <message>`` and exit with *code*.

    Plugins raise it from their ``comm_cli_*`` hooks for options they cannot
    use (a missing file, a contradiction): say which option, and what to do.
    """

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def print_error(message: str) -> None:
    """Write ``comm: error: <message>`` to standard error."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


# -- argument types ----------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def size(text: str) -> int:
    """A size in bytes: ``64``, ``1KiB``, ``16MiB``, ``1MB``; 0 is allowed."""
    if text.strip() == "0":
        return 0
    try:
        return int(_parse_size(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- output ------------------------------------------------------------------------------


def unicode_ok(stream: TextIO, sample: str = "✓✗µ") -> bool:
    """Whether *stream* can encode *sample* (not on an ASCII or Latin-1 console)."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        sample.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class Style:
    """ANSI colors, only on a terminal and when ``NO_COLOR`` is unset (https://no-color.org)."""

    def __init__(self, stream: TextIO) -> None:
        isatty = getattr(stream, "isatty", None)
        self.enabled = (
            bool(isatty and isatty())
            and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb"
        )

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


class Status:
    """One line of progress on standard error, rewritten in place; only on a terminal."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.interval = interval
        self._next = 0.0
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        """Show *text*, at most every *interval* seconds unless *force*."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        columns = shutil.get_terminal_size().columns
        text = text[: max(columns - 1, 10)]
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def format_seconds(seconds: float, *, micro: str = "µs") -> str:
    """``12.3 µs``, ``1.23 ms``, ``1.23 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} {micro}"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_size(nbytes: int) -> str:
    """``64 B``, ``1 KiB``, ``16 MiB``, ``1.5 MiB``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: str = "") -> str:
    """A plain-text table; columns whose index is in *right* are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(widths[i]) if str(i) in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Iterator[None]:
    """Call *stop* on SIGINT (Ctrl-C) and SIGTERM while in the block.

    Where the loop cannot handle signals (Windows), Ctrl-C raises
    :class:`KeyboardInterrupt` as usual and the commands catch it.
    """
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def echo(comm: Comm) -> int:
    """Send every message back until the peer closes; return how many were echoed."""
    count = 0
    try:
        async for msg in comm:
            await comm.write(msg)
            count += 1
    finally:
        await comm.close()
    return count


def describe_backend_error(exc: CommError) -> str:
    """The message of a registry error (unknown scheme, conflict, broken plugin)."""
    if isinstance(exc, BackendError):
        return f"{exc} (`comm backends` lists the installed transports)"
    return str(exc)


def backend_for(address: str) -> tuple[str, str, Backend]:
    """``(address with its scheme, scheme, backend)`` for *address*.

    Raises:
        CLIError: the address is malformed, or no installed backend serves its
            scheme (or two do, or a plugin is broken).
    """
    try:
        scheme, loc = parse_address(address)
        backend = get_registry().get_backend(scheme, address=address)
    except CommError as exc:  # AddressError, UnknownSchemeError, BackendError
        raise CLIError(describe_backend_error(exc)) from exc
    return unparse_address(scheme, loc), scheme, backend


def about(address: str, exc: BaseException, verb: str) -> str:
    """``str(exc)``, prefixed with ``{verb} {address}: `` unless it names the address already."""
    text = str(exc) or type(exc).__name__
    return text if address in text else f"{verb} {address}: {text}"


def refused(exc: BaseException) -> bool:
    """Whether *exc*, or an exception it was raised from, is a refused connection."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ECONNREFUSED:
            return True
        current = current.__cause__ or current.__context__
    return False
