"""Socket helpers for transports over TCP (and other stream sockets), for transport authors.

What comm-tcp and comm-tls share, and a third party's transport over TCP
(WebSocket, QUIC's fallback, ...) needs too:

* :func:`bind_listening`: listening sockets for ``host:port``, with an empty
  host meaning every interface of IPv4 *and* IPv6 on one port.
* :func:`contact_host` and :func:`primary_ip`: the address a peer dials to
  reach a listener bound to a wildcard host (the host's primary address of
  that family, not a loopback address).
* :func:`dial_target` and :func:`connect_socket`: what a location may be
  dialled at (wildcards refused), and a connected non-blocking socket, on any
  event loop.
* :class:`AcceptLoop`: accepting on a listening socket from a reader callback,
  with one policy for ``accept()``'s errors (an error of one connection skips
  it; running out of descriptors pauses accepting, logged, and retries).
* :func:`connect_error`: an ``OSError`` of dialling as comm's
  :class:`~comm_core.ConnectError`, with the OS's words; a name that does not
  resolve as :class:`~comm_core.HostNotFoundError`, naming the host.

This module imports asyncio and socket: import it where connections are made,
not from a backend's module (see :doc:`/extending`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any, Final

from comm_core._addressing import parse_host_port
from comm_core.exceptions import AddressError, ConnectError, HostNotFoundError

__all__ = [
    "WILDCARD_HOSTS",
    "AcceptLoop",
    "bind_listening",
    "connect_error",
    "connect_socket",
    "contact_host",
    "dial_target",
    "ip_family",
    "primary_ip",
]

logger = logging.getLogger("comm_core.sockets")

#: Hosts that name every interface: listening only, never dialled.
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})

#: Where a route lookup points to find the primary address of each family: documentation
#: addresses (RFC 5737, RFC 3849), to which nothing is ever sent.
_PROBES: Final[dict[int, str]] = {socket.AF_INET: "192.0.2.1", socket.AF_INET6: "2001:db8::1"}
_LOOPBACK: Final[dict[int, str]] = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def ip_family(host: str) -> int | None:
    """``AF_INET`` or ``AF_INET6`` if *host* is a numeric IP address, else ``None`` (a
    name, or a form ``inet_pton`` refuses, such as a scoped IPv6 address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except (OSError, ValueError):
        return None
    return family


# -- listening -----------------------------------------------------------------------------


def _bind(family: int, host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listening(host: str, port: int, *, backlog: int = 1024) -> list[socket.socket]:
    """Bound, listening, non-blocking TCP sockets for *host* and *port*.

    An empty *host* listens on every interface of both families on one port:
    ``0.0.0.0`` and ``::`` (IPv6 only on its socket), or ``0.0.0.0`` alone
    where the OS has no IPv6. Port 0 then picks a port free on both (trying
    again if the port IPv4 got is taken on IPv6). ``0.0.0.0`` and ``::`` name
    one family's every interface. A host name is resolved (this may block on
    DNS) and its first address is bound. ``SO_REUSEADDR`` is set, so that a
    restarted listener gets its port back at once.

    Raises:
        OSError: the address cannot be bound (in use, not local, no free port
            on both families, the name does not resolve, ...); nothing is left
            bound.
    """
    if host:
        family = ip_family(host)
        if family is None:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            family, host = info[0], str(info[4][0])
        return [_bind(family, host, port, backlog)]
    for _ in range(20 if port == 0 else 1):
        socks = [_bind(socket.AF_INET, "0.0.0.0", port, backlog)]
        chosen = socks[0].getsockname()[1]
        try:
            socks.append(_bind(socket.AF_INET6, "::", chosen, backlog))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and port == 0:
                socks[0].close()
                continue
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                socks[0].close()
                raise
        return socks
    raise OSError(errno.EADDRINUSE, "no port free on both IPv4 and IPv6")


def primary_ip(family: int = socket.AF_INET) -> str:
    """The address of *family* at which other machines most likely reach this one.

    The source address the OS would use towards a remote address (found by a
    route lookup: a UDP socket connects, which sends nothing); the loopback
    address of *family* if the host has no route of that family.
    """
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((_PROBES[family], 9))
            return str(probe.getsockname()[0])
        except OSError:
            return _LOOPBACK[family]


def contact_host(host: str, bound: Iterable[Any]) -> str:
    """The host a peer dials to reach a listener on *host* whose sockets are bound to the
    socket addresses *bound* (``getsockname()`` of each, in order).

    An empty host (both families) and ``0.0.0.0`` give this machine's primary
    IPv4 address, ``::`` its primary IPv6 address (:func:`primary_ip`); any
    other host, the address the first socket is bound to (a name's resolved
    address, or the host as written).

    Raises:
        ValueError: *bound* is empty.
    """
    if host in ("", "0.0.0.0"):
        return primary_ip(socket.AF_INET)
    if host == "::":
        return primary_ip(socket.AF_INET6)
    for sockaddr in bound:
        return str(sockaddr[0])
    raise ValueError(f"no bound socket to name the host of a listener on {host!r}")


# -- dialling --------------------------------------------------------------------------------


def dial_target(scheme: str, loc: str) -> tuple[str, int]:
    """``(host, port)`` of the location *loc* of *scheme*, to connect to.

    Raises:
        AddressError: *loc* is malformed, or names no concrete host and port
            (no port, port 0, or a wildcard host: those are for listening).
    """
    # A default port, so that 'tcp://' and 'tcp://0.0.0.0' get the message below.
    host, port = parse_host_port(loc, default_port=0, scheme=scheme)
    if host in WILDCARD_HOSTS or port == 0:
        raise AddressError(
            f"cannot connect to {scheme}://{loc}: it names no concrete host and port "
            f"(addresses such as '{scheme}://' or '{scheme}://0.0.0.0:0' are only for "
            "listening)"
        )
    return host, port


#: ``getaddrinfo()`` errors that say the name does not resolve, and will not on a retry:
#: no such name, no address for it, the resolver's unrecoverable failure.
_NO_SUCH_HOST: Final = frozenset(
    getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL")
    if hasattr(socket, name)
)  # fmt: skip


def _host_of(address: str) -> str:
    """The host of the URI *address*, or *address* itself if it has none."""
    try:
        return parse_host_port(address.partition("://")[2])[0] or address
    except ValueError:
        return address


def connect_error(address: str, exc: OSError, *, host: str | None = None) -> ConnectError:
    """The :class:`~comm_core.ConnectError` for a failed attempt to connect to *address*
    (a URI), saying what the OS said (asyncio words a refusal "Connect call failed
    (...)"); raise it ``from exc``.

    A :class:`socket.gaierror` (the name did not resolve) names the host (*host*,
    or the one in *address*): :class:`~comm_core.HostNotFoundError`, which
    :func:`comm_core.connect` does not retry, when the resolver says the name
    does not exist or has no address; a plain :class:`~comm_core.ConnectError`,
    retried, for a temporary failure of the resolver (``EAI_AGAIN``) or any
    other.
    """
    if isinstance(exc, socket.gaierror):
        name = host if host is not None else _host_of(address)
        words = exc.strerror or str(exc) or f"getaddrinfo error {exc.errno}"
        if exc.errno in _NO_SUCH_HOST:
            return HostNotFoundError(
                f"could not connect to {address}: the host name {name!r} could not be "
                f"resolved ({words}); check the name",
                host=name,
            )
        return ConnectError(
            f"could not connect to {address}: the host name {name!r} could not be resolved "
            f"for now ({words})"
        )
    reason = (os.strerror(exc.errno) if exc.errno else "") or str(exc) or type(exc).__name__
    return ConnectError(f"could not connect to {address}: {reason}")


#: Non-blocking from creation where the OS can (Linux): one system call fewer per connect.
_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _peer_if_connected(sock: socket.socket) -> Any:
    """*sock*'s peer address once its non-blocking connect has completed, else ``None``.

    Raises the connect's error if it failed.
    """
    try:
        return sock.getpeername()
    except OSError:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err)) from None
        return None


