"""What a ``unix://`` location is: an absolute socket path, or ``@name`` in Linux's
abstract namespace, written as is."""

from __future__ import annotations

import os
import sys
from typing import Any, Final

from comm_core import AddressError, BackendError

__all__ = [
    "ABSTRACT",
    "ABSTRACT_NAMESPACE",
    "MAX_PATH_BYTES",
    "SCHEME",
    "address_of",
    "check_path",
    "require_unix_sockets",
    "socket_address",
]

#: The URI scheme this distribution serves.
SCHEME: Final = "unix"

#: The longest socket path the OS accepts, in bytes: ``sun_path`` holds 108 bytes on
#: Linux and 104 on the BSDs and macOS, the terminating NUL included. An abstract name
#: takes the place of the NUL (its first byte), so it may be as long.
MAX_PATH_BYTES: Final = 107 if sys.platform.startswith("linux") else 103

#: What starts a name in the abstract namespace: ``unix://@name``.
ABSTRACT: Final = "@"

#: Whether this OS has an abstract namespace for sockets (Linux only).
ABSTRACT_NAMESPACE: Final = sys.platform.startswith("linux")


def check_path(loc: str, *, listening: bool) -> str:
    """Return the socket path of location *loc* (``unix://`` stripped), checked.

    ``@name`` names a socket in Linux's abstract namespace. An empty location
    (or ``@`` alone) is allowed when *listening*: the listener then picks a
    fresh path in a private temporary directory (a fresh abstract name).

    Raises:
        AddressError: *loc* is empty (when connecting), relative, holds a NUL
            character, is longer than the OS allows, or is abstract on an OS
            other than Linux.
    """
    address = f"{SCHEME}://{loc}"
    if loc in ("", ABSTRACT):
        if listening:
            return loc
        raise AddressError(
            f"cannot connect to {address!r}: an empty path or name is only for listening "
            "(on a fresh one); connect to a listener's contact_address"
        )
    if "\0" in loc:
        raise AddressError(f"address {address!r} holds a NUL character")
    if loc.startswith(ABSTRACT):
        if not ABSTRACT_NAMESPACE:
            raise AddressError(
                f"address {address!r} names an abstract socket, which only Linux has; "
                f"write an absolute path after '{SCHEME}://'"
            )
        loc_bytes = len(os.fsencode(loc[1:]))
    elif not loc.startswith("/"):
        raise AddressError(
            f"address {address!r} names a relative path; write an absolute path after "
            f"'{SCHEME}://', as in '{SCHEME}:///{loc}'"
        )
    else:
        loc_bytes = len(os.fsencode(loc))
    if loc_bytes > MAX_PATH_BYTES:
        raise AddressError(
            f"address {address!r} names a socket of {loc_bytes} bytes; this OS allows "
            f"{MAX_PATH_BYTES}"
        )
    return loc


def require_unix_sockets(address: str) -> None:
    """Check that this OS has Unix domain sockets, before *address* is used.

    Raises:
        BackendError: it has none (Windows' Python has no ``AF_UNIX``).
    """
    import socket

    if not hasattr(socket, "AF_UNIX"):
        raise BackendError(
            f"cannot use {address}: comm-unix needs Unix domain sockets, which this OS's "
            "Python does not have"
        )


def socket_address(path: str) -> str | bytes:
    """What ``bind()`` and ``connect()`` take for a checked *path*: the path, or the
    abstract name with its leading NUL byte (``b""`` for ``@`` alone: the kernel
    then binds a fresh name)."""
    if path.startswith(ABSTRACT):
        name = os.fsencode(path[1:])
        return b"\0" + name if name else b""
    return path


def address_of(sockaddr: Any) -> str:
    """The ``unix://`` address of a socket address as the OS gives it (``getsockname()``,
    ``getpeername()``): ``unix:///path``, ``unix://@name``, or ``unix://`` for an
    unnamed socket (the connecting end's)."""
    if isinstance(sockaddr, bytes):
        if sockaddr.startswith(b"\0"):
            return f"{SCHEME}://{ABSTRACT}{os.fsdecode(sockaddr[1:])}"
        sockaddr = os.fsdecode(sockaddr)
    return f"{SCHEME}://{sockaddr or ''}"
