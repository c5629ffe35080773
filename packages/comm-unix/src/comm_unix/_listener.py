"""The unix listener: one socket file (or abstract name), bound on start, removed on stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from comm_core import ConnectError
from comm_core.abc import CommHandler, Listener
from comm_core.sockets import AcceptLoop
from comm_core.stream import StreamAcceptor, StreamComm
from comm_unix._address import ABSTRACT, SCHEME, address_of, socket_address
from comm_unix._comm import UnixComm, UnixProtocol
from comm_unix._credentials import PeerCredentials
from comm_unix._peers import RefusalLog, UserCheck
from comm_unix._transport import accept_handler, drives_sockets, logger

__all__ = ["UnixListener"]


#: Makes the comm for one accepted connection; its argument is the callback to
#: call once the peer's preamble has arrived.
CommFactory = Callable[[Callable[[StreamComm], None]], UnixComm]


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file that nobody listens on any more; refuse anything else.

    Raises:
        OSError: a live listener owns *path*, or it is not a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # never wait on a listener whose backlog is full
        try:
            probe.connect(path)
        except ConnectionRefusedError:  # left behind by a process that is gone
            os.unlink(path)
            return
        except BlockingIOError:  # someone listens, with a full backlog
            pass
    raise OSError(errno.EADDRINUSE, "another listener uses this socket")


def _bind(path: str, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path.startswith(ABSTRACT):  # an abstract name has no file to clear
            _clear_stale_socket(path)
        sock.bind(socket_address(path))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixListener(Listener):
    """Accepts unix comms on one socket path, or one abstract name.

    An empty *path* picks a fresh one, ``<tmp>/comm-unix-XXXX/listener.sock``,
    in a new directory that only this user may enter; stopping the listener
    removes both. A socket file left behind by a listener that is gone is
    replaced; a live listener's, or a file that is not a socket, is not.
    ``@name`` listens on an abstract name (Linux), ``@`` alone on a fresh one
    the kernel picks; such names vanish with their socket.

    Args:
        path: the absolute socket path, ``@name``, or ``""`` / ``"@"`` for a fresh one.
        handle_comm: awaited once for each accepted comm, in a task of its own.
        make_comm: makes the comm of each accepted connection.
        backlog: the listening socket's backlog.
        same_uid: accept peers of this process's user only (default); ``False``:
            any peer that can reach the socket.
    """

    def __init__(
        self,
        path: str,
        handle_comm: CommHandler,
        make_comm: CommFactory,
        *,
        backlog: int = 1024,
        same_uid: bool = True,
    ) -> None:
        self.path = path
        self.handle_comm = handle_comm
        self.make_comm = make_comm
        self.backlog = backlog
        self.same_uid = same_uid
        self._accepting: AcceptLoop | asyncio.AbstractServer | None = None
        self._private_dir: str | None = None  # created by start() for an empty path
        self._inode: tuple[int, int] | None = None  # of the socket file we bound
        self._users: UserCheck | None = None
        self._refused: RefusalLog | None = None
        # comm-core's bookkeeping for accepted connections: drops peers that send no
        # preamble in time, runs handle_comm (the handshake, then the user's handler)
        # on the others.
        self.acceptor = StreamAcceptor(self, handle_comm)
        self._stopped = False

    async def start(self) -> None:
        if self._accepting is not None or self._stopped:
            return
        self._users = UserCheck.from_args({"same_uid": self.same_uid}, self.listen_address)
        self._refused = RefusalLog(self._users)
        if not self.path:
            self._private_dir = tempfile.mkdtemp(prefix="comm-unix-")  # mode 0o700
            self.path = os.path.join(self._private_dir, "listener.sock")
        try:
            sock = _bind(self.path, self.backlog)
        except OSError as exc:
            self._remove_files()
            reason = exc.strerror or str(exc)
            raise ConnectError(f"cannot listen on {SCHEME}://{self.path}: {reason}") from exc
        if self.path.startswith(ABSTRACT):  # '@': the name the kernel picked
            self.path = address_of(sock.getsockname()).removeprefix(f"{SCHEME}://")
        else:
            info = os.stat(self.path)
            self._inode = (info.st_dev, info.st_ino)
        loop = asyncio.get_running_loop()
        if drives_sockets(loop):
            on_accept = accept_handler(
                loop,
                self._make_protocol,
                allowed=self._allowed,
                greeting=self.acceptor.greeting,
                admit=self.acceptor.admit,
            )
            where = self.listen_address
            self._accepting = AcceptLoop(
                loop, sock, on_accept, backlog=self.backlog, where=lambda: where, logger=logger
            )
        else:
            self._accepting = await loop.create_unix_server(
                lambda: self._make_protocol(None, check=True), sock=sock
            )

    def _allowed(self, credentials: PeerCredentials | None) -> bool:
        assert self._users is not None
        assert self._refused is not None
        if self._users.allows(credentials):
            return True
        self._refused(credentials)
        return False

    def _make_protocol(
        self, credentials: PeerCredentials | None, *, check: bool = False
    ) -> UnixProtocol:
        comm = self.make_comm(self.acceptor.established)
        protocol = comm.protocol
        if check:  # the event loop's server: the protocol checks as it is connected
            assert self._users is not None
            protocol.allowed_uid = self._users.uid
            protocol.on_refused = self._refused
        else:
            protocol.credentials = credentials
        self.acceptor.accept(comm)
        return protocol

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._accepting is not None:
            self._accepting.close()
        self.acceptor.close()
        if self._refused is not None:
            self._refused.flush()  # how many lines were left out, now rather than later
        self._remove_files()
        super().stop()  # connections accepted before are still served (see Listener.stop)

    def _remove_files(self) -> None:
        """Remove our socket file (not one that replaced it) and our private directory."""
        if self._inode is not None:
            with contextlib.suppress(OSError):
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) == self._inode:
                    os.unlink(self.path)
            self._inode = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    @property
    def listen_address(self) -> str:
        return f"{SCHEME}://{self.path}"

    @property
    def contact_address(self) -> str:
        if self.path in ("", ABSTRACT):
            raise RuntimeError(f"a listener on '{SCHEME}://{self.path}' has no name until started")
        return f"{SCHEME}://{self.path}"

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {
            "path": self.path,
            "backlog": self.backlog,
            "same_uid": self.same_uid,
            "refused": self._refused.total if self._refused is not None else 0,
        }
