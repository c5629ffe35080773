"""Log lines about what peers do, at a rate that a flood of peers cannot raise."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["LogLimiter"]


class LogLimiter:
    """Lets at most *burst* records through per *interval* seconds; counts the rest.

    For lines that a peer can cause, one per connection (a dropped
    connection, a failed handshake): a flood of connections then costs a few
    lines, and one summary line per interval says how many were left out.
    The summary goes out at the end of the interval (from the running event
    loop), or else before the next record let through. A transport logs every
    line a peer can cause through one: comm's own listeners keep one per kind
    of line and listener.

    Args:
        logger: where the records go.
        what: what one record is about, in the plural, for the summary
            (``"connections dropped for sending no preamble"``).
        burst: records let through per interval.
        interval: seconds.
    """

    __slots__ = (
        "_end",
        "_level",
        "_passed",
        "_suppressed",
        "_timer",
        "burst",
        "interval",
        "logger",
        "what",
    )

    def __init__(
        self, logger: logging.Logger, what: str, *, burst: int = 3, interval: float = 10.0
    ) -> None:
        self.logger = logger
        self.what = what
        self.burst = burst
        self.interval = interval
        self._end = 0.0  # when the current interval ends (time.monotonic())
        self._passed = 0  # records let through in the current interval
        self._suppressed = 0  # records left out since the last summary
        self._level = logging.NOTSET  # the highest level left out
        self._timer: asyncio.TimerHandle | None = None

    def log(self, level: int, msg: str, *args: object) -> None:
        """Log ``msg % args`` at *level*, unless *burst* records went out this interval."""
        if not self.logger.isEnabledFor(level):
            return
        now = time.monotonic()
        if now >= self._end:
            self.flush()
            self._end = now + self.interval
            self._passed = 0
        if self._passed < self.burst:
            self._passed += 1
            self.logger.log(level, msg, *args)
            return
        self._suppressed += 1
        self._level = max(self._level, level)
        if self._timer is None:
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # reported before the next record let through
            self._timer = loop.call_later(max(self._end - now, 0.0), self.flush)

    def flush(self) -> None:
        """Log how many records were left out since the last summary, if any."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        count, self._suppressed = self._suppressed, 0
        if count:
            self.logger.log(
                self._level,
                "... and %d more %s in the last %gs (not logged one by one)",
                count,
                self.what,
                self.interval,
            )
        self._level = logging.NOTSET
