"""W3's ceiling: the same payload over blocking sockets, ``sendall`` and ``recv_into``.

A put is a u64 little-endian length, then the payload; the receiver reads it
into a buffer it keeps from one put to the next (the best case: no allocation
and no page faults per message) and answers with one byte.
"""

from __future__ import annotations

import contextlib
import socket
import struct
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
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while _recv_exactly(conn, memoryview(header)):
            (size,) = _HEADER.unpack(header)
            if len(buffer) < size:
                buffer = bytearray(size)
            if not _recv_exactly(conn, memoryview(buffer)[:size]):
                return
            conn.sendall(_ACK)


class RawServer:
    """Accepts connections on 127.0.0.1 in a thread; serves each in a thread of its own."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.create_server((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.address = f"tcp://{self.host}:{self.port}"
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


def connect(address: str) -> socket.socket:
    """A blocking, Nagle-free connection to a :class:`RawServer` at ``tcp://host:port``."""
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
