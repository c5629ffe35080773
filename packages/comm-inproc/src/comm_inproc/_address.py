"""Inproc locations: ``<host>/<pid>/<n>``, parsed, formatted and allocated.

The host is this machine's name (``socket.gethostname()``, read once), the pid
is :func:`os.getpid`, and *n* comes from a process-wide counter that starts at
1, so addresses handed out by one process never repeat. ``n = 0`` is never
handed out; :meth:`InProcBackend.get_local_address_for` uses it to name the
process itself.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
from typing import Final

from comm_core.exceptions import AddressError

__all__ = [
    "SCHEME",
    "Location",
    "foreign_reason",
    "format_address",
    "format_location",
    "local_host",
    "new_location",
    "parse_location",
    "process_location",
]

#: The URI scheme served by comm-inproc.
SCHEME: Final = "inproc"

#: A parsed location: ``(host, pid, n)``.
Location = tuple[str, int, int]

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    global _counter_lock
    _counter_lock = threading.Lock()  # another thread may have held it at fork time


if sys.platform != "win32":
    os.register_at_fork(after_in_child=_new_lock_after_fork)


@functools.cache
def local_host() -> str:
    """This machine's name as used in inproc addresses (read once per process)."""
    import socket  # here: importing this module must stay cheap (comm-core lists backends)

    try:
        name = socket.gethostname()
    except OSError:  # pragma: no cover - gethostname practically never fails
        name = ""
    return name.replace("/", "-") or "localhost"


def new_location() -> Location:
    """Return a location of this process that was never handed out before."""
    with _counter_lock:
        n = next(_counter)
    return local_host(), os.getpid(), n


def process_location() -> Location:
    """The location ``<host>/<pid>/0`` that names this process rather than one endpoint."""
    return local_host(), os.getpid(), 0


def format_location(location: Location) -> str:
    """``("h", 12, 3)`` -> ``"h/12/3"``."""
    host, pid, n = location
    return f"{host}/{pid}/{n}"


def format_address(location: Location) -> str:
    """``("h", 12, 3)`` -> ``"inproc://h/12/3"``."""
    host, pid, n = location
    return f"{SCHEME}://{host}/{pid}/{n}"


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_location(loc: str) -> Location:
    """Parse ``"<host>/<pid>/<n>"`` into ``(host, pid, n)``.

    Raises:
        AddressError: *loc* is not a str, or not three ``/``-separated parts
            with a non-empty host and decimal integers pid and n.
    """
    if not isinstance(loc, str):
        raise AddressError(
            f"expected an inproc location as a str such as 'host/1234/1', "
            f"got {type(loc).__name__} {loc!r}"
        )
    parts = loc.split("/")
    if len(parts) == 3:
        host, pid, n = parts
        if host and _is_number(pid) and _is_number(n):
            return host, int(pid), int(n)
    raise AddressError(
        f"malformed inproc address {SCHEME + '://' + loc!r}: expected "
        f"'{SCHEME}://<host>/<pid>/<n>' with decimal integers pid and n "
        f"(or '{SCHEME}://' to listen on a fresh address)"
    )


def foreign_reason(location: Location) -> str | None:
    """Why *location* does not belong to this process, or ``None`` if it does."""
    host, pid, _ = location
    if pid != os.getpid():
        return f"it belongs to process {pid}, this is process {os.getpid()}"
    if host != local_host():
        return f"it names host {host!r}, this host is {local_host()!r}"
    return None
