"""The security object: TLS contexts built once from files or PEM text, and reused."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from comm_tls._errors import TLSConfigurationError, ssl_detail
from comm_tls._handshake import ServerSSLObject
from comm_tls._resume import ResumingSSLObject, SessionCache, forbid

__all__ = ["CommandLineSecurity", "Security", "context_for"]

#: A certificate, key or CA: PEM text, or the path of a file holding it.
PEMSource = str | os.PathLike[str]

_VERSIONS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def own_hosts() -> list[str]:
    """The names and addresses by which peers reach this machine, for temporary credentials.

    The loopback names and addresses; the host name (``socket.gethostname()``);
    and the primary IPv4 and IPv6 addresses, those a wildcard listener gives
    as its contact address (:func:`comm_core.sockets.primary_ip`). Nothing
    here waits on DNS.
    """
    import socket

    from comm_core.sockets import primary_ip

    hosts = list(_LOOPBACK_HOSTS)
    candidates = [socket.gethostname()]
    for family in (socket.AF_INET, socket.AF_INET6):
        if family == socket.AF_INET6 and not socket.has_ipv6:
            continue
        try:
            candidates.append(primary_ip(family))
        except OSError:  # no such family on this host
            continue
    for host in candidates:
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _is_pem(value: PEMSource) -> bool:
    return isinstance(value, str) and "-----BEGIN " in value


def _describe(value: PEMSource | None) -> str:
    if value is None:
        return "none"
    return "PEM text" if _is_pem(value) else repr(os.fspath(value))


@contextlib.contextmanager
def _as_files(*values: PEMSource | None) -> Iterator[list[str | None]]:
    """Paths for *values*: PEM text goes to files in a private temporary directory.

    ``SSLContext.load_cert_chain`` reads only files. The directory (mode 0700)
    and its files (0600) are deleted as soon as the block ends.
    """
    if not any(value is not None and _is_pem(value) for value in values):
        yield [None if value is None else os.fspath(value) for value in values]
        return
    import tempfile  # only PEM text needs it; it is slow to import

    with tempfile.TemporaryDirectory(prefix="comm-tls-") as directory:
        paths: list[str | None] = []
        for index, value in enumerate(values):
            if value is None or not _is_pem(value):
                paths.append(None if value is None else os.fspath(value))
                continue
            path = os.path.join(directory, f"{index}.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(str(value))
            paths.append(path)
        yield paths


@dataclass(frozen=True, repr=False)
class Security:
    """How a node proves who it is and whom it trusts, for ``tls://`` comms.

    Pass it as ``security=`` to :func:`comm_core.listen` and
    :func:`comm_core.connect`. It builds its two :class:`ssl.SSLContext`
    objects (server side, client side) once, when it is created, and every
    comm that uses it shares them. ``ca``, ``cert`` and ``key`` each take PEM
    text or the path of a PEM file.

    Defaults are strict: TLS 1.2 or later; the server asks every client for a
    certificate signed by ``ca`` (mutual TLS); the client checks the server's
    certificate against ``ca`` and against the host name or address it dials.

    Attributes:
        ca: the CA certificate(s) this node trusts, for peers' certificates;
            ``None`` on a client trusts the system's CAs.
        cert: this node's certificate chain (with the key too if ``key`` is
            ``None``); needed to listen, and to dial a server that asks for
            client certificates.
        key: the private key of ``cert``.
        password: the password of an encrypted ``key``.
        require_client_cert: listeners refuse clients without a certificate
            signed by ``ca`` (mutual TLS).
        check_hostname: clients check that the server's certificate names the
            host or IP address they dial (or ``server_hostname=``). Turn it off
            for clusters addressed by IP whose certificates name no addresses;
            the certificate is still checked against ``ca``.
        minimum_version: the oldest TLS version accepted, ``TLSv1_2`` or ``TLSv1_3``.
        ciphers: an OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are
            OpenSSL's); ``None`` keeps Python's secure defaults.
        resume_sessions: TLS session resumption. A listener gives each
            client a ticket; a client that dials the same listener again
            presents it, and neither side verifies certificates again, which
            halves the cost of setting up a connection. A ticket stands for
            the identities verified at the last full handshake, and the
            listener accepts it as often as it is presented for 2 hours
            (OpenSSL's default); over TLS 1.3 each resumed connection brings a
            new ticket, so a client that reconnects within that time is never
            verified again while the listener's process lives. Turn it off to
            have every connection verify certificates afresh: the listener
            then issues no ticket and keeps no TLS 1.2 session cache, so every
            handshake is a full one (see docs/security.rst). Applies only to
            the contexts this object builds, not to ``ssl_context=``.

    Raises:
        TLSConfigurationError: on creation, for a file that cannot be read, a
            certificate or key that OpenSSL refuses, a key that does not match
            the certificate, a cipher string that selects nothing, a
            ``minimum_version`` below TLS 1.2, a ``key`` without ``cert``, or a
            ``cert`` with ``require_client_cert`` but no ``ca`` to check
            clients against.
    """

    #: In whose words errors say what to do (see comm_tls._errors.words_of): Python's.
    advice_words: ClassVar[str] = "api"

    ca: PEMSource | None = None
    cert: PEMSource | None = None
    key: PEMSource | None = None
    password: str | bytes | None = None
    require_client_cert: bool = True
    check_hostname: bool = True
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    ciphers: str | None = None
    resume_sessions: bool = True
    _sessions: SessionCache | None = field(init=False, default=None, compare=False)
    _server: ssl.SSLContext | None = field(init=False, default=None, compare=False)
    _client: ssl.SSLContext | None = field(init=False, default=None, compare=False)

    def __post_init__(self) -> None:
        if self.minimum_version not in _VERSIONS:
            raise TLSConfigurationError(
                f"minimum_version must be ssl.TLSVersion.TLSv1_2 or TLSv1_3, got "
                f"{self.minimum_version!r}: older versions are insecure"
            )
        if self.key is not None and self.cert is None:
            raise TLSConfigurationError("key= was given without cert=, the certificate it signs")
        if self.cert is not None and self.require_client_cert and self.ca is None:
            raise TLSConfigurationError(
                "require_client_cert=True (mutual TLS, the default) needs ca=, the CA that "
                "signs the clients' certificates; pass ca=, or require_client_cert=False"
            )
        if self.resume_sessions:
            object.__setattr__(self, "_sessions", SessionCache())
        object.__setattr__(self, "_client", self._build(server_side=False))
        if self.cert is not None:
            object.__setattr__(self, "_server", self._build(server_side=True))

    @classmethod
    def temporary(
        cls,
        hosts: Iterable[str] | None = None,
        *,
        valid_for: datetime.timedelta = datetime.timedelta(days=7),
        **options: Any,
    ) -> Security:
        """Mutual-TLS credentials made on the spot, to try TLS out or to test with.

        A throwaway CA signs one certificate that names *hosts* and serves as
        both the server's and the client's. By default it names this machine as
        others reach it too (``localhost``, ``127.0.0.1``, ``::1``, the host
        name, and the primary IPv4 and IPv6 addresses, which a wildcard
        listener gives as its contact address), so that the credentials also
        work from another host; the CA's key is discarded. Give the same object to
        both ends (``listen`` and ``connect``), or its ``ca``, ``cert`` and
        ``key`` (PEM text) to another process. Nothing is written to disk but
        for the moment a context loads the key.

        Args:
            hosts: the DNS names and IP addresses the certificate is valid for;
                default: this machine's (see above).
            valid_for: how long the certificates are valid.
            options: further :class:`Security` fields, such as ``check_hostname``.

        Raises:
            TLSConfigurationError: *hosts* is empty, *valid_for* is not positive,
                or *options* are invalid.
        """
        from comm_tls._credentials import make_credentials

        try:
            ca, cert, key = make_credentials(own_hosts() if hosts is None else hosts, valid_for)
        except ValueError as exc:
            raise TLSConfigurationError(str(exc)) from exc
        return cls(ca=ca, cert=cert, key=key, **options)

    @property
    def server_context(self) -> ssl.SSLContext:
        """The context listeners use (built once).

        Raises:
            TLSConfigurationError: this object has no ``cert`` to serve with.
        """
        if self._server is None:
            raise TLSConfigurationError(
                "this Security has no certificate, which a listener needs to prove who it "
                "is; pass cert= and key= (or use Security.temporary())"
            )
        return self._server

    @property
    def client_context(self) -> ssl.SSLContext:
        """The context ``connect()`` uses (built once)."""
        assert self._client is not None
        return self._client

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its settings (contexts cannot be): the copy builds its own contexts.
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        return (functools.partial(type(self), **settings), ())

    def __repr__(self) -> str:
        return (
            f"Security(ca={_describe(self.ca)}, cert={_describe(self.cert)}, "
            f"key={'<hidden>' if self.key is not None else 'none'}, "
            f"require_client_cert={self.require_client_cert}, "
            f"check_hostname={self.check_hostname}, "
            f"minimum_version={self.minimum_version.name}, ciphers={self.ciphers!r}, "
            f"resume_sessions={self.resume_sessions})"
        )

    def _build(self, *, server_side: bool) -> ssl.SSLContext:
        purpose = ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH
        ca = self.ca
        try:
            if ca is None:
                context = ssl.create_default_context(purpose)
            elif _is_pem(ca):
                context = ssl.create_default_context(purpose, cadata=str(ca))
            elif os.path.isdir(ca):
                context = ssl.create_default_context(purpose, capath=os.fspath(ca))
            else:
                context = ssl.create_default_context(purpose, cafile=os.fspath(ca))
        except (OSError, ValueError) as exc:
            raise TLSConfigurationError(
                f"cannot load the CA certificates ({_describe(ca)}): {ssl_detail(exc)}",
                setting="ca",
            ) from exc
        context.minimum_version = self.minimum_version
        if self.ciphers is not None:
            try:
                context.set_ciphers(self.ciphers)
            except ssl.SSLError as exc:
                raise TLSConfigurationError(
                    f"the cipher string {self.ciphers!r} selects no cipher: {ssl_detail(exc)}"
                ) from exc
        if self.cert is not None:
            with _as_files(self.cert, self.key) as (certfile, keyfile):
                assert certfile is not None
                try:
                    context.load_cert_chain(certfile, keyfile, self.password)
                except (OSError, ValueError) as exc:
                    raise TLSConfigurationError(
                        f"cannot load the certificate ({_describe(self.cert)}) and key "
                        f"({_describe(self.key)}): {ssl_detail(exc)}",
                        setting="cert",
                    ) from exc
        if server_side:
            if self.require_client_cert:
                context.verify_mode = ssl.CERT_REQUIRED
            elif ca is not None:
                context.verify_mode = ssl.CERT_OPTIONAL
            else:
                context.verify_mode = ssl.CERT_NONE
            context.sslobject_class = ServerSSLObject
            if self.resume_sessions:
                # One ticket per connection is all a comm client uses.
                context.num_tickets = 1
            else:
                # No tickets (TLS 1.3, TLS 1.2), no TLS 1.2 session cache.
                forbid(context)
        else:
            context.check_hostname = self.check_hostname
            if self.resume_sessions:
                context.sslobject_class = ResumingSSLObject
        return context

    @property
    def session_cache(self) -> SessionCache | None:
        """The tickets kept for resuming client connections (``None`` if turned off)."""
        return self._sessions


@dataclass(frozen=True, repr=False)
class CommandLineSecurity(Security):
    """A :class:`Security` made of the ``comm`` command's options: the errors of its comms
    (and the listener's log lines about its clients) say what to do in terms of those
    options (``--ca``, ``--cert``, ``--no-check-hostname``, ...), not of Python."""

    advice_words: ClassVar[str] = "cli"


def context_for(args: Mapping[str, Any], *, server_side: bool, address: str) -> ssl.SSLContext:
    """The context for one ``listen()`` (*server_side*) or ``connect()``, from its arguments.

    Raises:
        TLSConfigurationError: neither ``security`` nor ``ssl_context`` was
            given, or both, or one of the wrong type or for the wrong side.
    """
    verb = f"listen on {address}" if server_side else f"connect to {address}"
    call = "listen" if server_side else "connect"
    context = args.get("ssl_context")
    security = args.get("security")
    if context is not None and security is not None:
        raise TLSConfigurationError(f"cannot {verb}: pass ssl_context= or security=, not both")
    if security is not None:
        if not isinstance(security, Security):
            raise TLSConfigurationError(
                f"cannot {verb}: security= must be a comm_tls.Security, got "
                f"{type(security).__name__}"
            )
        try:
            return security.server_context if server_side else security.client_context
        except TLSConfigurationError as exc:
            raise TLSConfigurationError(f"cannot {verb}: {exc}") from None
    if context is None:
        raise TLSConfigurationError(
            f"cannot {verb}: tls:// needs certificates; pass "
            f"security=comm_tls.Security(ca=..., cert=..., key=...) (or "
            f"comm_tls.Security.temporary() to try TLS out) or ssl_context=<an ssl.SSLContext> "
            f"to {call}()"
        )
    if not isinstance(context, ssl.SSLContext):
        raise TLSConfigurationError(
            f"cannot {verb}: ssl_context= must be an ssl.SSLContext, got {type(context).__name__}"
        )
    if server_side and context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise TLSConfigurationError(
            f"cannot {verb}: ssl_context= is a client context (PROTOCOL_TLS_CLIENT); a "
            "listener needs a server context, such as "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) with load_cert_chain(...)"
        )
    if not server_side and context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise TLSConfigurationError(
            f"cannot {verb}: ssl_context= is a server context (PROTOCOL_TLS_SERVER); connect() "
            "needs a client context, such as ssl.create_default_context(ssl.Purpose.SERVER_AUTH)"
        )
    if server_side and context.sslobject_class is ssl.SSLObject:
        # Behaves as ssl.SSLObject except during the handshakes of comm's listeners, where a
        # failure waits until the alert that tells the client why has been sent.
        context.sslobject_class = ServerSSLObject
    return context
