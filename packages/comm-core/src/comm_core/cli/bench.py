"""``comm bench``: latency and throughput of the installed transports, or of a listener."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import comm_core
from comm_core._addressing import unparse_address
from comm_core._registry import get_registry
from comm_core._version import __version__
from comm_core.abc import Backend, Capability, Comm
from comm_core.cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    Status,
    backend_for,
    describe_backend_error,
    echo,
    format_seconds,
    format_size,
    format_table,
    positive_float,
    print_error,
    size,
    stop_on_signals,
    unicode_ok,
)
from comm_core.cli._plugins import connection_args
from comm_core.cli.ping import percentile
from comm_core.exceptions import AddressError, CommError

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Measure round trips of messages of each SIZE: round trips per second, the
median (p50) and 99th-percentile (p99) round-trip time, and the throughput in
MB/s (10^6 bytes of payload echoed per second; each message travels out and back).

With no TARGET, every installed transport is measured in this process (a
listener and a client on one event loop: on 127.0.0.1 for transports with
host:port addresses, with throwaway credentials for those that need some). A
TARGET is a scheme (tcp, inproc, ...), measured the same way, or the address
of a `comm serve` listener.

examples:
  comm bench
  comm bench tcp inproc --duration 2
  comm bench tcp://127.0.0.1:8786 --json
"""

EPILOG = """\
exit status:
  0    every target was measured
  1    a target failed (could not listen, connect, or get its messages back)
  2    usage errors, an unknown scheme, options that a transport cannot use, no
       transport installed
  130  interrupted by Ctrl-C (the results so far are printed)
"""

#: Under the table: sizes are binary (as given, such as 16MiB), rates decimal.
UNITS = (
    "(SIZE: payload per message, 1 KiB = 1024 bytes, 1 MiB = 1024 KiB; MB/S: payload echoed "
    "per second, 1 MB = 10^6 bytes)"
)

#: At most this many round trips per measurement, however fast they are.
MAX_ROUND_TRIPS = 1_000_000
#: At most this many warm-up round trips, within a tenth of the duration.
MAX_WARMUP = 1_000


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark the installed transports, or a listener",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a scheme, or the address of a `comm serve` listener (default: every "
        "installed transport)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for machines")
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=0.5,
        metavar="S",
        help="seconds to measure each size on each target (default: %(default)s)",
    )
    parser.add_argument(
        "--sizes",
        type=size,
        nargs="+",
        default=[64, 16 * 2**20],
        metavar="SIZE",
        help="message payload sizes, such as 64 1KiB 16MiB (default: 64 16MiB)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="T",
        help="seconds to connect, and allowed beyond the duration for the replies "
        "(default: %(default)s)",
    )
    parser.set_defaults(run=run)
    return parser


@dataclass
class Measurement:
    size: int
    round_trips: int
    seconds: float
    round_trips_per_s: float
    p50_us: float
    p99_us: float
    mb_per_s: float


@dataclass
class Target:
    #: What the user named: a scheme, or an address.
    name: str
    scheme: str
    #: The address of a listener elsewhere; ``None`` to measure in this process.
    address: str | None
    backend: Backend = field(repr=False)
    connection_args: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Result:
    target: str
    scheme: str
    in_process: bool
    address: str | None = None
    ok: bool = False
    error: str | None = None
    connect_ms: float | None = None
    measurements: list[Measurement] = field(default_factory=list)


def _is_scheme(text: str) -> bool:
    name = text.removesuffix("://")
    return bool(name) and name[0].isalpha() and all(c.isalnum() or c in "+-." for c in name)


def _targets(args: argparse.Namespace) -> list[Target]:
    registry = get_registry()
    targets: list[Target] = []
    names = args.targets
    if not names:
        try:
            names = sorted(registry.backends())
        except CommError as exc:
            raise CLIError(describe_backend_error(exc)) from exc
        if not names:
            raise CLIError(
                "no comm transport is installed, so there is nothing to measure; install "
                "some: pip install comm-inproc comm-tcp"
            )
    for name in names:
        if _is_scheme(name):
            scheme = name.removesuffix("://").lower()
            _, _, backend = backend_for(f"{scheme}://")
            args_ = connection_args(args, backend, server_side=True, in_process=True)
            targets.append(Target(scheme, scheme, None, backend, args_))
        else:
            address, scheme, backend = backend_for(name)
            args_ = connection_args(args, backend, server_side=False)
            targets.append(Target(name, scheme, address, backend, args_))
    return targets


