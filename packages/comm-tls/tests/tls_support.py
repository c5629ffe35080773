"""Helpers shared by comm-tls's tests: certificates, listeners, and waiting for log lines.

Fixtures live in ``conftest.py``; this module holds what test modules import.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trustme

import comm_core
from comm_core import Comm, CommClosedError, Listener
from comm_core.testing import echo_handler, within
from comm_tls import Security

_T = TypeVar("_T")

MiB = 2**20
IPV4 = "127.0.0.1"
IPV6 = "::1"
#: How long a test waits for something that should happen.
EVENT_TIMEOUT = 10.0
#: The connect() budget of tests whose connect must fail at once (not retried).
LONG_CONNECT = 30.0
LOGGERS = ("comm_tls", "comm_core", "comm_tcp")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((IPV6, 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback")


def address(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{comm_core.unparse_host_port(host, port)}"


# -- certificates --------------------------------------------------------------------


def pem(blob: trustme.Blob) -> str:
    return blob.bytes().decode("ascii")


def chain_pem(leaf: trustme.LeafCert) -> str:
    """A leaf's certificate chain followed by its key, as one PEM text."""
    return "".join(pem(b) for b in leaf.cert_chain_pems) + pem(leaf.private_key_pem)


def security(
    trust: trustme.CA | str | None, leaf: trustme.LeafCert | None = None, **options: Any
) -> Security:
    """A :class:`Security` trusting *trust* (a CA or PEM text), presenting *leaf* (if any)."""
    ca = pem(trust.cert_pem) if isinstance(trust, trustme.CA) else trust
    return Security(ca=ca, cert=chain_pem(leaf) if leaf else None, **options)


def past(days: int) -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        days=days
    )


def self_signed(host: str) -> str:
    """PEM text of a self-signed (non-CA) certificate for *host*, followed by its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM).decode()
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


# -- clients outside comm -----------------------------------------------------------


def raw_context(
    trust: Security,
    identity: Security | None,
    folder: pathlib.Path,
    *,
    maximum_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
    tickets: bool = True,
) -> ssl.SSLContext:
    """A plain :mod:`ssl` client context trusting *trust*'s CA, presenting *identity*'s
    certificate (if any), for TLS clients that are not comm clients (they can resume a
    session as they please). Without *tickets*, TLS 1.2 can resume only by session ID."""
    context = ssl.create_default_context(cadata=str(trust.ca))
    context.maximum_version = maximum_version
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    if identity is not None:
        path = folder / f"client-{id(identity)}.pem"
        path.write_text(f"{identity.cert}{identity.key}")
        context.load_cert_chain(path)
    return context


def raw_dial(
    context: ssl.SSLContext, port: int, session: ssl.SSLSession | None = None
) -> ssl.SSLSocket:
    """A blocking TLS connection to ``127.0.0.1:port`` (run it in a thread), handshake done,
    offering *session*."""
    raw = socket.create_connection((IPV4, port), timeout=EVENT_TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=IPV4, session=session)
    except BaseException:
        raw.close()
        raise


def greeted(sock: ssl.SSLSocket) -> bool:
    """Whether the comm listener at the other end of *sock* sends its greeting.

    Reading it also means the listener's side of the handshake is over, and (TLS 1.3)
    that its session ticket, sent before, has arrived.
    """
    try:
        return bool(sock.recv(1))
    except (ssl.SSLError, OSError):
        return False


# -- log lines --------------------------------------------------------------------------


class LogWatch(logging.Handler):
    """Collects the records of comm's loggers; :meth:`wait_for` awaits one that matches."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed: asyncio.Event | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self._changed is not None:
            self._changed.set()

    def matching(self, *parts: str) -> list[logging.LogRecord]:
        return [r for r in self.records if all(p in r.getMessage() for p in parts)]

    async def wait_for(self, *parts: str, timeout: float = EVENT_TIMEOUT) -> logging.LogRecord:
        """The first record whose message holds every one of *parts*, waiting for it."""
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.matching(*parts)
            if found:
                return found[0]
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = "\n  ".join(r.getMessage() for r in self.records) or "(none)"
                pytest.fail(
                    f"no log record with {parts!r} within {timeout:g}s; records:\n  {seen}",
                    pytrace=False,
                )
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(watch)
        logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(watch)
            logger.setLevel(level)


# -- listeners and comms ---------------------------------------------------------------


class Served:
    """A started listener; ``await served.accepted()`` returns the next server-side comm."""

    def __init__(self, handler: Callable[[Comm], Awaitable[None]]) -> None:
        self.handler = handler
        self.listener: Listener | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.comms: list[Comm] = []
        self._queue: asyncio.Queue[Comm] = asyncio.Queue()

    async def __call__(self, comm: Comm) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.comms.append(comm)
        self._queue.put_nowait(comm)
        with contextlib.suppress(CommClosedError):
            await self.handler(comm)

    @property
    def port(self) -> int:
        assert self.listener is not None
        port = self.listener.port  # type: ignore[attr-defined]
        assert isinstance(port, int)
        return port

    def address(self, host: str = IPV4, scheme: str = "tls") -> str:
        return address(scheme, host, self.port)

    async def accepted(self) -> Comm:
        return await within(self._queue.get(), "the listener to hand over a comm")


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[Comm], Awaitable[None]] = echo_handler,
    address: str = f"tls://{IPV4}:0",
    **listen_kwargs: Any,
) -> AsyncIterator[Served]:
    """Listen on *address* with *handler* for the duration of the block.

    On exit the listener stops, the handlers' comms are aborted and their tasks
    awaited.
    """
    served = Served(handler)
    listener = comm_core.listen(address, served, **listen_kwargs)
    served.listener = listener
    await listener.start()
    try:
        yield served
    finally:
        listener.stop()
        for comm in served.comms:
            comm.abort()
        pending = {t for t in served.tasks if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=EVENT_TIMEOUT)


@contextlib.asynccontextmanager
async def connected(address: str, **kwargs: Any) -> AsyncIterator[Comm]:
    """A comm to *address*, closed (or aborted if the block fails) at the end."""
    kwargs.setdefault("timeout", EVENT_TIMEOUT)
    comm = await comm_core.connect(address, **kwargs)
    try:
        yield comm
    except BaseException:
        comm.abort()
        raise
    await comm.close()


async def ping(comm: Comm, payload: Any = "ping") -> None:
    """Write a message to an echo server and check the reply."""
    msg = {"op": "ping", "payload": payload}
    await comm.write(msg)
    assert await within(comm.read(), "the echo of a ping") == msg


async def connect_fails(address: str, **kwargs: Any) -> tuple[BaseException, float]:
    """Connect with a long budget; return the error and how long it took to come."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        comm = await comm_core.connect(address, timeout=LONG_CONNECT, **kwargs)
    except Exception as exc:
        return exc, loop.time() - start
    comm.abort()
    pytest.fail(f"connecting to {address} succeeded", pytrace=False)