async def _connected(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> Any:
    """Wait until *sock*'s pending connect completes and return the peer's address.

    Raises the connect's error if it fails.
    """
    fd = sock.fileno()
    while True:  # ends when the connect completes or fails, or the caller's timeout cancels it
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_writer(fd)
        peer = _peer_if_connected(sock)
        if peer is not None:
            return peer


async def _connect_one(
    loop: asyncio.AbstractEventLoop, family: int, sockaddr: tuple[Any, ...]
) -> tuple[socket.socket, Any]:
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        try:
            sock.connect(sockaddr)
        except (BlockingIOError, InterruptedError):
            # On the loopback interface the connection is usually complete already.
            peer = _peer_if_connected(sock)
            if peer is None:
                peer = await _connected(loop, sock)
        else:
            peer = sock.getpeername()
    except BaseException:
        sock.close()
        raise
    return sock, peer


async def connect_socket(host: str, port: int) -> tuple[socket.socket, Any]:
    """A non-blocking TCP socket connected to *host*:*port*, and the peer's socket address.

    A numeric address is dialled at once (on the loopback interface the
    connection is usually complete before any wait); a name is resolved on the
    event loop's executor and each of its addresses is tried in turn. Runs on
    any event loop with ``add_writer`` (not Windows' proactor loop). If
    cancelled, or if it fails, no socket is left open.

    Raises:
        OSError: no address could be reached: the error of the last, or one
            naming all of them if they differ; ``socket.gaierror`` if the name
            does not resolve.
    """
    loop = asyncio.get_running_loop()
    family = ip_family(host)
    if family is not None:
        return await _connect_one(loop, family, (host, port))
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, _, _, _, sockaddr in infos:
        try:
            return await _connect_one(loop, family, sockaddr)
        except OSError as exc:
            errors.append(exc)
    if not errors:
        raise OSError(f"getaddrinfo({host!r}) returned no address")
    if len({str(exc) for exc in errors}) == 1:
        raise errors[-1]
    raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in errors)}")


