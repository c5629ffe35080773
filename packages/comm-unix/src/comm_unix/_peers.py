"""Who may be at the other end: the ``same_uid`` connection argument.

A Unix socket carries no authentication of its own: whoever can reach it may
connect (a path's file permissions decide, and nothing does for an abstract
name), and whoever bound a path or an abstract name first is the listener
there. The kernel, though, tells each end who the other is. With ``same_uid``
(the default), a listener drops a peer of another user before greeting it,
and a dialer refuses a listener of another user before sending anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from comm_core import CommError, ConnectError, LogLimiter
from comm_unix._credentials import PeerCredentials, credentials_supported, own_uid

__all__ = ["RefusalLog", "UserCheck"]

logger = logging.getLogger("comm_unix")


@dataclass(frozen=True)
class UserCheck:
    """Whether to accept a peer of another user.

    Attributes:
        uid: the only user id a peer may have; ``None`` for any.
        where: the address, for messages.
    """

    uid: int | None
    where: str

    @classmethod
    def from_args(
        cls, connection_args: dict[str, Any], where: str, error: type[CommError] = ConnectError
    ) -> UserCheck:
        """From the ``same_uid`` connection argument (default ``True``).

        Raises:
            CommError: *error*, if ``same_uid`` is true on an OS that cannot tell
                who the peer is.
        """
        same_uid = connection_args.get("same_uid")
        if same_uid is None or bool(same_uid):
            if not credentials_supported():
                raise error(
                    f"{where}: this OS does not tell who the peer of a Unix socket is, so "
                    "same_uid cannot be checked; pass same_uid=False to let any user "
                    "that can reach the socket connect"
                )
            return cls(own_uid(), where)
        return cls(None, where)

    def allows(self, credentials: PeerCredentials | None) -> bool:
        """Whether a peer with *credentials* (``None``: unknown) may talk to us."""
        return self.uid is None or (credentials is not None and credentials.uid == self.uid)

    def refusal(self, who: str, credentials: PeerCredentials | None) -> str:
        """Why *who* (``"the listener"``, ``"a peer"``) with *credentials* was refused."""
        if credentials is None:
            user = "whose user the OS did not say"
        else:
            pid = f"pid {credentials.pid}, " if credentials.pid else ""
            user = f"({pid}uid {credentials.uid})"
        return (
            f"{self.where}: refused {who} {user}: same_uid allows uid {self.uid} only, "
            "this process's; same_uid=False lets any user that can reach the socket in"
        )


class RefusalLog:
    """Logs the peers a listener refuses through a :class:`comm_core.LogLimiter`: a
    warning at most every *interval* seconds, then how many more (a local peer must not
    flood the log); :attr:`total` counts them all."""

    def __init__(self, check: UserCheck, interval: float = 10.0) -> None:
        self.check = check
        self.total = 0
        self._lines = LogLimiter(
            logger, "peers of another user refused", burst=1, interval=interval
        )

    def __call__(self, credentials: PeerCredentials | None) -> None:
        self.total += 1
        self._lines.log(logging.WARNING, "%s", self.check.refusal("a peer", credentials))

    def flush(self) -> None:
        """Log how many were left out since the last line, if any."""
        self._lines.flush()
