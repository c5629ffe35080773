"""A Dask comm over a comm: Dask's framing and serialization, comm's frames and transport.

:meth:`DaskComm.write` serializes with Dask's own ``to_frames`` (its
serializers, ``to_serialize``, ``Serialize``, ``ToPickle``, compression, the
context of the Dask handshake) and writes the list of frames as one comm
message: comm sends each frame of 64 KiB or more as an out-of-band frame,
straight from Dask's buffers (no copy), and the smaller ones inside the message
body. :meth:`DaskComm.read` reads that list, each large frame received into a
buffer of its own, and hands it to Dask's ``from_frames``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_bytes
from distributed.comm.core import Comm as DaskCommBase
from distributed.comm.core import CommClosedError, FatalCommClosedError
from distributed.comm.utils import from_frames, to_frames

import comm_core

if TYPE_CHECKING:
    from comm_dask._backend import CommBackend

__all__ = ["DaskComm"]

logger = logging.getLogger("comm_dask")

_FRAME_TYPES = (bytes, bytearray, memoryview)


def _shard_size() -> int:
    """Dask's ``distributed.comm.shard``: the largest frame Dask's serializers make."""
    return int(parse_bytes(dask.config.get("distributed.comm.shard")))


class DaskComm(DaskCommBase):
    """A ``distributed.comm.core.Comm`` over the comm *comm* (comm-core's
    :class:`~comm_core.Comm`), whose addresses are reported in Dask's scheme.

    ``read()`` and ``write()`` raise Dask's ``CommClosedError`` (and its
    ``FatalCommClosedError``) where comm raises its own, which stays the
    ``__cause__``; what Dask's serialization raises passes through, and the comm
    stays open (as over Dask's tcp), but for an ``EOFError`` while deserializing
    (a truncated message), which aborts it.
    """

    #: Dask's largest frame, as Dask's tcp comm has it (a test may lower it on one comm).
    max_shard_size: int

    def __init__(self, comm: comm_core.Comm, backend: CommBackend, deserialize: bool = True):
        super().__init__(deserialize=deserialize)
        self.comm = comm
        self._backend = backend
        # Dask's connect() reads these two attributes by these names.
        self._local_addr = backend.dask_address(comm.local_address)
        self._peer_addr = backend.dask_address(comm.peer_address)
        self.max_shard_size = _shard_size()

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def same_host(self) -> bool:
        if self._backend.in_process:
            return True
        return self.comm.same_host

    @property
    def extra_info(self) -> dict[str, Any]:
        """comm's ``extra_info`` of the transport (over tls: ``peercert``, ``cipher``,
        ``tls_version``, as Dask's tls has them)."""
        return dict(self.comm.extra_info)

    def _closed_error(self, exc: comm_core.CommClosedError, doing: str) -> CommClosedError:
        kind = FatalCommClosedError if isinstance(exc, comm_core.FatalCommClosedError) else None
        return (kind or CommClosedError)(f"in {self!r}: {doing}: {exc}")

    async def read(self, deserializers: Any = None) -> Any:
        """Read the next message, deserialized as Dask's ``deserialize`` flag says.

        Raises:
            CommClosedError: (Dask's) the comm is closed, or the peer sent
                something else than a list of frames, or a truncated message
                (the comm is then aborted).
        """
        try:
            frames = await self.comm.read()
        except comm_core.CommClosedError as exc:
            raise self._closed_error(exc, "read") from exc
        except comm_core.CommError as exc:  # a protocol error: comm aborted the comm
            self.comm.abort()
            raise CommClosedError(f"in {self!r}: read: {exc}") from exc
        except BaseException:
            # Cancelled or interrupted midway: the position in the stream is lost.
            self.comm.abort()
            raise
        if not isinstance(frames, list) or not all(isinstance(f, _FRAME_TYPES) for f in frames):
            self.comm.abort()
            raise CommClosedError(
                f"in {self!r}: the peer sent a {type(frames).__name__}, not a list of Dask "
                "frames: is it a comm-dask endpoint? The comm is aborted."
            )
        try:
            return await from_frames(  # type: ignore[no-untyped-call]
                frames,
                deserialize=self.deserialize,
                deserializers=deserializers,
                allow_offload=self.allow_offload,
            )
        except EOFError as exc:
            self.comm.abort()
            raise CommClosedError(
                f"in {self!r}: a truncated message could not be deserialized; the comm is aborted"
            ) from exc

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        """Serialize *msg* with Dask's protocol and send its frames; return their size.

        Raises:
            CommClosedError: (Dask's) the comm is closed; nothing was sent.
            comm_core.MessageTooLargeError: the frames add up to more than
                comm's ``max_message_size``; nothing was sent, the comm stays open.
            Whatever Dask's serialization raises (with ``on_error="raise"``).
        """
        if self.comm.closed():
            raise CommClosedError(f"in {self!r}: write: the comm is closed")
        frames = await to_frames(  # type: ignore[no-untyped-call]
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={
                "sender": self.local_info,
                "recipient": self.remote_info,
                **self.handshake_options,
            },
            frame_split_size=self.max_shard_size,
        )
        frames = [f if isinstance(f, _FRAME_TYPES) else memoryview(f) for f in frames]
        try:
            sent = await self.comm.write(frames)
        except comm_core.CommClosedError as exc:
            raise self._closed_error(exc, "write") from exc
        except comm_core.CommError:
            raise  # refused before sending (too large): the comm is still usable
        except BaseException:
            self.comm.abort()
            raise
        return sent or sum(memoryview(f).nbytes for f in frames)

    async def close(self) -> None:
        """Send what was written, then close. Never raises."""
        await self.comm.close()

    def abort(self) -> None:
        """Close at once, dropping what is queued. Never raises."""
        self.comm.abort()

    def closed(self) -> bool:
        return self.comm.closed()
