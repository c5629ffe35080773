"""Backends for the conformance kit's own tests.

``kit``: a small, real backend, over TCP on the loopback, built from comm-core's
public blocks (:class:`~comm_core.stream.StreamComm` and
:class:`~comm_core.stream.StreamAcceptor`), with ``host:port`` locations. The kit
must pass on it. Its buffers are small (``write_high_water`` 256 KiB,
``read_high_water`` 1 MiB), so that the backpressure check ends soon.

Every other backend here is ``kit`` broken in one way, which one of the kit's
checks must catch (see ``BROKEN``). They are registered in code, never through an
entry point.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Collection
from typing import Any, ClassVar

from comm_core import (
    AddressError,
    CommClosedError,
    ConnectError,
    parse_host_port,
    unparse_host_port,
)
from comm_core.abc import Backend, Comm, CommHandler, Connector, Listener, OnError
from comm_core.protocol import Encoders, FrameDecoder
from comm_core.stream import StreamAcceptor, StreamComm

#: The connection arguments that configure a comm; the others are ignored.
COMM_OPTIONS = ("max_message_size", "write_high_water", "read_high_water")
#: What the comms of these backends use unless told otherwise.
COMM_DEFAULTS: dict[str, Any] = {"write_high_water": 256 * 2**10, "read_high_water": 2**20}

Established = Callable[[StreamComm], None]


def comm_options(connection_args: dict[str, Any]) -> dict[str, Any]:
    options = dict(COMM_DEFAULTS)
    options.update({k: connection_args[k] for k in COMM_OPTIONS if connection_args.get(k)})
    return options


class KitConnector(Connector):
    def __init__(self, backend: KitBackend) -> None:
        self.backend = backend

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        scheme = self.backend.scheme
        host, port = parse_host_port(address, scheme=scheme)
        if not host or not port:
            raise AddressError(f"cannot connect to {scheme}://{address}: it is only for listening")
        comm = self.backend.make_comm(deserialize, self.backend.dial_args(connection_args), None)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: comm.protocol, host, port)
        except OSError as exc:
            comm.abort()
            raise ConnectError(f"cannot connect to {scheme}://{address}: {exc}") from exc
        except BaseException:
            comm.abort()
            raise
        return comm


class KitListener(Listener):
    def __init__(
        self,
        backend: KitBackend,
        loc: str,
        handle_comm: CommHandler,
        deserialize: bool,
        connection_args: dict[str, Any],
    ) -> None:
        self.backend = backend
        self.host, self.port = parse_host_port(loc, default_port=0, scheme=backend.scheme)
        self.deserialize = deserialize
        self.connection_args = connection_args
        self.acceptor = StreamAcceptor(self, handle_comm)
        #: Every comm accepted (for the broken listeners).
        self.accepted: list[StreamComm] = []
        self._server: asyncio.AbstractServer | None = None
        self._stopped = False

    async def start(self) -> None:
        if self._server is not None or self._stopped:
            return
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._make_protocol, self.host or "127.0.0.1", self.port
            )
        except OSError as exc:
            raise ConnectError(f"cannot listen on {self.listen_address}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]

    def _make_protocol(self) -> asyncio.BaseProtocol:
        args = self.backend.listen_args(self.connection_args)
        comm = self.backend.make_comm(self.deserialize, args, self.acceptor.established)
        self.accepted.append(comm)
        return self.acceptor.accept(comm).protocol

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        self.acceptor.close()
        super().stop()

    @property
    def listen_address(self) -> str:
        return f"{self.backend.scheme}://{unparse_host_port(self.host, self.port)}"

    @property
    def contact_address(self) -> str:
        host = self.host or "127.0.0.1"
        return f"{self.backend.scheme}://{unparse_host_port(host, self.port)}"


class KitBackend(Backend):
    """The ``kit`` scheme: comm's wire protocol over TCP, ``host:port`` locations."""

    scheme: ClassVar[str] = "kit"
    comm_class: ClassVar[type[StreamComm]] = StreamComm
    listener_class: ClassVar[type[KitListener]] = KitListener

    def __init__(self) -> None:
        self._connector = KitConnector(self)

    def make_comm(
        self, deserialize: bool, connection_args: dict[str, Any], on_established: Established | None
    ) -> StreamComm:
        return self.comm_class(
            scheme=self.scheme,
            deserialize=deserialize,
            on_established=on_established,
            **comm_options(connection_args),
        )

    def dial_args(self, connection_args: dict[str, Any]) -> dict[str, Any]:
        """The connection arguments a dialer's comm is made with."""
        return connection_args

    def listen_args(self, connection_args: dict[str, Any]) -> dict[str, Any]:
        """The connection arguments each comm a listener accepts is made with."""
        return connection_args

    def get_connector(self) -> Connector:
        return self._connector

    def get_listener(
        self, loc: str, handle_comm: CommHandler, deserialize: bool, **connection_args: Any
    ) -> Listener:
        return self.listener_class(self, loc, handle_comm, deserialize, connection_args)

    def get_address_host(self, loc: str) -> str:
        return parse_host_port(loc, default_port=0, scheme=self.scheme)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc, scheme=self.scheme)

    def resolve_address(self, loc: str) -> str:
        host, port = parse_host_port(loc, default_port=0, scheme=self.scheme)
        if not host:
            return loc
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise AddressError(f"cannot resolve {self.scheme}://{loc}: {exc}") from exc
        has_port = "]:" in loc if loc.startswith("[") else loc.count(":") == 1
        return unparse_host_port(str(infos[0][4][0]), port if has_port else None)

    def get_local_address_for(self, loc: str) -> str:
        host, _ = parse_host_port(loc, default_port=0, scheme=self.scheme)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((host or "127.0.0.1", 9))  # picks a route, sends nothing
            except OSError as exc:
                where = f"{self.scheme}://{loc}"
                raise AddressError(f"no local address reaches {where}: {exc}") from exc
            return unparse_host_port(str(probe.getsockname()[0]))


