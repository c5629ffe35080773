"""``comm ping ADDRESS``: round trips to an echo listener, timed, as ``ping`` does."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import comm_core
from comm_core._registry import get_registry
from comm_core._text import peer_text
from comm_core.abc import Comm
from comm_core.cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    about,
    backend_for,
    describe_backend_error,
    non_negative_float,
    positive_float,
    positive_int,
    print_error,
    refused,
    size,
    stop_on_signals,
)
from comm_core.cli._plugins import connection_args
from comm_core.exceptions import (
    CommClosedError,
    CommError,
    ConnectError,
    HostNotFoundError,
    ProtocolError,
)

__all__ = ["add_parser", "load_plugins", "percentile", "run"]

DESCRIPTION = """\
Connect to ADDRESS, a listener that sends messages back (`comm serve`), and send
it a message every INTERVAL seconds; print each round-trip time, and a summary
when done (after COUNT messages, or on Ctrl-C).

examples:
  comm ping tcp://127.0.0.1:8786 -c 3
  comm ping tcp://127.0.0.1:8786 -i 0.01 -s 1MiB
"""

EPILOG = """\
exit status:
  0    at least one reply was received (Ctrl-C once connected ends the pings, prints
       the summary and exits with this status or 1)
  1    no reply, or the connection could not be made or was lost
  2    other errors: usage, a malformed address, an unknown scheme, options that the
       transport cannot use
  130  interrupted by Ctrl-C before the connection was made
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ping",
        help="time round trips to an echo listener",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDRESS", help="the listener, such as tcp://host:8786")
    parser.add_argument(
        "-c",
        "--count",
        type=positive_int,
        metavar="COUNT",
        help="stop after COUNT messages (default: until Ctrl-C)",
    )
    parser.add_argument(
        "-i",
        "--interval",
        type=non_negative_float,
        default=1.0,
        metavar="INTERVAL",
        help="seconds between two messages (default: %(default)s)",
    )
    parser.add_argument(
        "-s",
        "--size",
        type=size,
        default=64,
        metavar="SIZE",
        help="bytes of payload in each message, such as 64 or 1MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="T",
        help="seconds to connect (retrying while refused), and to wait for each reply "
        "(default: %(default)s)",
    )
    parser.set_defaults(run=run)
    return parser


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of non-empty *sorted_values*."""
    rank = max(math.ceil(fraction * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def run(args: argparse.Namespace) -> int:
    import asyncio  # here: `comm backends` and `comm --help` need no event loop

    address, _, backend = backend_for(args.address)
    connect_args = connection_args(args, backend, server_side=False)
    load_plugins()
    try:
        return asyncio.run(_ping(address, args, connect_args))
    except KeyboardInterrupt:  # where the event loop cannot handle signals (Windows)
        print_error("interrupted")
        return EXIT_INTERRUPTED


def load_plugins() -> None:
    """Load what the plugins give now, so that no connect or round trip is timed with it:
    the serializer families, which a comm otherwise asks for on its first write.

    Raises:
        CLIError: a plugin is broken, or two clash.
    """
    try:
        get_registry().serializer_families()
    except CommError as exc:
        raise CLIError(describe_backend_error(exc)) from exc


class _Pinger:
    """Sends numbered messages and matches the replies that a reader task queues."""

    def __init__(self, comm: Comm, address: str, args: argparse.Namespace) -> None:
        import asyncio

        self.comm = comm
        self.address = address
        self.args = args
        self.events: asyncio.Queue[tuple[str, Any, int]] = asyncio.Queue()
        self.pending: dict[int, int] = {}  # seq -> time sent (ns)
        self.rtts: list[float] = []  # seconds
        self.sent = 0
        self.stopping = False
        self.lost: BaseException | None = None
        self.payload = b"\x00" * args.size

    async def read_replies(self) -> None:
        try:
            while True:
                msg = await self.comm.read()
                now = time.perf_counter_ns()
                seq = msg.get("seq") if isinstance(msg, dict) else None
                self.events.put_nowait(("reply", seq, now))
        except CommError as exc:  # closed, or the peer broke the protocol
            self.events.put_nowait(("closed", exc, 0))

    def stop(self) -> None:
        self.events.put_nowait(("stop", None, 0))

    async def next_event(self, deadline: float) -> tuple[str, Any, int] | None:
        """The next event before *deadline* (``time.monotonic()``), or ``None``."""
        import asyncio

        remaining = deadline - time.monotonic()
        if self.events.empty() and remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.events.get(), max(remaining, 0))
        except (TimeoutError, asyncio.TimeoutError):
            return None

    def handle(self, event: tuple[str, Any, int]) -> None:
        kind, value, when = event
        if kind == "stop":
            self.stopping = True
        elif kind == "closed":
            if not self.stopping:
                self.lost = value
        elif isinstance(value, int) and value in self.pending:
            rtt = (when - self.pending.pop(value)) / 1e9
            self.rtts.append(rtt)
            print(
                f"{self.args.size} bytes from {self.address}: seq={value} time={rtt * 1e3:.3f} ms",
                flush=True,
            )

    async def run(self) -> None:
        args = self.args
        seq = 0
        while not self.stopping and self.lost is None:
            seq += 1
            sent_at = time.monotonic()
            self.pending[seq] = time.perf_counter_ns()
            try:
                await self.comm.write({"op": "ping", "seq": seq, "payload": self.payload})
            except CommError as exc:
                self.pending.pop(seq)
                self.lost = exc
                break
            self.sent += 1
            reply_deadline = sent_at + args.timeout
            while seq in self.pending and not self.stopping and self.lost is None:
                event = await self.next_event(reply_deadline)
                if event is None:
                    del self.pending[seq]
                    print(f"no reply for seq={seq} within {args.timeout:g} s", flush=True)
                    break
                self.handle(event)
            if args.count is not None and seq >= args.count:
                break
            next_send = sent_at + args.interval
            while not self.stopping and self.lost is None:
                event = await self.next_event(next_send)
                if event is None:
                    break
                self.handle(event)

    def summary(self, elapsed: float) -> None:
        """Print the statistics: *received* counts the replies printed; a message whose
        reply was still awaited when Ctrl-C came counts as sent, not as lost."""
        received = len(self.rtts)
        unanswered = len(self.pending)  # awaited when stopped: neither received nor lost
        due = self.sent - unanswered
        loss = 100.0 * (due - received) / due if due else 0.0
        stopped = f", {unanswered} awaiting a reply when stopped" if unanswered else ""
        print(f"--- {self.address} comm ping statistics ---")
        print(
            f"{self.sent} sent, {received} received, {loss:.1f}% lost{stopped}, "
            f"time {elapsed * 1e3:.0f} ms"
        )
        if received:
            ordered = sorted(self.rtts)
            values = [
                ordered[0],
                sum(ordered) / received,
                percentile(ordered, 0.99),
                ordered[-1],
            ]
            print("rtt min/avg/p99/max = " + "/".join(f"{v * 1e3:.3f}" for v in values) + " ms")
        print(end="", flush=True)


async def _ping(address: str, args: argparse.Namespace, connect_args: dict[str, Any]) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    connecting = loop.create_task(_connect(address, args, connect_args))
    pinger: _Pinger | None = None
    interrupted = False

    def on_signal() -> None:  # Ctrl-C, SIGTERM: stop connecting, or stop pinging
        nonlocal interrupted
        if pinger is not None:
            pinger.stop()
        else:
            interrupted = True
            connecting.cancel()

    with stop_on_signals(loop, on_signal):
        try:
            comm = await connecting
        except asyncio.CancelledError:
            if not interrupted:
                raise
            if sys.stderr.isatty():
                print(file=sys.stderr)  # past the ^C the terminal echoed
            print_error(f"interrupted while connecting to {address}")
            return EXIT_INTERRUPTED
        if comm is None:
            return EXIT_FAILURE
        if interrupted:  # Ctrl-C came as the connect completed
            comm.abort()
            print_error(f"interrupted while connecting to {address}")
            return EXIT_INTERRUPTED
        pinger = _Pinger(comm, address, args)
        reader = loop.create_task(pinger.read_replies())
        start = time.perf_counter()
        try:
            await pinger.run()
        finally:
            await comm.close()
            await reader
    elapsed = time.perf_counter() - start
    pinger.summary(elapsed)
    if pinger.lost is not None:
        print_error(f"connection to {address} lost: {pinger.lost}")
        return EXIT_FAILURE
    return EXIT_OK if pinger.rtts else EXIT_FAILURE


async def _connect(
    address: str, args: argparse.Namespace, connect_args: dict[str, Any]
) -> Comm | None:
    """The comm to *address*, after printing the PING line; ``None`` (the error printed)
    if it cannot be made."""
    start = time.perf_counter()
    try:
        comm = await comm_core.connect(address, timeout=args.timeout, **connect_args)
    except (ConnectError, CommClosedError, ProtocolError) as exc:
        # ConnectTimeoutError, a rejection by an encrypted transport (FatalCommClosedError),
        # a failed handshake, a host name that does not resolve
        message = about(address, exc, "cannot connect to")
        if refused(exc):
            message += (
                f"; connection refused: is a listener running there? `comm serve {address}` "
                "starts one"
            )
        elif not isinstance(exc, HostNotFoundError):  # its message says what to check
            message += f"; `comm doctor {address}` (with the same options) checks each step"
        print_error(message)
        return None
    connected = time.perf_counter() - start
    info = comm.handshake_info
    print(
        f"PING {address}: {args.size} bytes of payload; connected in {connected * 1e3:.3f} ms "
        f"to {peer_text(info.get('library', '?'), 60, bare=True)} "
        f"{peer_text(info.get('version', '?'), 60, bare=True)}",
        flush=True,
    )
    return comm
