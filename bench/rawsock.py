"""W3's ceiling: the same payload over blocking sockets, ``sendall`` and ``recv_into``.

A put is a u64 little-endian length, then the payload; the receiver reads it
into a buffer it keeps from one put to the next (the best case: no allocation
and no page faults per message) and answers with one byte. Over TCP on
127.0.0.1, or over a Unix socket (``unix://``: a fresh path), with the OS's
default socket buffers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading

__all__ = ["RawServer", "connect", "put"]

_HEADER = struct.Struct("<Q")
_ACK = b"a"


def _recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill *view* from *sock*; ``False`` if the peer closed first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def _serve(conn: socket.socket) -> None:
    header = bytearray(_HEADER.size)
    buffer = bytearray()
    with conn:
        if conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while _recv_exactly(conn, memoryview(header)):
            (size,) = _HEADER.unpack(header)
            if len(buffer) < size:
                buffer = bytearray(size)
            if not _recv_exactly(conn, memoryview(buffer)[:size]):
                return
            conn.sendall(_ACK)


class RawServer:
    """Accepts connections in a thread; serves each in a thread of its own.

    *address*: ``tcp://host:port`` (port 0: a free one), or ``unix://`` (a socket in
    a fresh private directory). :attr:`address` is where it listens.
    """

    def __init__(self, address: str = "tcp://127.0.0.1:0") -> None:
        scheme, _, loc = address.partition("://")
        self._dir: str | None = None
        if scheme == "unix":
            self._dir = tempfile.mkdtemp(prefix="comm-bench-raw-")
            path = os.path.join(self._dir, "raw.sock")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(path)
            self._sock.listen()
            self.address = f"unix://{path}"
        else:
            host, _, port = loc.rpartition(":")
            self._sock = socket.create_server((host, int(port)))
            host, port_number = self._sock.getsockname()[:2]
            self.address = f"tcp://{host}:{port_number}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=_serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def connect(address: str) -> socket.socket:
    """A blocking connection to a :class:`RawServer` at ``tcp://host:port`` (Nagle-free)
    or ``unix:///path``."""
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address.removeprefix("unix://"))
        return sock
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def put(sock: socket.socket, payload: bytes) -> None:
    """Send *payload* and wait for the receiver's acknowledgement."""
    sock.sendall(_HEADER.pack(len(payload)))
    sock.sendall(payload)
    if sock.recv(1) != _ACK:
        raise ConnectionError("the raw server closed the connection")
