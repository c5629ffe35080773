"""The unix listener: one socket file, created on start and removed on stop."""

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
from comm_core.stream import StreamAcceptor, StreamComm
from comm_unix._address import SCHEME

__all__ = ["UnixListener"]


#: Makes the comm for one accepted connection; its argument is the callback to
#: call once the peer's preamble has arrived.
CommFactory = Callable[[Callable[[StreamComm], None]], StreamComm]


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
        _clear_stale_socket(path)
        sock.bind(path)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UnixListener(Listener):
    """Accepts unix comms on one socket path.

    An empty *path* picks a fresh one, ``<tmp>/comm-unix-XXXX/listener.sock``,
    in a new directory that only this user may enter; stopping the listener
    removes both. A socket file left behind by a listener that is gone is
    replaced; a live listener's, or a file that is not a socket, is not.

    Args:
        path: the absolute socket path, or ``""`` for a fresh one.
        handle_comm: awaited once for each accepted comm, in a task of its own.
        make_comm: makes the comm of each accepted connection.
        backlog: the listening socket's backlog.
    """

    def __init__(
        self, path: str, handle_comm: CommHandler, make_comm: CommFactory, *, backlog: int = 1024
    ) -> None:
        self.path = path
        self.handle_comm = handle_comm
        self.make_comm = make_comm
        self.backlog = backlog
        self._server: asyncio.AbstractServer | None = None
        self._private_dir: str | None = None  # created by start() for an empty path
        self._inode: tuple[int, int] | None = None  # of the socket file we bound
        # comm-core's bookkeeping for accepted connections: drops peers that send no
        # preamble in time, runs handle_comm (the handshake, then the user's handler)
        # on the others.
        self.acceptor = StreamAcceptor(self, handle_comm)
        self._stopped = False

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            return
        if not self.path:
            self._private_dir = tempfile.mkdtemp(prefix="comm-unix-")  # mode 0o700
            self.path = os.path.join(self._private_dir, "listener.sock")
        try:
            sock = _bind(self.path, self.backlog)
        except OSError as exc:
            self._remove_files()
            reason = exc.strerror or str(exc)
            raise ConnectError(f"cannot listen on {SCHEME}://{self.path}: {reason}") from exc
        info = os.stat(self.path)
        self._inode = (info.st_dev, info.st_ino)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._make_protocol, sock=sock)

    def _make_protocol(self) -> asyncio.BaseProtocol:
        comm = self.make_comm(self.acceptor.established)
        return self.acceptor.accept(comm).protocol

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        self.acceptor.close()
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
        if not self.path:
            raise RuntimeError(f"a listener on '{SCHEME}://' has no path until started")
        return f"{SCHEME}://{self.path}"

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {"path": self.path, "backlog": self.backlog}
