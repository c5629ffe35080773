"""The tls comm: comm-tcp's comm over a TLS transport, with TLS facts and TLS errors."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from comm_core import CommClosedError, FatalCommClosedError
from comm_tcp import TCPComm, TCPProtocol
from comm_tls._errors import describe_failure, ssl_detail
from comm_tls._transport import TLSTransport

__all__ = ["TLSComm", "TLSProtocol"]

#: Large buffers go to the TLS transport in slices this big: OpenSSL takes an ``int``
#: size, and the TLS layer copies (encrypts) everything anyway.
WRITE_CHUNK = 4 * 1024 * 1024


class TLSProtocol(TCPProtocol):
    """TCP's protocol with TLS errors, large writes in slices, and a handshake phase.

    ``pending`` holds the raw transport (or the socket's handshake) while a
    listener runs the TLS handshake (the comm has no transport yet); aborting
    the comm aborts it. Over comm-tls's own transport, large buffers are
    encrypted straight from the writer's memory (``zero_copy_writes``).
    """

    max_write_chunk = WRITE_CHUNK

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: Any = None
        #: Whether this end accepted the connection (its peer is a client).
        self.server_side = False
        #: Where a client keeps the session ticket it gets (see comm_tls._resume.offer).
        self.resume_slot: Any = None
        #: In whose words a TLS failure says what to do (comm_tls._errors.words_of).
        self.advice_words = "api"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, TLSTransport):
            self.zero_copy_writes = True
        super().connection_made(transport)

    def closed_error(self) -> CommClosedError:
        """As for TCP; a TLS error (the peer's alert, a bad record) is fatal and explained."""
        error = self.error
        if isinstance(error, ssl.SSLError) and not self.closing:
            peer = "client" if self.server_side else "server"
            if not self.established:
                # TLS 1.3: the server checks the client's certificate after the client
                # finished its handshake, so its alert arrives here.
                return FatalCommClosedError(
                    describe_failure(error, peer=peer, address=self.peer, words=self.advice_words)
                )
            return FatalCommClosedError(
                f"the TLS connection with {self.peer} failed: {ssl_detail(error)}"
            )
        return super().closed_error()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # Python 3.10's TLS transport is not marked closed when its connection is lost,
            # and warns when collected; closing it now does nothing else.
            transport.close()

    def abort(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.abort()
            self.closing = True
        super().abort()


class TLSComm(TCPComm):
    """A comm over one TLS connection.

    ``extra_info`` holds what a tcp comm's does, and ``peercert`` (the peer's
    certificate, as :meth:`ssl.SSLSocket.getpeercert` returns it; empty if the
    peer sent none), ``cipher`` (``(name, protocol, bits)``),
    ``tls_version`` (such as ``"TLSv1.3"``) and ``tls_session_reused``
    (whether the connection resumed an earlier TLS session instead of
    verifying certificates again; see ``Security.resume_sessions``).
    """

    protocol_class = TLSProtocol
    protocol: TLSProtocol
    close_waits_for_transport = True  # TLS's close_notify exchange takes loop iterations

    def __init__(self, *, scheme: str = "tls", **kwargs: Any) -> None:
        super().__init__(scheme=scheme, **kwargs)

    def closed(self) -> bool:
        p = self.protocol
        if p.pending is not None:  # in the listener's TLS handshake
            return p.closing
        return super().closed()

    @property
    def extra_info(self) -> Mapping[str, Any]:
        info = dict(super().extra_info)
        transport = self.protocol.transport
        if transport is None:
            return info
        ssl_object = transport.get_extra_info("ssl_object")
        info["peercert"] = transport.get_extra_info("peercert") or {}
        info["cipher"] = transport.get_extra_info("cipher")
        if isinstance(transport, TLSTransport):
            info["tls_version"] = transport.get_extra_info("tls_version")
            info["tls_session_reused"] = transport.get_extra_info("session_reused")
        else:
            info["tls_version"] = ssl_object.version() if ssl_object is not None else None
            info["tls_session_reused"] = bool(ssl_object is not None and ssl_object.session_reused)
        return info
