"""Same-host selection: a tcp listener's companion Unix socket, and the dialer's way to it.

A ``tcp://`` (or ``ws://``) listener made by ``comm_core.listen()`` (with the ``same_host``
setting on) also listens on a fresh Unix socket (:class:`UnixOffer`): an
abstract name on Linux (``unix://@<5 hex digits>``, picked by the kernel),
elsewhere a socket file in a new directory only this user may enter. It
serves the same session (the handshake, then the user's handler). Its
greeting says so, in four entries: ``same_host_boot_id`` (this kernel's boot
id), ``same_host_unix`` (the socket's address), ``same_host_pid`` and
``same_host_uid`` (the listening process and its user).

A dialer that reads such a greeting (:func:`find_path`) goes on only if the
boot id is its own kernel's and the user id its own (different users never
switch); it then connects a non-blocking Unix socket to the address (a
listener on this host answers at once) and compares the kernel's peer
credentials of that socket (``SO_PEERCRED``: facts, not claims) with the
offer's process and user id. Any doubt keeps the TCP connection: no such
socket (a container without the host's abstract namespace or files), refused
(another network namespace: abstract names belong to one), another process
(a squatter, or another pid namespace, whose pids differ).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from comm_core import ConnectError, Options
from comm_core.abc import Comm, Listener
from comm_core.selection import Offer, Path
from comm_core.session import ServerSession
from comm_unix._address import ABSTRACT, ABSTRACT_NAMESPACE, SCHEME, check_path, socket_address
from comm_unix._comm import UnixComm
from comm_unix._connector import comm_options
from comm_unix._credentials import PeerCredentials, own_uid, peer_credentials
from comm_unix._transport import UnixSocket, UnixTransport, drives_sockets

__all__ = [
    "OFFER_KEYS",
    "SelectedUnixComm",
    "UnixOffer",
    "UnixPath",
    "boot_id",
    "find_path",
    "offer_for",
]

logger = logging.getLogger("comm_unix.select")

#: The handshake entries of a unix offer.
OFFER_KEYS = ("same_host_boot_id", "same_host_unix", "same_host_pid", "same_host_uid")

#: The schemes whose listeners get a companion Unix socket (not tls:// nor wss://: see
#: offer_for()). A ws:// dialer reads the greeting with the upgrade's response, before its
#: own comm handshake leaves, as a tcp:// one does.
_OFFERED_FOR = frozenset({"tcp", "ws"})

_boot_id: str | None = None
_boot_id_read = False


def _read_boot_id() -> str | None:
    platform = sys.platform  # a variable: each branch type-checks on every OS
    if platform.startswith("linux"):
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
                return file.read().strip() or None
        except OSError:
            return None
    if platform == "darwin":  # untested: no macOS here
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            buffer = ctypes.create_string_buffer(64)
            size = ctypes.c_size_t(len(buffer))
            if libc.sysctlbyname(b"kern.bootsessionuuid", buffer, ctypes.byref(size), None, 0):
                return None
            return buffer.value.decode("ascii") or None
        except (OSError, AttributeError, UnicodeDecodeError):
            return None
    return None


def boot_id() -> str | None:
    """This kernel's boot id (the same for every process, container and network namespace
    of one booted kernel), read once; ``None`` where the OS does not say (then nothing is
    offered or taken)."""
    global _boot_id, _boot_id_read
    if not _boot_id_read:
        _boot_id = _read_boot_id()
        _boot_id_read = True
    return _boot_id


# -- the listener's side --------------------------------------------------------------


class UnixOffer(Offer):
    """A companion Unix socket listener serving *session*, started with the listener."""

    name: ClassVar[str] = "unix"

    def __init__(self, session: ServerSession, boot: str) -> None:
        self.session = session
        self.boot = boot
        self.listener: Listener | None = None

    async def start(self) -> Mapping[str, Any]:
        from comm_unix._backend import UnixBackend

        session = self.session
        args = {
            name: value
            for name, value in session.connection_args.items()
            if name in ("max_message_size", "write_high_water", "read_high_water", "backlog")
        }
        # Linux: a name the kernel picks in the abstract namespace; elsewhere a socket
        # file in a fresh directory of mode 0700.
        loc = ABSTRACT if ABSTRACT_NAMESPACE else ""
        listener = UnixBackend().get_listener(loc, session, session.deserialize, **args)
        # Serves the same session, without becoming its listener (the session names the
        # tcp listener in its log lines, and offers nothing for this one).
        listener.session = session
        await listener.start()
        self.listener = listener
        return {
            "same_host_boot_id": self.boot,
            "same_host_unix": listener.contact_address,
            "same_host_pid": os.getpid(),
            "same_host_uid": own_uid(),
        }

    def stop(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.stop()

    def __repr__(self) -> str:
        where = self.listener.contact_address if self.listener is not None else "(not started)"
        return f"<UnixOffer {where}>"


def offer_for(session: ServerSession, scheme: str, encrypted: bool) -> UnixOffer | None:
    """The offer for a listener on *scheme*, or ``None``.

    Only for tcp:// and ws:// listeners: a tls:// listener authenticates and encrypts,
    which a plain Unix socket would not (``encrypted``, any scheme: none).
    """
    if encrypted or scheme not in _OFFERED_FOR or not hasattr(socket, "AF_UNIX"):
        return None
    boot = boot_id()
    if boot is None:
        return None
    return UnixOffer(session, boot)


# -- the dialer's side ----------------------------------------------------------------


class SelectedUnixComm(UnixComm):
    """A unix comm that ``connect()`` chose for another address (*requested*).

    ``extra_info`` adds ``path`` (``"unix"``) and ``requested``.
    """

    def __init__(self, *, requested: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.requested = requested

    @property
    def extra_info(self) -> Mapping[str, Any]:
        return {**super().extra_info, "path": "unix", "requested": self.requested}


class UnixPath(Path):
    """A connected, verified Unix socket to the listener that offered it."""

    name: ClassVar[str] = "unix"
    scheme: ClassVar[str] = SCHEME
    rank: ClassVar[int] = 10

    def __init__(self, sock: socket.socket, address: str, credentials: PeerCredentials) -> None:
        self.sock: socket.socket | None = sock
        self.address = address
        self.credentials = credentials

    async def open(
        self,
        requested: str,
        deserialize: bool,
        options: Options,
        connection_args: Mapping[str, Any],
    ) -> Comm:
        sock, self.sock = self.sock, None
        if sock is None:
            raise ConnectError(f"the path to {self.address} was opened or discarded already")
        try:
            comm = SelectedUnixComm(
                requested=requested,
                deserialize=deserialize,
                options=options,
                **comm_options(dict(connection_args)),
            )
            protocol = comm.protocol
            protocol.credentials = self.credentials
            protocol.tune(sock)
            loop = asyncio.get_running_loop()
            if drives_sockets(loop):
                peer = sock.getpeername()
                UnixTransport(loop, sock, protocol, {"peername": peer}).start()
            else:
                await loop.create_unix_connection(lambda: protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        return comm

    def discard(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def _value(offer: Mapping[str, Any], key: str, kind: type) -> Any:
    value = offer.get(key)
    return value if type(value) is kind else None


def find_path(requested: str, offer: Mapping[str, Any]) -> UnixPath | None:
    """Connect to the Unix socket *offer* names and verify it; ``None`` (logged at debug
    level, with the reason) if the offer is not for this host and user, or the socket is
    unreachable, or another process listens there. Never blocks."""
    address = _value(offer, "same_host_unix", str)
    boot = _value(offer, "same_host_boot_id", str)
    pid = _value(offer, "same_host_pid", int)
    uid = _value(offer, "same_host_uid", int)
    if address is None or boot is None or pid is None or uid is None:
        return None  # no unix offer (or a malformed one)
    if not hasattr(socket, "AF_UNIX"):
        return None
    if pid == os.getpid():
        # One process: the address given, or inproc (the same_process setting), never a
        # Unix socket to ourselves.
        return None
    mine = boot_id()
    if mine is None or boot != mine:
        logger.debug("%s: kept: the listener runs under another kernel (boot id)", requested)
        return None
    if uid != own_uid():
        logger.debug(
            "%s: kept: the listener runs as uid %d, this process as another", requested, uid
        )
        return None
    try:
        path = check_path(address.removeprefix(f"{SCHEME}://"), listening=False)
        sockaddr = socket_address(path)
    except Exception as exc:  # an address this side cannot use
        logger.debug("%s: kept: the offered %r is unusable: %s", requested, address, exc)
        return None
    # Able to receive the arena's descriptor, as comm-unix's own dialled sockets are.
    sock = UnixSocket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(sockaddr)  # at once: connected, refused, absent, or a full backlog
        credentials = peer_credentials(sock)
    except OSError as exc:
        sock.close()
        logger.debug("%s: kept: connecting to the offered %s failed: %s", requested, address, exc)
        return None
    if credentials is None or credentials.pid != pid or credentials.uid != uid:
        sock.close()
        logger.debug(
            "%s: kept: %s is not the listener's: its peer is %s, the offer says pid %d uid %d",
            requested,
            address,
            credentials,
            pid,
            uid,
        )
        return None
    return UnixPath(sock, address, credentials)
