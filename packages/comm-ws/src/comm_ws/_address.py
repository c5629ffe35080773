"""What a ws:// or wss:// location is: ``host:port`` and an optional HTTP path.

``ws://host:8786`` requests the path ``/``; ``ws://host:8786/comm`` requests
``/comm``. A listener serves one path and answers every other with 404. Light:
no socket, no asyncio.
"""

from __future__ import annotations

import functools
import re

from comm_core import AddressError, parse_host_port, unparse_host_port

__all__ = ["join_location", "parse_location", "split_location"]

#: The characters of an absolute path in a URI (RFC 3986: pchar and "/"), percent
#: escapes included; no query, no fragment, no space.
_PATH = r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*"


@functools.cache
def _path_pattern() -> re.Pattern[str]:
    return re.compile(_PATH)  # compiled on first use: looking the backend up stays cheap


#: The longest path accepted (a request line holds it).
MAX_PATH = 1024


def split_location(loc: str, scheme: str) -> tuple[str, str]:
    """``(host_port, path)`` of *loc*: the path starts at the first ``/`` (``"/"`` if none).

    Raises:
        AddressError: the path has characters a URI path cannot hold, or is too long.
    """
    cut = loc.find("/")
    if cut < 0:
        return loc, "/"
    host_port, path = loc[:cut], loc[cut:]
    if len(path) > MAX_PATH or not _path_pattern().fullmatch(path):
        raise AddressError(
            f"{scheme}://{loc}: {path[:80]!r} is not a valid HTTP path (write it as in a "
            f"URL: ASCII letters, digits, -._~!$&'()*+,;=:@%/, at most {MAX_PATH} characters, "
            "no query or fragment)"
        )
    return host_port, path


def parse_location(loc: str, scheme: str) -> tuple[str, int, str]:
    """``(host, port, path)`` of *loc* (a missing port is 0, to listen on any).

    Raises:
        AddressError: *loc* is malformed, naming it.
    """
    host_port, path = split_location(loc, scheme)
    try:
        host, port = parse_host_port(host_port, default_port=0, scheme=scheme)
    except AddressError as exc:
        if host_port == loc:
            raise
        raise AddressError(f"{scheme}://{loc}: {exc}") from exc
    return host, port, path


def join_location(host: str, port: int | None, path: str) -> str:
    """The location of *host*, *port* (``None``: none) and *path* (``"/"`` is left out)."""
    return unparse_host_port(host, port) + ("" if path == "/" else path)
