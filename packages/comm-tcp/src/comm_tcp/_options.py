"""Socket options for tcp comms: Nagle off, keepalive, and a dead-peer timeout."""

from __future__ import annotations

import functools
import math
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["SocketOptions"]


@dataclass(frozen=True)
class SocketOptions:
    """TCP options applied to every socket of a comm.

    Attributes:
        nodelay: turn Nagle's algorithm off (small messages leave at once).
        keepalive: send keepalive probes on an idle connection.
        dead_peer_timeout: seconds after which a peer that neither acknowledges
            data nor answers keepalive probes is declared dead, and reads fail
            with ``CommClosedError``; ``None`` leaves the OS defaults (hours).
            Uses ``TCP_USER_TIMEOUT`` and keepalive timers where the OS has them.
    """

    nodelay: bool = True
    keepalive: bool = True
    dead_peer_timeout: float | None = 30.0

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> SocketOptions:
        """Build from connection arguments, ignoring those that are not socket options."""
        if cls is SocketOptions and not args.keys() & _OPTION_NAMES:
            return _DEFAULT
        timeout = args.get("dead_peer_timeout", cls.dead_peer_timeout)
        if timeout is not None:
            timeout = float(timeout)
            if not math.isfinite(timeout) or timeout <= 0:
                raise ValueError(f"dead_peer_timeout must be a positive number, got {timeout!r}")
        return cls(
            nodelay=bool(args.get("nodelay", True)),
            keepalive=bool(args.get("keepalive", True)),
            dead_peer_timeout=timeout,
        )

    def apply(self, sock: Any) -> None:
        """Set the options on *sock* (a socket or an asyncio ``TransportSocket``)."""
        setsockopt = sock.setsockopt
        for level, option, value in self._settings:
            setsockopt(level, option, value)

    @functools.cached_property
    def _settings(self) -> tuple[tuple[int, int, int], ...]:
        """``(level, option, value)`` for each ``setsockopt`` call, worked out once."""
        # Both ways: event loops turn TCP_NODELAY on by themselves, so nodelay=False
        # must turn it off again.
        settings = [
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay)),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(self.keepalive)),
        ]
        timeout = self.dead_peer_timeout
        if timeout is None:
            return tuple(settings)
        if self.keepalive:
            idle = max(1, int(timeout / 3))
            interval = max(1, int(timeout / 6))
            for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval)):
                if hasattr(socket, name):
                    settings.append((socket.IPPROTO_TCP, getattr(socket, name), value))
            if hasattr(socket, "TCP_KEEPCNT"):
                settings.append((socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4))
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
        if user_timeout is not None:
            settings.append((socket.IPPROTO_TCP, user_timeout, int(timeout * 1000)))
        return tuple(settings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodelay": self.nodelay,
            "keepalive": self.keepalive,
            "dead_peer_timeout": self.dead_peer_timeout,
        }


_OPTION_NAMES = frozenset({"nodelay", "keepalive", "dead_peer_timeout"})
_DEFAULT = SocketOptions()
