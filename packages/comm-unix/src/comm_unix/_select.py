"""Same-host selection: a listener's companion Unix socket, and the dialer's way to it.

A ``tcp://`` (or ``ws://``) listener made by ``comm_core.listen()`` (with the ``same_host``
setting on) also listens on a fresh Unix socket (:class:`UnixOffer`): an
abstract name on Linux (``unix://@<5 hex digits>``, picked by the kernel),
elsewhere a socket file in a new directory only this user may enter. It
serves the same session (the handshake, then the user's handler). Its
greeting says so, in four entries: ``same_host_boot_id`` (this kernel's boot
id), ``same_host_unix`` (the socket's address), ``same_host_pid`` and
``same_host_uid`` (the listening process and its user).

A ``tls://`` or ``wss://`` listener offers one too, behind a token (:class:`Tokens`): the
greeting of each of its comms, sent once the TLS handshake has authenticated
the peer (and, with mutual TLS, the peer this side), also holds
``same_host_token``, a fresh random credential valid for :data:`TOKEN_LIFETIME`
seconds. Its companion socket says nothing to a connection until it has read
a comm handshake holding a valid token (:attr:`ServerSession.admit
<comm_core.session.ServerSession.admit>`); others are dropped. So only a peer
that passed TLS with this listener, and runs on this host as this user, gets a
comm there; its ``extra_info`` carries the certificate that peer presented
over TLS (``peercert``). The answer holds a fresh token, which the dialer
remembers for its next ``connect()``. The bytes themselves are not encrypted
on the Unix socket (they never leave the kernel, and only this user's
processes can be at either end), so a dialer with ``require_encryption``
keeps TLS, and a listener with it offers nothing.

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
import hashlib
import logging
import os
import secrets
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar

from comm_core import ConnectError, HandshakeError, Options
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
    "TOKEN_LIFETIME",
    "SelectedUnixComm",
    "Tokens",
    "UnixOffer",
    "UnixPath",
    "boot_id",
    "find_path",
    "offer_for",
]

logger = logging.getLogger("comm_unix.select")

#: The handshake entries of a unix offer.
OFFER_KEYS = ("same_host_boot_id", "same_host_unix", "same_host_pid", "same_host_uid")

#: The schemes whose listeners get a companion Unix socket. A ws:// dialer reads the
#: greeting with the upgrade's response, before its own comm handshake leaves, as a
#: tcp:// one does.
_OFFERED_FOR = frozenset({"tcp", "ws"})
#: The encrypted schemes whose listeners get one behind a token (see the module's docstring).
_VOUCHED_FOR = frozenset({"tls", "wss"})

#: The handshake entry holding a token.
TOKEN_KEY = "same_host_token"
#: Seconds a token handed out by a tls:// or wss:// listener may be used.
TOKEN_LIFETIME = 60.0
#: Most tokens a listener keeps; the oldest go first.
TOKEN_LIMIT = 4096
#: Length of a token: 32 hex digits (128 random bits).
_TOKEN_LENGTH = 32

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


class Tokens:
    """The same-host tokens a listener handed out, each with what it vouches for.

    A token may be used any number of times within *lifetime* seconds of
    being issued; at most *limit* are kept (the oldest go first: their
    holders take TLS again, and get a new one). Tokens are kept by their
    SHA-256 digest, so that looking one up takes no time that depends on how
    much of it an attacker guessed.
    """

    def __init__(self, lifetime: float = TOKEN_LIFETIME, limit: int = TOKEN_LIMIT) -> None:
        self.lifetime = lifetime
        self.limit = limit
        # digest -> (expiry in time.monotonic(), identity), oldest first
        self._tokens: OrderedDict[bytes, tuple[float, Mapping[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, identity: Mapping[str, Any]) -> str:
        """A new token vouching for *identity* (what a comm that shows it is told about
        its peer)."""
        now = time.monotonic()
        tokens = self._tokens
        while tokens:  # drop the expired, oldest first
            digest, (expiry, _) = next(iter(tokens.items()))
            if expiry > now:
                break
            del tokens[digest]
        token = secrets.token_hex(_TOKEN_LENGTH // 2)
        tokens[hashlib.sha256(token.encode("ascii")).digest()] = (now + self.lifetime, identity)
        while len(tokens) > self.limit:
            tokens.popitem(last=False)
        return token

    def redeem(self, token: object) -> Mapping[str, Any] | None:
        """What *token* vouches for, if it is one of ours and not expired; else ``None``."""
        if type(token) is not str or len(token) != _TOKEN_LENGTH or not token.isascii():
            return None
        entry = self._tokens.get(hashlib.sha256(token.encode("ascii")).digest())
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]


class UnixOffer(Offer):
    """A companion Unix socket listener serving *session*, started with the listener.

    With *vouching* (the scheme of an encrypted listener, ``"tls"`` or ``"wss"``),
    each comm's greeting carries a token and the companion admits only comms that
    show one (see the module's docstring).
    """

    name: ClassVar[str] = "unix"

    def __init__(self, session: ServerSession, boot: str, vouching: str | None = None) -> None:
        self.session = session
        self.boot = boot
        self.listener: Listener | None = None
        self.vouching = vouching
        self.tokens = Tokens() if vouching is not None else None
        self.per_comm = vouching is not None

    def entries_for(self, comm: Comm) -> Mapping[str, Any]:
        """A fresh token for *comm*, whose connection is up (its TLS handshake done)."""
        if self.tokens is None:
            return {}
        try:
            cert = comm.extra_info.get("peercert")
        except Exception:  # a transport that cannot say: vouch for no certificate
            cert = None
        identity = {"path": "unix", "authenticated": self.vouching, "peercert": cert or {}}
        return {TOKEN_KEY: self.tokens.issue(identity)}

    def admit(self, comm: Comm, peer: Mapping[str, Any]) -> Mapping[str, Any]:
        """Admit a comm on the companion socket that shows a valid token; answer with a
        fresh one.

        Raises:
            HandshakeError: no token, or not one of ours, or expired.
        """
        assert self.tokens is not None
        token = peer.get(TOKEN_KEY)
        if token is None:
            raise HandshakeError(
                f"it showed no {TOKEN_KEY}: this socket serves only clients that passed "
                f"the {self.vouching}:// listener's handshake"
            )
        identity = self.tokens.redeem(token)
        if identity is None:
            raise HandshakeError(f"its {TOKEN_KEY} is not one this listener gave, or expired")
        if isinstance(comm, UnixComm):
            comm.vouched = identity
        return {TOKEN_KEY: self.tokens.issue(identity)}

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
        if self.tokens is None:
            listener = UnixBackend().get_listener(loc, session, session.deserialize, **args)
            # Serves the same session, without becoming its listener (the session names
            # the tcp listener in its log lines, and offers nothing for this one).
            listener.session = session
        else:
            # A session of its own, which admits token holders only and offers nothing.
            companion = session.companion(admit=self.admit)
            listener = UnixBackend().get_listener(loc, companion, session.deserialize, **args)
            companion.attach(listener)
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

    For tcp:// and ws:// listeners; for tls:// and wss:// listeners behind a token
    (see the module's docstring), unless the listener has ``require_encryption``
    (the Unix socket does not encrypt). No other encrypted scheme gets one.
    """
    if not hasattr(socket, "AF_UNIX"):
        return None
    vouching: str | None = None
    if encrypted:
        if scheme not in _VOUCHED_FOR or session.options.require_encryption:
            return None
        vouching = scheme
    elif scheme not in _OFFERED_FOR:
        return None
    boot = boot_id()
    if boot is None:
        return None
    return UnixOffer(session, boot, vouching)


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

    def __init__(
        self,
        sock: socket.socket,
        address: str,
        credentials: PeerCredentials,
        token: str | None = None,
    ) -> None:
        self.sock: socket.socket | None = sock
        self.address = address
        self.credentials = credentials
        self.token = token

    def handshake_entries(self) -> Mapping[str, Any]:
        """The token a tls:// listener's greeting gave, if any."""
        return {TOKEN_KEY: self.token} if self.token is not None else {}

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
            if self.token is not None:  # the listener reads our handshake before it answers
                protocol.peer_speaks_first = False
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
    token: str | None = None
    if TOKEN_KEY in offer:
        token = _value(offer, TOKEN_KEY, str)
        if token is None or len(token) != _TOKEN_LENGTH or not token.isascii():
            return None
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
    return UnixPath(sock, address, credentials, token)