def _listen_address(target: Target) -> str:
    """Where *target*'s transport listens in this process: 127.0.0.1, or its default place."""
    try:  # host:port locations, or none
        target.backend.get_address_host_port("127.0.0.1:0")
        loc = "127.0.0.1:0"
    except AddressError:
        loc = ""
    return unparse_address(target.scheme, loc)


class _Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.status = Status()
        self.stopping = False
        self.position = ""

    def stop(self) -> None:
        self.stopping = True

    def progress(self, text: str) -> None:
        self.status.show(f"comm bench: {self.position}{text}", force=True)

    async def round_trip(self, comm: Comm, payload: bytes) -> None:
        await comm.write(payload)
        reply = await comm.read()
        if not isinstance(reply, (bytes, bytearray, memoryview)) or len(reply) != len(payload):
            raise _NotEcho(reply)

    async def measure(self, comm: Comm, label: str, nbytes: int) -> Measurement:
        import asyncio

        duration = self.args.duration
        payload = b"\x00" * nbytes
        loop = asyncio.get_running_loop()
        warmup_end = loop.time() + duration / 10
        await self.round_trip(comm, payload)  # at least one, and it checks the echo
        for _ in range(MAX_WARMUP - 1):
            if loop.time() >= warmup_end or self.stopping:
                break
            await self.round_trip(comm, payload)
        samples: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        deadline = start + int(duration * 1e9)
        next_status = 0
        while True:
            t0 = clock()
            await comm.write(payload)
            await comm.read()
            t1 = clock()
            samples.append(t1 - t0)
            if t1 >= deadline or len(samples) >= MAX_ROUND_TRIPS or self.stopping:
                break
            if t1 >= next_status:
                next_status = t1 + 100_000_000
                progress = min((t1 - start) / (deadline - start), 1.0)
                self.progress(f"{label}: {progress:4.0%}")
        seconds = (clock() - start) / 1e9
        samples.sort()
        count = len(samples)
        return Measurement(
            size=nbytes,
            round_trips=count,
            seconds=seconds,
            round_trips_per_s=count / seconds,
            p50_us=percentile(samples, 0.5) / 1e3,
            p99_us=percentile(samples, 0.99) / 1e3,
            mb_per_s=nbytes * count / seconds / 1e6,
        )

    async def run_target(self, target: Target, result: Result) -> None:
        if target.address is not None:
            result.address = target.address
            await self.client(target, target.address, result)
            return
        address = _listen_address(target)
        self.progress(f"{target.name}: listening on {address}")
        listener = comm_core.listen(address, echo, deserialize=False, **target.connection_args)
        async with listener:
            result.address = listener.contact_address
            await self.client(target, listener.contact_address, result)

    async def client(self, target: Target, address: str, result: Result) -> None:
        from comm_core._compat import timeout_after

        args = self.args
        self.progress(f"{target.name}: connecting to {address}")
        start = time.perf_counter()
        comm = await comm_core.connect(address, timeout=args.timeout, **target.connection_args)
        result.connect_ms = (time.perf_counter() - start) * 1e3
        async with comm:
            for nbytes in args.sizes:
                if self.stopping:
                    break
                label = f"{target.name} {format_size(nbytes)}"
                try:
                    async with timeout_after(args.duration * 1.1 + args.timeout):
                        result.measurements.append(await self.measure(comm, label, nbytes))
                except TimeoutError as exc:
                    late = (
                        f"did not send the {format_size(nbytes)} messages back within "
                        f"{args.timeout:g} s after the measurement"
                    )
                    if target.address is None:  # our own listener: the transport stalled
                        raise _NoEcho(
                            f"the {target.scheme}:// listener that comm bench runs in this "
                            f"process ({address}) {late}: the transport lost or held up "
                            "messages; --timeout allows more time"
                        ) from exc
                    raise _NoEcho(f"{address} {late}: is it `comm serve`?") from exc

    async def run(self, targets: list[Target]) -> list[Result]:
        import asyncio

        results = []
        loop = asyncio.get_running_loop()
        with stop_on_signals(loop, self.stop):
            for i, target in enumerate(targets, 1):
                if self.stopping:
                    break
                self.position = f"[{i}/{len(targets)}] " if len(targets) > 1 else ""
                result = Result(target.name, target.scheme, in_process=target.address is None)
                results.append(result)
                try:
                    await self.run_target(target, result)
                except _NotEcho as exc:
                    result.error = str(exc)
                    if target.address is None:  # our own listener: the transport altered it
                        result.error = (
                            f"the {target.scheme}:// listener that comm bench runs in this "
                            f"process did not send the message back as it was sent "
                            f"({exc.sent_back}): the transport altered it"
                        )
                    continue
                except (CommError, _NoEcho) as exc:
                    result.error = str(exc)
                    continue
                finally:
                    self.status.clear()
                result.ok = len(result.measurements) == len(self.args.sizes)
        return results


