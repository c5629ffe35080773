"""Every class of hostile input against live tcp, tls and ws listeners in a child process.

For each attack class of :mod:`hostile_msgpack` and each transport, a
listener runs in a process of its own (``listener_child.py``, an echo
handler) and the test, over raw sockets (inside a TLS session with valid
credentials, for tls; after a valid HTTP upgrade, each comm message in a WebSocket
message of its own, for ws), sends the class's bytes:

1. *before the handshake*: right after the preamble, as the first message;
2. *after a valid handshake*: once the listener has echoed a probe message.

After each attack the raw peer sends a probe message and waits for the
listener to drop it ("dropped"), to echo the probe ("served": the attack
was a valid message), or for its wait to end ("blocked": announced bytes
that never come, or a handler that does not read). Meanwhile a well-behaved
client (a comm in this process) makes round trips through the same
listener. Asserted for each class and phase:

* the child is alive throughout and exits with status 0 when told to: a
  death by any signal (SIGSEGV from a deep nesting) fails the test;
* the outcome is one the class allows (before the handshake: dropped,
  within the handshake timeout plus slack; after it: dropped or served
  within ``RESOLVE_BOUND``, or blocked where the class only announces);
* the child's peak resident memory (VmHWM, reset before each phase) grew at
  most by the class's bound (``MEMORY_PER_BYTE`` times what was sent, plus
  a bound per connection and ``LIVE_BASE``);
* the good client's p99 round trip stayed under ``max(GOOD_FACTOR x its
  p99 alone, GOOD_FLOOR + GOOD_PER_BYTE x the largest message)``, and its
  longest under ``STALL_FLOOR + GOOD_PER_BYTE x the largest message``;
* no pre-handshake attacker reached the handler, and the child logged no
  traceback.

A dialer faces the same payloads: ``test_dialer_survives_hostile_greetings``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import comm_core
from comm_core import PROTOCOL_VERSION, Comm
from hostile_msgpack import CLASSES, PREAMBLE, handshake, one_frame, string, tiny_messages
from support import KiB, MiB, Transport, linux_only, percentile, record, within

HERE = Path(__file__).parent

pytestmark = linux_only  # /proc/<pid>/status and clear_refs

#: The child listener's handshake timeout (seconds) and read_high_water (bytes).
HANDSHAKE_TIMEOUT = 1.0
READ_HIGH_WATER = 4 * MiB
#: Sizes of what is sent before and after the handshake (a first message: 64 KiB at most).
PRE_SIZE = 60 * KiB
POST_SIZE = 1 * MiB
#: How late after the handshake timeout a pre-handshake attacker may be dropped.
DROP_SLACK = 2.0
#: How long, after the handshake, an attack may take to be dropped or served.
RESOLVE_BOUND = 10.0
#: How long an attacker that announces bytes it never sends waits to be dropped.
BLOCK_WAIT = 1.0
#: The child's peak RSS may grow by MEMORY_PER_BYTE x bytes sent + PER_CONNECTION x
#: connections + LIVE_BASE (see test_hostile_decoding for the factor).
MEMORY_PER_BYTE = 64
PER_CONNECTION = {"tcp": 96 * KiB, "tls": 640 * KiB, "unix": 96 * KiB, "ws": 320 * KiB}
LIVE_BASE = 24 * MiB
#: A peer that announces bytes it does not send may cost at most this much more than a
#: peer that completed the handshake and sent nothing (measured once per transport).
CLAIM_ALLOWANCE = 32 * KiB
CLAIM_BASE = 8 * MiB
#: A flood against a handler that does not read may hold what read_high_water allows,
#: counted at the messages' real cost, with room for pausing late: this many times it.
FLOOD_FACTOR = 6
#: The good client's p99 under attack may be GOOD_FACTOR x its p99 alone, or GOOD_FLOOR
#: plus GOOD_PER_BYTE for each byte of the largest message sent: what the listener may
#: spend decoding it (the decoder's bound: 0.5 us a byte) and encoding its echo (comm's
#: encoder takes up to 1.5 us a byte for a body of small tuples, each through its hook).
GOOD_FACTOR = 20
GOOD_FLOOR = 0.1
GOOD_PER_BYTE = 2e-6
#: A p99 hides one long stall among many round trips: the longest round trip may take
#: at most STALL_FLOOR plus GOOD_PER_BYTE for each byte of the largest message.
STALL_FLOOR = 0.25
#: Messages of the tiny-message flood.
FLOOD_MESSAGES = 500_000


@dataclass(frozen=True)
class Expect:
    """What a class may do to a live listener."""

    #: Outcomes allowed before the handshake and after it.
    pre: frozenset[str] = frozenset({"dropped"})
    post: frozenset[str] = frozenset({"dropped"})
    #: Attacking connections before and after the handshake, each sending the payload.
    pre_connections: int = 1
    post_connections: int = 1
    #: The size hint after the handshake (bytes).
    post_size: int = POST_SIZE
    #: "size": memory bounded by what was sent; "flood": by read_high_water; "claim": by
    #: what a connection that sent nothing costs.
    memory: str = "size"
    #: Builds what is sent after the handshake, instead of the class's framed bytes.
    post_payload: Callable[[int], bytes] | None = None
    #: The largest single message sent after the handshake, if not the whole payload.
    post_message: int | None = None


DROP = frozenset({"dropped"})
DROP_OR_SERVE = frozenset({"dropped", "served"})
BLOCK = frozenset({"blocked", "dropped"})
#: Colliding keys: several handshakes at once (each stalls the listener in turn), and
#: 256 KiB after it (today a 1 MiB map takes a minute).
COLLIDE = {"pre_connections": 4, "post": DROP_OR_SERVE, "post_size": 256 * KiB}

EXPECT: dict[str, Expect] = {
    "deep-array": Expect(),
    "deep-map": Expect(),
    "deep-tuple": Expect(),
    "deep-custom": Expect(),
    "deep-tuple-key": Expect(),
    "deep-mixed": Expect(),
    "unserializable-doubling": Expect(post=DROP_OR_SERVE),
    "lying-lengths": Expect(),
    "hash-flood": Expect(**COLLIDE),  # type: ignore[arg-type]
    "hash-flood-mixed": Expect(**COLLIDE),  # type: ignore[arg-type]
    "empty-maps": Expect(post=DROP_OR_SERVE),
    "empty-arrays": Expect(post=DROP_OR_SERVE),
    "empty-tuples": Expect(post=DROP_OR_SERVE),
    "timestamp": Expect(post=DROP_OR_SERVE),
    "custom-families": Expect(post=DROP_OR_SERVE),
    # After the handshake: "hold" stops the handler reading, then a flood of {}.
    "tiny-messages": Expect(
        post=BLOCK,
        memory="flood",
        post_payload=lambda size: one_frame(string("hold")) + tiny_messages(FLOOD_MESSAGES),
        post_message=13,
    ),
    "many-frames": Expect(post=DROP_OR_SERVE),
    "handshake-padding": Expect(post=DROP_OR_SERVE, pre_connections=10, post_connections=4),
    "handshake-mix": Expect(post=DROP_OR_SERVE, post_size=256 * KiB),
    "frame-count-claim": Expect(
        post=BLOCK, pre_connections=100, post_connections=100, memory="claim"
    ),
    "frame-length-claim": Expect(
        post=BLOCK, pre_connections=100, post_connections=100, memory="claim"
    ),
}


def test_every_class_has_expectations() -> None:
    assert set(EXPECT) == set(CLASSES)


@pytest.fixture(params=["tcp", "tls", "ws"])
def transport(request: pytest.FixtureRequest) -> Transport:
    """Each test of this module runs over tcp, tls and ws (where comm-ws is installed)."""
    if request.param == "ws":
        pytest.importorskip("comm_ws", reason="comm-ws is not installed")
        return Transport("ws")
    if request.param == "tcp":
        return Transport("tcp")
    tls: Transport = request.getfixturevalue("tls_transport")
    return tls


# -- WebSocket framing, for a raw ws peer ------------------------------------------------------

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: %s\r\n\r\n"
)


def ws_request() -> bytes:
    """A valid upgrade request of comm's WebSocket subprotocol."""
    from comm_ws import SUBPROTOCOL

    return _UPGRADE % (base64.b64encode(os.urandom(16)), SUBPROTOCOL.encode())