# -- accepting -------------------------------------------------------------------------------

#: Errors of accept() that concern one connection only, not the listening socket: Linux
#: reports a new connection's pending network error there, and EPERM for one a firewall
#: refused.
_ONE_CONNECTION: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENETUNREACH", "EHOSTDOWN",
        "EHOSTUNREACH", "ENONET", "ENOPROTOOPT", "EOPNOTSUPP",
    )
    if hasattr(errno, name)
)  # fmt: skip


class AcceptLoop:
    """Accepts the connections of one listening socket from a reader callback.

    Each time *sock* is readable, every pending connection (up to *backlog*
    of them, so that other callbacks get their turn) is accepted and handed to
    ``on_accept(conn, peer)``: *conn* is the new socket, still blocking,
    which *on_accept* owns from then on; *peer* its peer's socket address. If
    *on_accept* raises, *conn* is closed and the failure logged; the loop goes
    on.

    The policy for ``accept()``'s errors: one that concerns one connection
    only (it was aborted, refused by a firewall, its network failed) skips
    it; any other (out of descriptors or memory) is logged as a warning, and
    accepting pauses for *retry_delay* seconds while the connections that
    arrive meanwhile wait in the kernel's queue. It needs a loop with
    ``add_reader`` (not Windows' proactor loop).

    Args:
        loop: the running event loop.
        sock: a bound, listening, non-blocking socket; :meth:`close` closes it.
        on_accept: called with each accepted socket and its peer's address.
        backlog: most connections accepted in one callback.
        retry_delay: seconds accepting pauses after a failure of the listening socket.
        where: the listener's address, for log lines.
        logger: where to log (default: ``comm_core.sockets``).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        on_accept: Callable[[socket.socket, Any], None],
        *,
        backlog: int = 1024,
        retry_delay: float = 1.0,
        where: Callable[[], str] = lambda: "?",
        logger: logging.Logger = logger,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.on_accept = on_accept
        self.backlog = max(backlog, 1)
        self.retry_delay = retry_delay
        self.where = where
        self.logger = logger
        self.closed = False
        self._fd = sock.fileno()
        self._retry: asyncio.TimerHandle | None = None
        loop.add_reader(self._fd, self.accept_pending)

    def accept_pending(self) -> None:
        """Accept every pending connection (at most *backlog*); the reader callback."""
        sock = self.sock
        on_accept = self.on_accept
        for _ in range(self.backlog):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left
            except OSError as exc:
                if exc.errno in _ONE_CONNECTION:
                    continue  # that client is gone; others may be waiting
                self._pause(exc)
                return
            try:
                on_accept(conn, peer)
            except Exception:
                conn.close()
                self.logger.exception(
                    "listener %s: could not set up the connection from %s", self.where(), peer
                )

    def _pause(self, exc: OSError) -> None:
        self.logger.warning(
            "listener %s: accepting a connection failed: %s; accepting again in %gs",
            self.where(),
            exc,
            self.retry_delay,
        )
        self.loop.remove_reader(self._fd)
        self._retry = self.loop.call_later(self.retry_delay, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if not self.closed:
            self.loop.add_reader(self._fd, self.accept_pending)

    def close(self) -> None:
        """Stop accepting and close the listening socket. Idempotent; never raises."""
        if self.closed:
            return
        self.closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
        self.sock.close()