class _NoEcho(Exception):
    pass


class _NotEcho(Exception):
    def __init__(self, reply: object) -> None:
        self.sent_back = f"it sent {type(reply).__name__} {reply!r:.60}"
        super().__init__(
            f"the peer did not send the message back ({self.sent_back}): is it `comm serve`?"
        )


def run(args: argparse.Namespace) -> int:
    import asyncio  # here: `comm backends` and `comm --help` need no event loop

    targets = _targets(args)
    bench = _Bench(args)
    try:
        results = asyncio.run(bench.run(targets))
    except KeyboardInterrupt:  # where the event loop cannot handle signals (Windows)
        bench.status.clear()
        print_error("interrupted")
        return EXIT_INTERRUPTED
    if args.json:
        _print_json(args, results, bench.stopping)
    else:
        _print_table(args, results)
    for result in results:
        if result.error:
            print_error(f"{result.target}: {result.error}")
    if bench.stopping:
        print_error("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if any(r.error for r in results) else EXIT_OK


def _print_json(args: argparse.Namespace, results: list[Result], interrupted: bool) -> None:
    document = {
        "comm_core": __version__,
        "python": platform.python_version(),
        "platform": sys.platform,
        "duration": args.duration,
        "sizes": args.sizes,
        "interrupted": interrupted,
        "results": [asdict(result) for result in results],
    }
    print(json.dumps(document, indent=2))


def _print_table(args: argparse.Namespace, results: list[Result]) -> None:
    micro = "µs" if unicode_ok(sys.stdout) else "us"
    print(
        f"comm bench: comm-core {__version__}, Python {platform.python_version()}, "
        f"{args.duration:g} s per measurement"
    )
    rows = []
    for result in results:
        for i, m in enumerate(result.measurements):
            rows.append(
                [
                    result.target if i == 0 else "",
                    format_size(m.size),
                    f"{m.round_trips_per_s:,.0f}",
                    format_seconds(m.p50_us / 1e6, micro=micro),
                    format_seconds(m.p99_us / 1e6, micro=micro),
                    f"{m.mb_per_s:,.1f}",
                ]
            )
        if result.error:
            rows.append([result.target, "failed", "-", "-", "-", "-"])
    headers = ["TARGET", "SIZE", "ROUND TRIPS/S", "P50", "P99", "MB/S"]
    print(format_table(headers, rows, right="12345"))
    if rows:
        print(UNITS)
    installed = get_registry().backends()
    by_reference = sorted(
        {
            r.target
            for r in results
            if r.measurements
            and r.scheme in installed
            and Capability.IN_PROCESS in installed[r.scheme].capabilities
        }
    )
    if by_reference:
        print(
            f"({', '.join(by_reference)}: messages stay in this process and are passed by "
            "reference, so MB/s measures no copying)"
        )
    sys.stdout.flush()