def ws_response(request: bytes) -> bytes:
    """The listener's side: the 101 answer to *request*."""
    from comm_ws import SUBPROTOCOL

    key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.I)
    assert key is not None
    accept = base64.b64encode(hashlib.sha1(key[1] + _ACCEPT_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: "
        + SUBPROTOCOL.encode() + b"\r\n\r\n"
    )  # fmt: skip


def _ws_header(length: int, masked: bool) -> bytes:
    bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", 0x82, bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x82, bit | 126, length)
    else:
        header = struct.pack("!BBQ", 0x82, bit | 127, length)
    return header + (b"\0\0\0\0" if masked else b"")  # a zero mask key: the bytes as they are


def ws_messages(stream: bytes, *, masked: bool = True) -> bytes:
    """*stream*, comm messages as a stream transport carries them, as WebSocket messages:
    one binary message per comm message. A message the stream breaks off (a claim of
    bytes never sent) becomes a frame that announces the whole message and carries what
    the stream has of it."""
    out = []
    view = memoryview(stream)
    pos = 0
    while pos < len(view):
        rest = len(view) - pos
        if rest < 4:
            out += [_ws_header(4, masked), view[pos:]]
            break
        (count,) = struct.unpack_from("<I", view, pos)
        head = 4 + 8 * count
        if rest < head:
            out += [_ws_header(head, masked), view[pos:]]
            break
        lengths = struct.unpack_from(f"<{count}Q", view, pos + 4) if count else ()
        size = head + sum(lengths)
        out += [_ws_header(size, masked), view[pos : pos + min(size, rest)]]
        pos += size
    return b"".join(out)


# -- the listener child ----------------------------------------------------------------------


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    #: The listener's contact address.
    address: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in bytes (the process must be alive)."""
        out = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def reset_peak(self) -> int:
        """Reset VmHWM to the current RSS (Linux's clear_refs 5); return that RSS."""
        with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return self.memory()["VmRSS"]

    def death(self) -> str | None:
        """Why the child is gone, or None while it runs."""
        code = self.proc.returncode
        if code is None:
            return None
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        return f"the listener child {how}; its stderr ends:\n{self.stderr_tail()}"

    def stderr_tail(self, lines: int = 12) -> str:
        text = self.stderr_path.read_text(errors="replace").splitlines()
        crash = [i for i, line in enumerate(text) if line.startswith("Fatal Python error")]
        start = crash[0] if crash else max(0, len(text) - lines)
        return "\n".join(text[start : start + lines])


def _credentials(transport: Transport, path: Path) -> list[str]:
    security = transport.args.get("security")
    if security is None:
        return []
    path.write_text(json.dumps({"ca": security.ca, "cert": security.cert, "key": security.key}))
    return ["--credentials", str(path)]


@contextlib.asynccontextmanager
async def listener_child(transport: Transport, tmp_path: Path) -> AsyncIterator[Child]:
    stderr_path = tmp_path / f"child-{transport.scheme}.txt"
    with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "listener_child.py"),
            transport.scheme,
            "--handshake-timeout",
            str(HANDSHAKE_TIMEOUT),
            "--read-high-water",
            str(READ_HIGH_WATER),
            *_credentials(transport, tmp_path / "creds.json"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    child = None
    try:
        assert proc.stdout is not None
        line = await within(proc.stdout.readline(), "the listener child to start")
        child = Child(proc, json.loads(line)["address"], stderr_path)
        yield child
    finally:
        if proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        else:
            await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.read()


# -- the good client ---------------------------------------------------------------------------


class GoodClient:
    """Round trips through the listener for as long as it runs (bounded in count)."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self.times: list[float] = []
        self.error: BaseException | None = None
        self._stop = False
        self._task: asyncio.Task[None] | None = None
        self._progress = asyncio.Event()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for i in range(2_000_000):
                if self._stop:
                    return
                msg = {"i": i, "p": "ping"}
                start = loop.time()
                await self.comm.write(msg)
                reply = await self.comm.read()
                self.times.append(loop.time() - start)
                assert reply == msg, reply
                self._progress.set()
        except Exception as exc:
            self.error = exc
            self._progress.set()

    def start(self) -> None:
        self.times, self._stop = [], False
        self._task = asyncio.ensure_future(self._run())

    @property
    def running(self) -> bool:
        return self._task is not None

    async def more(self, count: int, what: str) -> None:
        """Wait for *count* more round trips (the listener handled what came before)."""
        target = len(self.times) + count
        while len(self.times) < target and self.error is None:
            self._progress.clear()
            await within(self._progress.wait(), f"{what}: the good client's round trips", 60)
        if self.error is not None:
            raise AssertionError(f"{what}: the good client failed: {self.error!r}")

    async def stop(self) -> list[float]:
        self._stop = True
        assert self._task is not None
        await within(self._task, "the good client to stop", 60)
        self._task = None
        if self.error is not None:
            raise AssertionError(f"the good client failed: {self.error!r}") from self.error
        return self.times

    async def ask(self, msg: Any) -> Any:
        await self.comm.write(msg)
        return await within(self.comm.read(), "the listener's answer")


# -- the hostile peer --------------------------------------------------------------------------


async def _read_until(
    reader: asyncio.StreamReader, marker: bytes, timeout: float
) -> tuple[str, int]:
    """Read until *marker* arrives ("found"), the listener ends the connection ("eof",
    "reset") or *timeout* passes ("timeout"); also return the bytes read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    tail = b""
    total = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return "timeout", total
        try:
            data = await asyncio.wait_for(reader.read(1 << 16), remaining)
        except asyncio.TimeoutError:
            return "timeout", total
        except (ConnectionError, OSError):
            return "reset", total
        if not data:
            return "eof", total
        total += len(data)
        window = tail + data
        if marker in window:
            return "found", total
        tail = window[-len(marker) :]


class Attacker:
    """One raw connection that sends a class's bytes and sees what the listener does."""

    def __init__(self, address: str, tls: Any, nonce: str, ws: bool = False) -> None:
        self.address = address
        self.tls = tls
        self.ws = ws
        self.nonce = nonce
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.sender: asyncio.Future[None] | None = None
        self.how = ""
        self.seconds = 0.0
        self.sent = 0

    def _probe(self, index: int) -> bytes:
        return one_frame(string(f"probe-{self.nonce}-{index}"))

    async def open(self, after_handshake: bool) -> None:
        scheme, _, loc = self.address.partition("://")
        if scheme == "unix":  # a socket path
            self.reader, self.writer = await asyncio.open_unix_connection(loc)
        else:
            self.reader, self.writer = await asyncio.open_connection(
                "127.0.0.1",
                int(loc.rpartition(":")[2]),
                ssl=self.tls,
                server_hostname="127.0.0.1" if self.tls else None,
            )
        start = PREAMBLE
        if self.ws:
            self.writer.write(ws_request())
            head = await within(self.reader.readuntil(b"\r\n\r\n"), "the HTTP upgrade")
            assert head.startswith(b"HTTP/1.1 101 "), head
            start = b""
        if not after_handshake:
            self.writer.write(start)
            return
        probe = self._probe(0)
        self.writer.write(start + self._wrap(one_frame(handshake(PROTOCOL_VERSION)) + probe))
        how, _ = await _read_until(self.reader, probe, RESOLVE_BOUND)
        if how != "found":
            raise AssertionError(f"the listener did not accept a valid handshake ({how})")

    def send(self, payload: bytes) -> None:
        """Send *payload* (already wrapped for ws: see :meth:`wrap`), then the probe."""
        assert self.writer is not None
        data = payload + self._wrap(self._probe(1))
        self.sent = len(data)
        self._start = asyncio.get_running_loop().time()
        self.writer.write(data)
        self.sender = asyncio.ensure_future(self.writer.drain())

    def _wrap(self, stream: bytes) -> bytes:
        return self.wrap(stream, self.ws)

    @staticmethod
    def wrap(stream: bytes, ws: bool) -> bytes:
        """*stream* as this transport carries it: as it is, or in WebSocket messages (a
        message that the stream breaks off swallows what follows, as on a stream)."""
        return ws_messages(stream) if ws else stream

    async def outcome(self, wait: float) -> str:
        assert self.reader is not None
        how, _ = await _read_until(self.reader, self._probe(1), wait)
        self.seconds = asyncio.get_running_loop().time() - self._start
        self.how = {"found": "served", "timeout": "blocked"}.get(how, "dropped")
        return self.how

    async def close(self) -> None:
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(BaseException):
                await self.sender
        if self.writer is not None:
            self.writer.transport.abort()


# -- one phase ---------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    outcomes: list[str] = field(default_factory=list)
    #: Each attacker's seconds from sending to its outcome (its wait, if blocked).
    outcome_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    peak_growth: int = 0
    sent: int = 0
    good: list[float] = field(default_factory=list)


async def run_phase(
    child: Child,
    good: GoodClient,
    transport: Transport,
    payload: bytes,
    *,
    after_handshake: bool,
    connections: int,
    wait: float,
) -> Phase:
    """Open *connections* attackers, then (with the good client timing) send *payload* on
    each and wait up to *wait* for their outcomes; measure the child's peak memory."""
    phase = Phase("after" if after_handshake else "before")
    base = child.reset_peak()
    loop = asyncio.get_running_loop()
    ws = transport.scheme == "ws"
    payload = Attacker.wrap(payload, ws)  # before the good client times anything
    attackers = [
        Attacker(child.address, transport.client_context, f"{i}", ws) for i in range(connections)
    ]
    start = loop.time()
    try:
        # Connections (and TLS handshakes) first: the good client times the attack itself.
        await within(
            asyncio.gather(*(a.open(after_handshake) for a in attackers)),
            "the attackers to connect",
            60,
        )
        good.start()
        await good.more(1, "before the attack")
        for attacker in attackers:
            attacker.send(payload)
        phase.outcomes = await within(
            asyncio.gather(*(a.outcome(wait) for a in attackers)), "the outcomes", wait + 60
        )
        # The listener has handled every byte sent before these round trips.
        await good.more(3, f"{phase.name} the handshake")
        phase.seconds = loop.time() - start
        phase.peak_growth = child.memory()["VmHWM"] - base
    finally:
        await asyncio.gather(*(a.close() for a in attackers))
        if good.running:
            phase.good = await good.stop()
    phase.sent = sum(a.sent for a in attackers)
    phase.outcome_seconds = [a.seconds for a in attackers]
    return phase


#: What connections that completed the handshake and sent nothing cost, by transport
#: (peak RSS growth of a fresh child for CLAIM_CONNECTIONS of them), measured once.
_BASELINES: dict[str, int] = {}
CLAIM_CONNECTIONS = 100


async def connection_baseline(transport: Transport, tmp_path: Path) -> int:
    if transport.scheme not in _BASELINES:
        async with listener_child(transport, tmp_path) as child:
            comm = await comm_core.connect(child.address, timeout=20, **transport.args)
            try:
                good = GoodClient(comm)
                good.start()
                await good.more(200, "warming up")
                await good.stop()
                phase = await run_phase(
                    child, good, transport, b"", after_handshake=True,
                    connections=CLAIM_CONNECTIONS, wait=RESOLVE_BOUND,
                )  # fmt: skip
            finally:
                await comm.close()
        assert set(phase.outcomes) == {"served"}, phase.outcomes
        _BASELINES[transport.scheme] = phase.peak_growth
        record("live.baseline.child_peak_rss_growth", round(phase.peak_growth / MiB, 1), "MiB",
               transport=transport.scheme, connections=CLAIM_CONNECTIONS)  # fmt: skip
    return _BASELINES[transport.scheme]


def memory_bound(expect: Expect, phase: Phase, connections: int, scheme: str) -> int:
    if expect.memory == "flood" and phase.name == "after":
        return FLOOD_FACTOR * READ_HIGH_WATER + LIVE_BASE
    if expect.memory == "claim":
        assert connections == CLAIM_CONNECTIONS
        return _BASELINES[scheme] + CLAIM_ALLOWANCE * connections + CLAIM_BASE
    return MEMORY_PER_BYTE * phase.sent + PER_CONNECTION[scheme] * connections + LIVE_BASE


def good_bound(base_p99: float, largest_message: int) -> float:
    return max(GOOD_FACTOR * base_p99, GOOD_FLOOR + GOOD_PER_BYTE * largest_message)


@pytest.fixture(params=["tcp", "tls", "unix", "ws"])
def live_transport(request: pytest.FixtureRequest) -> Transport:
    """The transports of the rest of the suite (tcp, tls), unix (a socket path in a
    private directory) where comm-unix is installed, and ws where comm-ws is."""
    if request.param == "ws":
        pytest.importorskip("comm_ws", reason="comm-ws is not installed")
        return Transport("ws")
    if request.param == "unix":
        if importlib.util.find_spec("comm_unix") is None:
            pytest.skip("comm-unix is not installed")
        return Transport("unix")
    if request.param == "tls":
        tls: Transport = request.getfixturevalue("tls_transport")
        return tls
    return Transport("tcp")


@pytest.mark.parametrize("name", list(CLASSES))
async def test_live_listener_survives(
    name: str, live_transport: Transport, scale: Any, tmp_path: Path
) -> None:
    """One class, before and after the handshake, against a listener in a child process
    with a good client making round trips throughout (see the module docstring)."""
    attack = CLASSES[name]
    expect = EXPECT[name]
    transport = live_transport
    scheme = transport.scheme
    if expect.memory == "claim":
        (tmp_path / "baseline").mkdir()
        await connection_baseline(transport, tmp_path / "baseline")
    problems: list[str] = []
    async with listener_child(transport, tmp_path) as child:
        comm = await comm_core.connect(child.address, timeout=20, **transport.args)
        good = GoodClient(comm)
        try:
            good.start()
            await good.more(200, "warming up")
            base_p99 = percentile(await good.stop(), 99)
            for after in (False, True):
                where = "after the handshake" if after else "before the handshake"
                if after:
                    size = expect.post_size * (4 if scale.soak else 1)
                    payload = (expect.post_payload or attack.framed)(size)
                    allowed, connections = expect.post, expect.post_connections
                    wait = BLOCK_WAIT if "blocked" in allowed else RESOLVE_BOUND
                    largest = expect.post_message or len(payload)
                else:
                    payload = attack.framed(PRE_SIZE)
                    allowed, connections = expect.pre, expect.pre_connections
                    wait = HANDSHAKE_TIMEOUT + DROP_SLACK
                    largest = len(payload)
                try:
                    phase = await run_phase(
                        child, good, transport, payload, after_handshake=after,
                        connections=connections, wait=wait,
                    )  # fmt: skip
                except AssertionError as exc:  # a death is reported once the child is reaped
                    problems.append(f"{where}: {child.death() or exc}")
                    break
                if not phase.good:
                    problems.append(f"{where}: no round trip of the good client was timed")
                    break
                _judge(phase, where, allowed, problems)
                bound = memory_bound(expect, phase, connections, scheme)
                if phase.peak_growth > bound:
                    problems.append(
                        f"{where}: the child's peak RSS grew by {phase.peak_growth / MiB:.1f} "
                        f"MiB (bound {bound / MiB:.1f} MiB for {phase.sent:,} bytes over "
                        f"{connections} connection(s))"
                    )
                p99, limit = percentile(phase.good, 99), good_bound(base_p99, largest)
                if p99 > limit:
                    problems.append(
                        f"{where}: the good client's p99 was {p99 * 1e3:.1f} ms "
                        f"({len(phase.good)} round trips; bound {limit * 1e3:.0f} ms)"
                    )
                longest, stall = max(phase.good), STALL_FLOOR + GOOD_PER_BYTE * largest
                if longest > stall:
                    problems.append(
                        f"{where}: a round trip of the good client took {longest * 1e3:.1f} ms "
                        f"(bound {stall * 1e3:.0f} ms)"
                    )
                if not after:
                    stats = await good.ask({"op": "stats"})
                    if stats.get("comms", 0) != 1:
                        problems.append(
                            f"{where}: {stats.get('comms', 0) - 1} hostile peer(s) reached "
                            f"the handler ({stats})"
                        )
                _record(name, scheme, phase, base_p99)
        finally:
            with contextlib.suppress(Exception):
                await comm.close()
    if child.proc.returncode != 0 and not any("listener child" in p for p in problems):
        problems.append(f"at exit: {child.death()}")
    log = child.stderr_path.read_text(errors="replace")
    for marker in ("Traceback", "never retrieved"):
        if marker in log:
            at = log.index(marker)
            problems.append(f"the child logged {marker!r}:\n{log[max(0, at - 300) : at + 700]}")
            break
    if problems:
        pytest.fail(f"{name} ({attack.summary}) over {scheme}:\n  " + "\n  ".join(problems))


def _judge(phase: Phase, where: str, allowed: frozenset[str], problems: list[str]) -> None:
    counts = {o: phase.outcomes.count(o) for o in sorted(set(phase.outcomes))}
    bad = [o for o in counts if o not in allowed]
    if bad:
        problems.append(f"{where}: outcomes {counts} (allowed: {sorted(allowed)})")


def _record(name: str, scheme: str, phase: Phase, base_p99: float) -> None:
    where = {"transport": scheme, "phase": phase.name}
    outcomes = ",".join(sorted(set(phase.outcomes)))
    record(f"live.{name}.{phase.name}.seconds", round(phase.seconds, 3), "s", **where,
           outcome=outcomes, connections=len(phase.outcomes), bytes_sent=phase.sent,
           slowest_outcome_s=round(max(phase.outcome_seconds, default=0), 3))  # fmt: skip
    record(f"live.{name}.{phase.name}.child_peak_rss_growth",
           round(phase.peak_growth / MiB, 1), "MiB", **where)  # fmt: skip
    if phase.good:
        record(f"live.{name}.{phase.name}.good_p99",
               round(percentile(phase.good, 99) * 1e3, 2), "ms", **where,
               round_trips=len(phase.good), alone_p99_ms=round(base_p99 * 1e3, 3),
               longest_ms=round(max(phase.good) * 1e3, 2))  # fmt: skip


# -- a dialer greeted by a hostile endpoint ---------------------------------------------------


#: The classes a hostile endpoint greets a dialer with (after its preamble).
GREETINGS = [n for n in CLASSES if n not in {"frame-count-claim", "frame-length-claim"}]


async def test_dialer_survives_hostile_greetings(transport: Transport, tmp_path: Path) -> None:
    """``comm_core.connect()`` in a child process, against an endpoint (this process) that
    answers each dial with the preamble and one class's bytes (60 KiB): the child lives,
    and each connect fails within its handshake timeout with a comm error that is an
    ``OSError`` (the contract of connect failures)."""
    security = transport.args.get("security")

    ws = transport.scheme == "ws"

    def greeter(payload: bytes) -> Callable[[Any, Any], Any]:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if ws:  # answer the upgrade, then the class's bytes as WebSocket messages
                with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
                    request = await reader.readuntil(b"\r\n\r\n")
                    writer.write(ws_response(request) + ws_messages(payload, masked=False))
            else:
                writer.write(payload)
            with contextlib.suppress(ConnectionError, OSError):
                await reader.read()  # until the dialer gives up
            writer.transport.abort()

        return greet

    servers = [
        await asyncio.start_server(
            greeter((b"" if ws else PREAMBLE) + CLASSES[name].framed(PRE_SIZE)),
            "127.0.0.1",
            0,
            ssl=security.server_context if security else None,
        )
        for name in GREETINGS
    ]
    ports = ",".join(str(server.sockets[0].getsockname()[1]) for server in servers)
    stderr_path = tmp_path / "dialer.txt"
    try:
        with open(stderr_path, "wb") as stderr:  # noqa: ASYNC230 (a local file)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(HERE / "listener_child.py"), transport.scheme,
                "--dial", ports, "--handshake-timeout", str(HANDSHAKE_TIMEOUT),
                *_credentials(transport, tmp_path / "creds.json"),
                stdout=asyncio.subprocess.PIPE, stderr=stderr,
            )  # fmt: skip
        assert proc.stdout is not None
        output = await within(proc.stdout.read(), "the dialer's outcomes", 120)
        code = await within(proc.wait(), "the dialer to exit")
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
    results = [json.loads(line) for line in output.splitlines()]
    problems = []
    for name, result in zip(GREETINGS, results, strict=False):  # fewer if it died
        if not (result["comm_error"] and result["oserror"]):
            problems.append(f"{name}: connect() raised {result['type']}: {result['error']}")
        if result["seconds"] > HANDSHAKE_TIMEOUT + DROP_SLACK:
            problems.append(f"{name}: connect() took {result['seconds']:.2f}s")
        record(f"dial.{name}.seconds", round(result["seconds"], 3), "s",
               transport=transport.scheme, raised=result["type"])  # fmt: skip
    if code != 0:
        died = GREETINGS[len(results)] if len(results) < len(GREETINGS) else "?"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        text = stderr_path.read_text(errors="replace")
        problems.insert(0, f"the dialer died ({how}) greeted with {died}:\n{text[:1500]}")
    if problems:
        pytest.fail(f"dialing over {transport.scheme}:\n  " + "\n  ".join(problems))
