"""The tls listener: comm-tcp's listener, with each accepted connection upgraded to TLS."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from comm_core.abc import CommHandler
from comm_core.protocol import MAGIC
from comm_core.stream import format_sockaddr
from comm_tcp import TCPListener
from comm_tls._comm import TLSProtocol
from comm_tls._errors import describe_failure
from comm_tls._handshake import (
    HandshakeWatch,
    PendingProtocol,
    feed,
    interpose,
    remove_interposer,
)
from comm_tls._security import context_for

if TYPE_CHECKING:
    from comm_tcp import TCPConnector

__all__ = ["TLSListener"]

logger = logging.getLogger("comm_tls")


def _not_tls(head: bytes) -> str:
    if head.startswith(MAGIC):
        return "the preamble of a plain comm client: is it dialling tcp:// instead of tls://?"
    if head[:4] in {b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN"}:
        return "HTTP: is it dialling http:// instead of tls://?"
    return "something else: is it a comm client dialling tls://?"


class _Accepted(asyncio.Protocol):
    """The protocol of a raw connection until ``start_tls`` takes the transport over."""

    def __init__(self, listener: TLSListener, protocol: TLSProtocol) -> None:
        self.listener = listener
        self.protocol = protocol
        #: Bytes read before start_tls took over (uvloop reads despite pause_reading()).
        self.early = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        protocol = self.protocol
        protocol.pending = transport
        protocol.server_side = True
        # The addresses, for messages about this connection before the hand-over.
        protocol.local = format_sockaddr(protocol.scheme, transport.get_extra_info("sockname"))
        protocol.peer = format_sockaddr(protocol.scheme, transport.get_extra_info("peername"))
        self.listener._upgrade_soon(transport, self)

    def data_received(self, data: bytes) -> None:
        self.early += data


class TLSListener(TCPListener):
    """Accepts tls comms on ``host:port``: TCP's listener, TLS on each connection.

    Each accepted connection runs its TLS handshake in a task of its own. One
    that fails is logged (a warning naming the client, the listener and what to
    fix) and dropped, and the listener keeps serving. The handshake and the
    comm preamble together must finish within the handshake timeout.

    Raises:
        TLSConfigurationError: on creation, when the connection arguments hold
            no usable ``security`` or ``ssl_context``.
    """

    def __init__(
        self,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool = True,
        *,
        connector: TCPConnector,
        **connection_args: Any,
    ) -> None:
        super().__init__(loc, handle_comm, deserialize, connector=connector, **connection_args)
        self.ssl_context = context_for(
            connection_args, server_side=True, address=self.listen_address
        )
        self._handshakes: set[asyncio.Task[None]] = set()

    def _make_protocol(self) -> asyncio.BaseProtocol:
        protocol = super()._make_protocol()  # a comm's, with its preamble deadline
        assert isinstance(protocol, TLSProtocol)
        return _Accepted(self, protocol)

    def _upgrade_soon(self, transport: asyncio.BaseTransport, accepted: _Accepted) -> None:
        task = asyncio.get_running_loop().create_task(self._upgrade(transport, accepted))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _upgrade(self, raw: asyncio.BaseTransport, accepted: _Accepted) -> None:
        """Run the TLS handshake on *raw*, then hand the TLS transport to the comm."""
        protocol = accepted.protocol
        loop = asyncio.get_running_loop()
        watch = HandshakeWatch(raw)
        pending = PendingProtocol()
        tls: asyncio.BaseTransport | None = None
        error: BaseException | None = None
        timeout = self.handshake_timeout
        if raw.is_closing():  # aborted before this task ran
            protocol.pending = None
            return
        # Pause for real: Python 3.10's transports start reading after connection_made()
        # even if it paused them, and a byte read before start_tls's protocol is connected
        # would be lost. (resume_reading() first: pausing a paused transport does nothing.)
        raw.resume_reading()  # type: ignore[attr-defined]
        raw.pause_reading()  # type: ignore[attr-defined]
        # Runs once start_tls has installed its protocol, before that protocol is connected.
        loop.call_soon(lambda: interpose(raw, watch, bytes(accepted.early)))
        try:
            tls = await loop.start_tls(
                raw,
                pending,
                self.ssl_context,
                server_side=True,
                ssl_handshake_timeout=timeout,
            )
        except asyncio.CancelledError:
            protocol.pending = None
            protocol.closing = True
            raw.abort()  # type: ignore[attr-defined]
            raise
        except Exception as exc:
            error = exc
        finally:
            if not raw.is_closing():
                remove_interposer(raw)
        aborted = protocol.pending is None  # the listener stopped, or the deadline passed
        protocol.pending = None
        if not watch.speaks_tls:
            # The Interposer sent an alert and hung up. uvloop's start_tls can then
            # return a transport as if the handshake had succeeded: it has not.
            tls_failed, tls = tls, None
            if tls_failed is not None:
                tls_failed.abort()  # type: ignore[attr-defined]
        if tls is None or pending.ended or aborted:
            protocol.peer_gone = True
            if tls is not None:
                tls.abort()  # type: ignore[attr-defined]
            if aborted:
                return
            if tls is not None:
                logger.info(
                    "listener %s: %s closed the connection right after the TLS handshake",
                    self._where(),
                    format_sockaddr(self.scheme, raw.get_extra_info("peername")),
                )
            else:
                self._log_failure(raw, watch, error, timeout)
            return
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        for chunk in pending.data:
            if protocol.peer_gone:
                break
            feed(protocol, chunk)
        pending.data.clear()
        pending.target = protocol

    def _log_failure(
        self,
        raw: asyncio.BaseTransport,
        watch: HandshakeWatch,
        error: BaseException | None,
        timeout: float,
    ) -> None:
        client = format_sockaddr(self.scheme, raw.get_extra_info("peername"))
        where = f"listener {self._where()}"
        if not watch.speaks_tls:
            logger.warning(
                "%s: TLS handshake with client %s failed: the client does not speak TLS: "
                "it sent %r, %s",
                where,
                client,
                watch.head,
                _not_tls(watch.head),
            )
            return
        reason: BaseException | None = watch.error or error
        if reason is None:
            reason = ConnectionResetError("the connection closed during the TLS handshake")
        if isinstance(reason, (TimeoutError, asyncio.TimeoutError)) or (
            isinstance(reason, ConnectionAbortedError) and "taking longer" in str(reason)
        ):
            level = logging.INFO if not watch.head else logging.WARNING
            logger.log(
                level,
                "%s: dropped %s: it did not complete the TLS handshake within %gs",
                where,
                client,
                timeout,
            )
            return
        if isinstance(reason, ssl.SSLError) or watch.head:
            message = describe_failure(reason, peer="client", address=f"client {client}")
            logger.warning("%s: %s", where, message)
        else:
            logger.info("%s: %s closed the connection before the TLS handshake", where, client)

    def _where(self) -> str:
        """The contact address for messages; the listen address if not started."""
        try:
            return self.contact_address
        except RuntimeError:
            return self.listen_address
