"""What the suite measures: the backends, implementations, workloads and their limits."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BACKENDS",
    "IMPLS",
    "LOOPS",
    "MODES",
    "WORKLOADS",
    "BackendSpec",
    "Cell",
    "Limits",
    "MiB",
    "format_size",
    "impl_available",
    "limits_for",
    "loop_available",
]

MiB = 1024 * 1024


@dataclass(frozen=True)
class BackendSpec:
    """How to benchmark one comm backend (transport).

    Attributes:
        listen: the loopback address listeners of every implementation bind.
        cross_process: client and server may be in different processes
            (``--mode two``); inproc may not.
        baseline: the hand-written asyncio baseline speaks this transport.
        raw: the blocking-socket reference applies (W3's "% of raw socket").
        dask: Dask's ``distributed.comm`` has this scheme.
        same_host: comm's same-host selection is on (``COMM_SAME_HOST``): a ``tcp://``
            listener in another process of this host is reached over its Unix socket.
            Off for every other row, so that ``tcp`` measures TCP.
        needs: the comm transports (schemes) that must be installed besides the address's.
    """

    listen: str
    cross_process: bool = True
    baseline: bool = False
    raw: bool = False
    dask: bool = True
    same_host: bool = False
    needs: tuple[str, ...] = ()

    @property
    def scheme(self) -> str:
        """The scheme of :attr:`listen`."""
        return self.listen.partition("://")[0]


#: One line per backend. A backend is benchmarked when comm_core.backends() has it too.
BACKENDS: dict[str, BackendSpec] = {
    "tcp": BackendSpec("tcp://127.0.0.1:0", baseline=True, raw=True),
    # tcp:// addresses with same-host selection on (issue 19): two processes take the
    # listener's Unix socket; one process stays on TCP.
    "tcp+select": BackendSpec("tcp://127.0.0.1:0", dask=False, same_host=True, needs=("unix",)),
    "tls": BackendSpec("tls://127.0.0.1:0", baseline=True),
    # tls:// addresses with same-host selection on: two processes take the listener's
    # Unix socket behind the token its TLS greeting gave; one process stays on TLS.
    "tls+select": BackendSpec("tls://127.0.0.1:0", dask=False, same_host=True, needs=("unix",)),
    "inproc": BackendSpec("inproc://", cross_process=False),
    # A fresh socket path in a private directory per listener; Dask has no unix scheme.
    "unix": BackendSpec("unix://", raw=True, dask=False),
    # Dask's ws:// and wss:// are distributed.comm.ws (tornado's WebSocket).
    "ws": BackendSpec("ws://127.0.0.1:0"),
    "wss": BackendSpec("wss://127.0.0.1:0"),
    # ws:// and wss:// with same-host selection on (wss's socket behind a token).
    "ws+select": BackendSpec("ws://127.0.0.1:0", dask=False, same_host=True, needs=("unix",)),
    "wss+select": BackendSpec("wss://127.0.0.1:0", dask=False, same_host=True, needs=("unix",)),
}

#: Our implementation first: the report's ratios are "comm / other".
IMPLS = ("comm", "dask", "baseline")
WORKLOADS = ("W1", "W2", "W3", "W4", "import", "cluster")
MODES = ("one", "two")
LOOPS = ("asyncio", "uvloop")

_IMPL_MODULES = {"comm": "comm_core", "dask": "distributed", "baseline": "msgpack"}


def format_size(size: int) -> str:
    """``"16 MiB"``, or ``"300,000 B"`` for a size that is not a whole number of MiB."""
    return f"{size // MiB} MiB" if size % MiB == 0 else f"{size:,} B"


def impl_available(impl: str) -> bool:
    """Whether the packages *impl* needs are installed."""
    return importlib.util.find_spec(_IMPL_MODULES[impl]) is not None


def loop_available(loop: str) -> bool:
    """Whether event loop *loop* can be used (uvloop is optional)."""
    return loop == "asyncio" or importlib.util.find_spec(loop) is not None


@dataclass(frozen=True)
class Limits:
    """Every measuring loop stops at its count or its time budget, whichever comes first."""

    repeats: int = 3
    #: Repeats of W4 cells, whose spread from one run to the next is the widest (the
    #: two processes' placement on the CPUs decides much of it); ``None``: ``repeats``.
    w4_repeats: int | None = 5
    # W1: small round trips.
    w1_count: int = 20_000
    w1_seconds: float = 2.0
    w1_warmup: int = 1_000
    # W2: pipelined small messages.
    w2_count: int = 50_000
    w2_seconds: float = 10.0
    w2_warmup: int = 2_000
    # W3: large messages; each size in a fresh process; at least one put.
    w3_sizes: tuple[int, ...] = (1 * MiB, 16 * MiB, 128 * MiB)
    w3_bytes: int = 256 * MiB  # puts per size: this many bytes' worth, at least w3_min_puts
    w3_min_puts: int = 4  # the first is reported apart (see workloads._throughput)
    w3_seconds: float = 3.0
    w3_warmup_size: int = 256 * 1024
    w3_warmup: int = 2
    # W4: connection setup.
    w4_count: int = 2_000
    w4_seconds: float = 2.0
    w4_warmup: int = 20
    # Import time: subprocess runs per command.
    import_runs: int = 7
    # A cell's process is killed (and the cell reported as an error) after this long.
    cell_timeout: float = 180.0


QUICK = Limits(
    repeats=1,
    w4_repeats=None,
    w1_count=500,
    w1_seconds=0.5,
    w1_warmup=100,
    w2_count=2_000,
    w2_seconds=1.0,
    w2_warmup=200,
    w3_sizes=(1 * MiB, 16 * MiB),
    w3_bytes=16 * MiB,
    w3_min_puts=1,
    w3_seconds=0.5,
    w3_warmup=1,
    w4_count=50,
    w4_seconds=0.5,
    w4_warmup=5,
    import_runs=3,
    cell_timeout=60.0,
)


def limits_for(quick: bool, repeats: int | None = None) -> Limits:
    """The full or quick limits, with *repeats* (for every workload) overridden if given."""
    limits = QUICK if quick else Limits()
    if repeats is not None:
        limits = Limits(**{**asdict(limits), "repeats": repeats, "w4_repeats": None})
    return limits


@dataclass(frozen=True)
class Cell:
    """One measurement: a workload, on a backend, in a mode, on a loop, by one implementation.

    ``impl`` may also be ``"raw"`` (W3's blocking-socket reference).
    """

    workload: str
    backend: str
    mode: str
    loop: str
    impl: str
    size: int | None = None  # W3's payload size
    repeat: int = 0
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cell:
        data = dict(data)
        limits = dict(data.pop("limits"))
        limits["w3_sizes"] = tuple(limits["w3_sizes"])
        return cls(**data, limits=Limits(**limits))

    def label(self) -> str:
        size = f" {format_size(self.size)}" if self.size else ""
        return (
            f"{self.workload}{size} {self.backend} {self.mode}-process {self.loop} "
            f"{self.impl} #{self.repeat + 1}"
        )