# -- broken in one way each --------------------------------------------------------------


class MadeUpPortBackend(KitBackend):
    """Gives a location without a port port 0 instead of refusing it."""

    scheme: ClassVar[str] = "kit-made-up-port"

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        return parse_host_port(loc, default_port=0, scheme=self.scheme)


class BracketsBackend(KitBackend):
    """Keeps an IPv6 host's brackets as part of the host."""

    scheme: ClassVar[str] = "kit-brackets"

    def get_address_host(self, loc: str) -> str:
        host, _ = parse_host_port(loc, default_port=0, scheme=self.scheme)
        return f"[{host}]" if ":" in host else host

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, port = parse_host_port(loc, scheme=self.scheme)
        return (f"[{host}]" if ":" in host else host), port


class ValueErrorBackend(KitBackend):
    """Parses host:port by hand: a malformed port raises ValueError, not AddressError."""

    scheme: ClassVar[str] = "kit-value-error"

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        host, _, port = loc.rpartition(":")
        return host.strip("[]"), int(port)


class NoWriterLimitBackend(KitBackend):
    """Ignores the max_message_size a dialer asks for."""

    scheme: ClassVar[str] = "kit-no-writer-limit"

    def dial_args(self, connection_args: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in connection_args.items() if k != "max_message_size"}


class NoReaderLimitBackend(KitBackend):
    """Ignores the max_message_size a listener is given."""

    scheme: ClassVar[str] = "kit-no-reader-limit"

    def listen_args(self, connection_args: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in connection_args.items() if k != "max_message_size"}


class _NoFirstLimitComm(StreamComm):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        p = self.protocol
        p.decoder = FrameDecoder(p.on_message, max_message_size=self.max_message_size)
        p.get_buffer = p.decoder.get_buffer  # type: ignore[method-assign]
        p.read_limit = p.read_high_water


class NoFirstLimitBackend(KitBackend):
    """Reads a first message of any size (up to max_message_size)."""

    scheme: ClassVar[str] = "kit-no-first-limit"
    comm_class: ClassVar[type[StreamComm]] = _NoFirstLimitComm


class _NoDepthLimitComm(StreamComm):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoders = Encoders(self.families, self.max_message_size)  # no max_depth


class NoDepthLimitBackend(KitBackend):
    """Sends messages nested deeper than max_message_depth (which the peer refuses)."""

    scheme: ClassVar[str] = "kit-no-depth-limit"
    comm_class: ClassVar[type[StreamComm]] = _NoDepthLimitComm


class _PicklingComm(StreamComm):
    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        return await super().read(["pickle"] if deserializers is None else deserializers)


