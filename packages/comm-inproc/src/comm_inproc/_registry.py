"""The process-wide table of listening inproc addresses.

Guarded by a lock, since listeners start and stop, and connectors look them up,
from any thread. A child process made by ``fork()`` starts with an empty table:
the parent's listeners are not the child's.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING

from comm_core.exceptions import ConnectError
from comm_inproc._address import Location, foreign_reason, format_address, new_location

if TYPE_CHECKING:
    from comm_inproc._listener import InProcListener

__all__ = ["bind", "lookup", "unbind"]

_lock = threading.Lock()
_listeners: dict[Location, InProcListener] = {}


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork time
    _listeners.clear()


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_forget_after_fork)


def bind(listener: InProcListener, location: Location | None) -> Location:
    """Make *listener* reachable at *location*, or at a fresh location if it is ``None``.

    Returns:
        The location now bound.

    Raises:
        ConnectError: *location* is in use, or is not an address of this process.
    """
    if location is not None:
        reason = foreign_reason(location)
        if reason is not None:
            raise ConnectError(
                f"cannot listen on {format_address(location)}: {reason}; "
                "listen on 'inproc://' for a fresh address of this process"
            )
    with _lock:
        if location is None:
            location = new_location()
            while location in _listeners:  # taken by an explicit listen(): skip it
                location = new_location()
        elif location in _listeners:
            raise ConnectError(
                f"cannot listen on {format_address(location)}: address already in use"
            )
        _listeners[location] = listener
    return location


def unbind(location: Location, listener: InProcListener) -> None:
    """Forget *location* if *listener* is the one bound there."""
    with _lock:
        if _listeners.get(location) is listener:
            del _listeners[location]


def lookup(location: Location) -> InProcListener:
    """Return the listener bound at *location*.

    Raises:
        ConnectError: nothing listens there (refused, so that connect() retries).
    """
    with _lock:
        listener = _listeners.get(location)
    if listener is not None:
        return listener
    reason = foreign_reason(location)
    hint = f" ({reason}; inproc addresses are reachable only from their own process)"
    raise ConnectError(
        f"connection refused: nothing listens on {format_address(location)}"
        + (hint if reason else "")
    )
