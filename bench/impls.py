"""Adapters giving comm, Dask's ``distributed.comm`` and the baseline one async interface.

``await impl.listen(address, handler)`` starts a listener that calls
``handler(conn)`` for each connection and returns a :class:`Server`;
``await impl.connect(address)`` returns a connection. Connections are the
implementations' own objects (no wrapper on the hot path): each has ``async
write(msg)``, ``async read()`` and ``async close()``, and its ``read()`` raises
one of ``impl.closed_errors`` once the peer is gone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from bench import tls

__all__ = ["Connection", "Handler", "Impl", "Server", "get_impl"]


class Connection(Protocol):
    async def write(self, msg: Any) -> Any: ...

    async def read(self) -> Any: ...

    async def close(self) -> None: ...


Handler = Callable[[Any], Coroutine[Any, Any, None]]


@dataclass
class Server:
    """A started listener: its contact address, and how to stop it."""

    address: str
    _stop: Callable[[], Any]

    async def stop(self) -> None:
        result = self._stop()
        if inspect.isawaitable(result):
            await result


class Impl(Protocol):
    name: str
    closed_errors: tuple[type[BaseException], ...]

    async def listen(self, address: str, handler: Handler) -> Server: ...

    async def connect(self, address: str) -> Any: ...


class CommImpl:
    """This project: ``comm_core.listen`` / ``comm_core.connect``."""

    name = "comm"

    def __init__(self) -> None:
        import comm_core

        self._comm_core = comm_core
        self._security: Any = None
        self.closed_errors: tuple[type[BaseException], ...] = (comm_core.CommClosedError,)

    async def listen(self, address: str, handler: Handler) -> Server:
        listener = self._comm_core.listen(address, handler, **self._tls_args(address))
        await listener.start()
        return Server(listener.contact_address, listener.stop)

    async def connect(self, address: str) -> Any:
        return await self._comm_core.connect(address, **self._tls_args(address))

    def _tls_args(self, address: str) -> dict[str, Any]:
        if not address.startswith(("tls://", "wss://")):
            return {}
        if self._security is None:
            from comm_tls import Security

            ca, cert, key = tls.files()
            self._security = Security(ca=ca, cert=cert, key=key)
        return {"security": self._security}


class DaskImpl:
    """Dask's ``distributed.comm.listen`` / ``distributed.comm.connect``."""

    name = "dask"

    def __init__(self) -> None:
        import distributed.comm

        self._comm: Any = distributed.comm  # untyped
        self._security: Any = None
        self.closed_errors: tuple[type[BaseException], ...] = (self._comm.CommClosedError,)

    async def listen(self, address: str, handler: Handler) -> Server:
        args = self._tls_args(address, "listen")
        listener = await self._comm.listen(address, handler, **args)  # awaiting starts it
        return Server(listener.contact_address, listener.stop)

    async def connect(self, address: str) -> Any:
        return await self._comm.connect(address, **self._tls_args(address, "connect"))

    def _tls_args(self, address: str, side: str) -> dict[str, Any]:
        """What a Dask cluster configured with the run's files passes for *side*."""
        if not address.startswith(("tls://", "wss://")):
            return {}
        if self._security is None:
            import distributed

            ca, cert, key = tls.files()
            self._security = distributed.Security(
                tls_ca_file=ca,
                tls_client_cert=cert,
                tls_client_key=key,
                tls_scheduler_cert=cert,
                tls_scheduler_key=key,
                require_encryption=True,
            )
        if side == "listen":
            return dict(self._security.get_listen_args("scheduler"))
        return dict(self._security.get_connection_args("client"))


class BaselineImpl:
    """The hand-written asyncio baseline of :mod:`bench.baseline` (tcp, and tls)."""

    name = "baseline"

    def __init__(self) -> None:
        from bench import baseline

        self._baseline = baseline
        self.closed_errors: tuple[type[BaseException], ...] = (baseline.ConnectionClosed,)

    async def listen(self, address: str, handler: Handler) -> Server:
        server, contact = await self._baseline.listen(address, handler)
        return Server(contact, server.close)

    async def connect(self, address: str) -> Any:
        return await self._baseline.connect(address)


_IMPLS: dict[str, Callable[[], Impl]] = {
    "comm": CommImpl,
    "dask": DaskImpl,
    "baseline": BaselineImpl,
}


def get_impl(name: str) -> Impl:
    """Import and return implementation *name*; only its own packages are imported."""
    return _IMPLS[name]()
