"""The peer's credentials on a connected Unix socket, as the kernel vouches for them.

Linux gives the peer's process id, user id and group id (``SO_PEERCRED``,
taken when the connection was made: the listener's for a dialer, the
dialer's for a listener); macOS and the BSDs give the user and group ids
(``LOCAL_PEERCRED``) and, on macOS, the process id (``LOCAL_PEERPID``). They
are facts of the connection, not claims of the peer: no peer can forge them.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["PeerCredentials", "credentials_supported", "own_uid", "peer_credentials"]

#: ``struct ucred`` of Linux: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")
#: ``struct xucred`` of macOS and the BSDs: version, uid, number of groups, groups[16].
_XUCRED: Final = struct.Struct("IIh16I")
#: ``SOL_LOCAL``, the level of the ``LOCAL_*`` options (0 on macOS and the BSDs).
_SOL_LOCAL: Final = 0
#: The option numbers of macOS and the BSDs where Python's socket module lacks them.
_LOCAL_PEERCRED: Final = getattr(socket, "LOCAL_PEERCRED", 0x001)
_LOCAL_PEERPID: Final = getattr(socket, "LOCAL_PEERPID", 0x002)

_LINUX: Final = hasattr(socket, "SO_PEERCRED")
_BSD: Final = not _LINUX and sys.platform.startswith(("darwin", "freebsd", "openbsd", "netbsd"))


@dataclass(frozen=True)
class PeerCredentials:
    """Who is at the other end of a Unix socket.

    Attributes:
        pid: the peer's process id when it connected (listened, for a dialer's
            peer); ``None`` where the OS does not say (the BSDs).
        uid: the peer's effective user id.
        gid: the peer's effective group id.
    """

    pid: int | None
    uid: int
    gid: int

    def as_extra_info(self) -> dict[str, Any]:
        """``peer_pid``, ``peer_uid`` and ``peer_gid``, for ``comm.extra_info``."""
        return {"peer_pid": self.pid, "peer_uid": self.uid, "peer_gid": self.gid}


def credentials_supported() -> bool:
    """Whether this OS tells who the peer of a Unix socket is (Linux, macOS, the BSDs)."""
    return _LINUX or _BSD


def peer_credentials(sock: Any) -> PeerCredentials | None:
    """The credentials of *sock*'s peer (*sock*: a connected Unix socket, or an event
    loop's stand-in for one with ``getsockopt``); ``None`` where the OS cannot say, or
    the socket is no longer connected."""
    try:
        if _LINUX:
            linux_pid, uid, gid = _UCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            )
            if uid == -1:  # not connected (any more): the kernel has no peer to name
                return None
            return PeerCredentials(linux_pid if linux_pid > 0 else None, uid, gid)
        if _BSD:
            raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
            _, uid, ngroups, *groups = _XUCRED.unpack(raw[: _XUCRED.size])
            pid: int | None = None
            if sys.platform == "darwin":
                pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
            return PeerCredentials(pid, uid, groups[0] if ngroups > 0 else -1)
    except (OSError, struct.error):
        return None
    return None


def own_uid() -> int:
    """This process's effective user id, which ``same_uid`` compares with the peer's."""
    return os.geteuid()