class PicklingBackend(KitBackend):
    """Unpickles what the peer sends although the reader did not ask for it."""

    scheme: ClassVar[str] = "kit-pickles"
    comm_class: ClassVar[type[StreamComm]] = _PicklingComm


class _QueueingComm(StreamComm):
    """Queues what is written and returns at once; a task of its own sends it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._queue: deque[Any] = deque()
        self._sender: asyncio.Task[None] | None = None

    async def write(
        self, msg: Any, serializers: Collection[str] | None = None, on_error: OnError = "raise"
    ) -> int:
        if self.closed():
            raise CommClosedError(f"{self!r} is closed")
        self._queue.append(msg)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send())
        return 0

    async def _send(self) -> None:
        try:
            while self._queue:
                await StreamComm.write(self, self._queue.popleft())
        except CommClosedError:
            self._queue.clear()
        finally:
            self._sender = None


class UnboundedBackend(KitBackend):
    """Queues every write without bound, as a library with a send buffer of its own may."""

    scheme: ClassVar[str] = "kit-unbounded"
    comm_class: ClassVar[type[StreamComm]] = _QueueingComm


class _AbortingListener(KitListener):
    """Aborts, when stopped, the accepted comms still in their handshake."""

    def stop(self) -> None:
        for comm in self.accepted:
            if not comm.handshake_info:
                comm.abort()
        super().stop()


class AbortsHandshakesBackend(KitBackend):
    """A listener's stop() aborts the comms still in their handshake (issue 18)."""

    scheme: ClassVar[str] = "kit-aborts-handshakes"
    listener_class: ClassVar[type[KitListener]] = _AbortingListener


class _ClosingListener(KitListener):
    """Aborts, when stopped, every comm it accepted."""

    def stop(self) -> None:
        for comm in self.accepted:
            comm.abort()
        super().stop()


class AbortsCommsBackend(KitBackend):
    """A listener's stop() aborts the comms it handed to the handler too."""

    scheme: ClassVar[str] = "kit-aborts-comms"
    listener_class: ClassVar[type[KitListener]] = _ClosingListener


class ConcurrencyError(RuntimeError):
    """What a library of the transport's raises (say)."""


class _ForeignErrorComm(StreamComm):
    _saw_the_end = False

    async def read(self, deserializers: Collection[str] | None = None) -> Any:
        if self._saw_the_end:
            raise ConcurrencyError("recv() called after the connection closed")
        try:
            return await super().read(deserializers)
        except CommClosedError:
            self._saw_the_end = True
            raise


class ForeignErrorBackend(KitBackend):
    """After the first CommClosedError, reads raise the transport library's own error."""

    scheme: ClassVar[str] = "kit-foreign-error"
    comm_class: ClassVar[type[StreamComm]] = _ForeignErrorComm


#: Each broken backend, the kit's tests that must fail on it, and what their failure says.
BROKEN: dict[type[KitBackend], dict[str, str]] = {
    MadeUpPortBackend: {"test_host_port_addresses": "(an address without a port) returned"},
    BracketsBackend: {"test_host_port_addresses": "returned '[::1]'"},
    ValueErrorBackend: {"test_malformed_locations_are_refused": "raised ValueError"},
    NoWriterLimitBackend: {
        "test_writer_refuses_a_message_above_max_message_size": "max_message_size=100000: returned"
    },
    NoReaderLimitBackend: {
        "test_reader_drops_a_message_above_max_message_size": "should raise MessageTooLargeError"
    },
    NoFirstLimitBackend: {"test_first_message_limit": "first message takes 65537 bytes"},
    NoDepthLimitBackend: {
        "test_writer_refuses_a_message_nested_deeper_than_max_message_depth": (
            "(max_message_depth=100): returned"
        )
    },
    PicklingBackend: {"test_pickle_only_where_named": "must refuse a pickled value"},
    UnboundedBackend: {"test_writer_waits_for_a_peer_that_does_not_read": "write() never waited"},
    AbortsHandshakesBackend: {
        "test_comm_survives_an_immediate_stop": "was lost when its listener stopped",
        "test_stop_serves_comms_in_their_handshake": "stop() dropped a comm still in its",
    },
    AbortsCommsBackend: {
        "test_stop_leaves_established_comms_working": "stop() closed a comm the handler"
    },
    ForeignErrorBackend: {"test_every_read_after_the_peer_closed_raises": "ConcurrencyError"},
}
