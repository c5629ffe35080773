"""The unix connector: dials socket paths and abstract names."""

from __future__ import annotations

from typing import Any

from comm_core import CommError, FatalCommClosedError, Options
from comm_core.abc import Comm, Connector
from comm_core.sockets import connect_error
from comm_unix._address import SCHEME, check_path, require_unix_sockets, socket_address
from comm_unix._comm import UnixComm
from comm_unix._credentials import PeerCredentials
from comm_unix._peers import UserCheck

__all__ = ["UnixConnector", "comm_options"]

#: The connection arguments that configure a comm; the others are ignored.
COMM_OPTIONS = (
    "max_message_size",
    "write_high_water",
    "read_high_water",
    "send_buffer",
    "arena_size",
    "arena_threshold",
    "arena_wait",
)


def comm_options(connection_args: dict[str, Any]) -> dict[str, Any]:
    """Pick the :class:`~comm_unix.UnixComm` options out of *connection_args*.

    Raises:
        ValueError: ``send_buffer``, ``arena_size`` or ``arena_threshold`` is not a
            whole number of bytes, 0 or more, or ``arena_wait`` not a number of
            seconds, 0 or more.
    """
    options = {
        name: connection_args[name]
        for name in COMM_OPTIONS
        if connection_args.get(name) is not None
    }
    for name in ("send_buffer", "arena_size", "arena_threshold"):
        value = options.get(name, 0)
        if type(value) is not int or value < 0:
            raise ValueError(f"{name} must be a number of bytes, 0 or more: {value!r}")
    wait = options.get("arena_wait", 0.0)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
        raise ValueError(f"arena_wait must be a number of seconds, 0 or more: {wait!r}")
    return options


class UnixConnector(Connector):
    """Dials socket paths (``unix:///run/app.sock``) and abstract names (``unix://@app``)."""

    async def connect(
        self,
        address: str,
        deserialize: bool = True,
        *,
        options: Options | None = None,
        **connection_args: Any,
    ) -> Comm:
        from comm_unix._transport import dial

        path = check_path(address, listening=False)
        uri = f"{SCHEME}://{path}"
        require_unix_sockets(uri)
        # same_uid (default True): talk only to a listener of this user.
        users = UserCheck.from_args(connection_args, uri, FatalCommClosedError)

        def check(credentials: PeerCredentials | None) -> None:
            if not users.allows(credentials):
                # Retrying will not change who listens there: fail at once.
                raise FatalCommClosedError(users.refusal("the listener", credentials))

        # options: the settings connect() resolved, for the comm (its size limits, ...).
        comm = UnixComm(deserialize=deserialize, options=options, **comm_options(connection_args))
        try:
            await dial(socket_address(path), comm.protocol, check)
        except CommError:  # refused by check(): already comm's (and an OSError too)
            comm.abort()
            raise
        except PermissionError as exc:
            comm.abort()
            # Retrying will not change the socket's permissions: fail at once.
            raise FatalCommClosedError(f"cannot connect to {uri}: {exc}") from exc
        except OSError as exc:
            comm.abort()
            # Nobody listens (yet): ENOENT, ECONNREFUSED... connect() retries a
            # ConnectError; comm-core's helper words it as comm-tcp's and comm-tls's.
            raise connect_error(uri, exc) from exc
        except BaseException:  # refused, or cancelled: leave nothing half-open
            comm.abort()
            raise
        return comm
