"""What a ``unix://`` location is: an absolute socket path, written as is."""

from __future__ import annotations

import os
import sys
from typing import Final

from comm_core import AddressError

__all__ = ["MAX_PATH_BYTES", "SCHEME", "check_path"]

#: The URI scheme this distribution serves.
SCHEME: Final = "unix"

#: The longest socket path the OS accepts, in bytes: ``sun_path`` holds 108 bytes on
#: Linux and 104 on the BSDs and macOS, the terminating NUL included.
MAX_PATH_BYTES: Final = 107 if sys.platform.startswith("linux") else 103


def check_path(loc: str, *, listening: bool) -> str:
    """Return the socket path of location *loc* (``unix://`` stripped), checked.

    An empty location is allowed when *listening*: the listener then picks a
    fresh path in a private temporary directory.

    Raises:
        AddressError: *loc* is empty (when connecting), relative, holds a NUL
            character, or is longer than the OS allows.
    """
    if not loc:
        if listening:
            return ""
        raise AddressError(
            f"cannot connect to '{SCHEME}://': an empty path is only for listening "
            "(on a fresh path); connect to a listener's contact_address"
        )
    address = f"{SCHEME}://{loc}"
    if "\0" in loc:
        raise AddressError(f"address {address!r} holds a NUL character")
    if not loc.startswith("/"):
        raise AddressError(
            f"address {address!r} names a relative path; write an absolute path after "
            f"'{SCHEME}://', as in '{SCHEME}:///{loc}'"
        )
    size = len(os.fsencode(loc))
    if size > MAX_PATH_BYTES:
        raise AddressError(
            f"address {address!r} names a path of {size} bytes; this OS allows "
            f"{MAX_PATH_BYTES} for a socket"
        )
    return loc
