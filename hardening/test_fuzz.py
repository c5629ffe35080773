"""Fuzzing: the wire protocol's receive path and the address parsers get generated input.

Only comm's own errors may come out: never a hang, a crash, or another
exception type. comm-core's own tests already feed short random bytes to
the decoder; these go further: whole streams with plausible headers and
msgpack bodies (every extension type, nested), mutated, in random pieces;
the same mutations sent to live tcp and tls listeners; and the address
functions of every installed backend. ``--soak`` adds the coverage-guided
fuzzer (atheris) on the same targets.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import comm_core
from comm_core import PROTOCOL_VERSION, CommClosedError, ProtocolError, SerializationError
from comm_core.protocol import MAX_FRAMES, PREAMBLE, FrameDecoder, encode_message
from fuzz_targets import MAX_MESSAGE_SIZE, PROTOCOL_ERRORS, no_hang, parse_everything, receive
from support import Transport, record, serving, within

HERE = Path(__file__).parent
#: Longest a target may run on one input.
HANG = 5.0


def _examples(request: pytest.FixtureRequest, ci: int) -> settings:
    factor = 50 if request.config.getoption("--soak") else 1
    return settings(
        max_examples=ci * factor,
        deadline=None,  # no_hang() bounds each input instead
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=False,
    )


# -- strategies --------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)


def _ext(children: st.SearchStrategy[Any]) -> st.SearchStrategy[msgpack.ExtType]:
    """Extension values: comm's own codes with plausible or broken data, and others."""
    packed = children.map(lambda v: msgpack.packb(v, use_bin_type=True))
    return st.one_of(
        st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary()),
        st.builds(
            msgpack.ExtType,
            st.just(1),
            st.integers(min_value=0, max_value=2**32 - 1).map(lambda i: struct.pack("<I", i)),
        ),
        st.builds(msgpack.ExtType, st.sampled_from([2, 3, 4]), packed),
        st.builds(
            msgpack.ExtType,
            st.just(3),
            st.tuples(
                st.sampled_from(["pickle", "nope", ""]) | st.text(max_size=5),
                children,
                st.lists(st.integers(min_value=-2, max_value=5) | st.text(max_size=2)),
            ).map(lambda t: msgpack.packb(list(t), use_bin_type=True)),
        ),
    )


values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-(2**63), 2**63 - 1), children, max_size=5
        )
        | _ext(children)
    ),
    max_leaves=30,
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A byte stream as a peer might send it: the preamble, then messages whose headers
    may lie, then mutations; and the sizes of the pieces it arrives in."""
    parts = [PREAMBLE]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        body = msgpack.packb(draw(values), use_bin_type=True)
        extra = draw(st.lists(st.binary(max_size=64), max_size=3))
        frames = [body, *extra]
        count = draw(
            st.sampled_from([len(frames), 0, MAX_FRAMES + 1, 2**32 - 1]) | st.just(len(frames))
        )
        lengths = [len(f) for f in frames]
        if draw(st.booleans()):  # a lying length
            index = draw(st.integers(min_value=0, max_value=len(lengths) - 1))
            lengths[index] = draw(
                st.sampled_from([0, MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE + 1, 10**15, 2**64 - 1])
                | st.integers(min_value=0, max_value=200)
            )
        header = struct.pack("<I", count % 2**32) + b"".join(
            struct.pack("<Q", n) for n in lengths[: min(count, 16)]
        )
        parts.append(header + b"".join(frames))
    stream = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):  # flipped bytes
        if stream:
            at = draw(st.integers(min_value=0, max_value=len(stream) - 1))
            stream[at] = draw(st.integers(min_value=0, max_value=255))
    if draw(st.booleans()):  # cut short
        stream = stream[: draw(st.integers(min_value=0, max_value=len(stream)))]
    chunks = draw(st.lists(st.integers(min_value=1, max_value=64), max_size=20))
    return bytes(stream), chunks


# -- the receive path --------------------------------------------------------------------------


def test_receive_path_raises_only_protocol_errors(request: pytest.FixtureRequest) -> None:
    """Plausible, lying and mutated streams in random pieces: only comm's errors."""
    outcomes = {"messages": 0, "errors": 0, "streams": 0}

    @_examples(request, 400)
    @given(streams(), st.booleans())
    def check(case: tuple[bytes, list[int]], deserialize: bool) -> None:
        stream, chunks = case
        outcomes["streams"] += 1
        with no_hang(HANG):
            try:
                outcomes["messages"] += len(receive(stream, chunks, deserialize=deserialize))
            except PROTOCOL_ERRORS:
                outcomes["errors"] += 1

    check()
    record("fuzz.hypothesis.receive_streams", outcomes["streams"], "streams",
           messages_decoded=outcomes["messages"], refused=outcomes["errors"])  # fmt: skip


def test_valid_streams_decode_whole(request: pytest.FixtureRequest) -> None:
    """The generator is not all garbage: streams of valid messages decode to them."""

    @_examples(request, 100)
    @given(st.lists(values, min_size=1, max_size=4), st.integers(min_value=1, max_value=50))
    def check(msgs: list[Any], chunk: int) -> None:
        plain = [_plain(m) for m in msgs]
        stream = PREAMBLE + b"".join(
            b"".join(bytes(b) for b in encode_message(m)[0]) for m in plain
        )
        with no_hang(HANG):
            assert receive(stream, [chunk] * 1000) == plain

    check()


def _plain(value: Any) -> Any:
    """*value* without extension types (comm's encoder writes its own)."""
    if isinstance(value, msgpack.ExtType):
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return 0.0  # NaN != NaN
    return value


# -- the address parsers -----------------------------------------------------------------------

address_like = st.text() | st.builds(
    lambda scheme, host, port, rest: f"{scheme}{host}{port}{rest}",
    st.sampled_from(["", "tcp://", "tls://", "inproc://", "TCP://", "x+y://", "://", "tcp:/"]),
    st.text(alphabet="[]:.%0123456789abcdef-/@ ", max_size=40),
    st.sampled_from(["", ":", ":0", ":65535", ":65536", ":-1", ":8786", ":٣"]),
    st.text(max_size=5),
)


def test_address_parsers_raise_only_address_errors(request: pytest.FixtureRequest) -> None:
    count = {"addresses": 0}

    @_examples(request, 1000)
    @given(address_like)
    def check(text: str) -> None:
        count["addresses"] += 1
        with no_hang(HANG):
            parse_everything(text)

    check()
    record("fuzz.hypothesis.addresses", count["addresses"], "addresses")


# -- live listeners ----------------------------------------------------------------------------


def _mutated_streams(seed: int, count: int) -> list[bytes]:
    """*count* streams that follow a valid handshake: valid messages, then mutated."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        msg = {"op": "x", "data": rng.randbytes(rng.randrange(0, 300)), "n": rng.random()}
        if rng.random() < 0.3:
            msg["big"] = rng.randbytes(70_000)  # an out-of-band frame
        stream = bytearray(b"".join(bytes(b) for b in encode_message(msg)[0]))
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(stream))
            stream[at] = rng.randrange(256)
        if rng.random() < 0.3:
            del stream[rng.randrange(len(stream)) :]
        out.append(bytes(stream))
    return out


async def test_live_listeners_survive_mutated_messages(transport: Transport, scale: Any) -> None:
    """Mutated messages from a peer that completed the handshake: the server's read
    returns messages or raises ProtocolError / CommClosedError, nothing else, and the
    listener serves a good client afterwards."""
    count = scale.count(150)
    seen: dict[str, int] = {}
    failures: list[BaseException] = []

    async def reader(comm: comm_core.Comm) -> None:
        try:
            while True:
                try:
                    await comm.read()
                except SerializationError:  # one whole message refused; the comm goes on
                    seen["SerializationError"] = seen.get("SerializationError", 0) + 1
                    continue
                seen["message"] = seen.get("message", 0) + 1
        except (ProtocolError, CommClosedError) as exc:
            name = type(exc).__name__
            seen[name] = seen.get(name, 0) + 1
        except BaseException as exc:
            failures.append(exc)
            raise
        finally:
            comm.abort()

    [handshake], _ = encode_message({"protocol": PROTOCOL_VERSION})
    context = transport.client_context
    async with serving(transport, reader, handshake_timeout=5) as served:
        for stream in _mutated_streams(seed=hash(transport.scheme) & 0xFFFF, count=count):
            r, w = await asyncio.open_connection(
                "127.0.0.1",
                served.port,
                ssl=context,
                server_hostname="127.0.0.1" if context else None,
            )
            try:
                w.write(PREAMBLE + bytes(handshake))
                await within(_server_handshake(r), "the listener's handshake")
                w.write(stream)
                await w.drain()
                if w.can_write_eof():
                    w.write_eof()
                    # The server drops us, or closes after our EOF: read until then.
                    await within(r.read(), "the listener to end the connection")
                else:  # TLS: no half-close; close_notify, then the server's side ends
                    w.close()
                    await within(w.wait_closed(), "the TLS connection to close")
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()
        await within(_drained(served), "the handlers to end")
        async with await comm_core.connect(
            transport.address(served.port), **transport.args
        ) as comm:
            await comm.write("still serving")
    assert not failures, failures
    record("fuzz.live.mutated_streams", count, "streams", transport=transport.scheme,
           **dict(sorted(seen.items())))  # fmt: skip


async def _server_handshake(reader: asyncio.StreamReader) -> None:
    """Read the listener's preamble and handshake message."""
    got: list[Any] = []
    decoder = FrameDecoder(got.append, max_message_size=MAX_MESSAGE_SIZE)
    while not got:
        data = await reader.read(4096)
        if not data:
            raise ConnectionError("the listener closed before its handshake")
        decoder.feed(data)


async def _drained(served: Any) -> None:
    while served.tasks:
        await asyncio.wait(set(served.tasks))


# -- the coverage-guided fuzzer (long mode) ----------------------------------------------------


@pytest.mark.soak
def test_coverage_guided_fuzzer(scale: Any, tmp_path: Path) -> None:
    """atheris on the same targets, bounded by -max_total_time; any other exception, a
    hang (-timeout) or a crash fails it."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip(
            f"atheris is not installed for Python {sys.version.split()[0]} (it ships wheels "
            "for few Pythons; `nox -s hardening -- --soak` installs it where it can)"
        )
    seconds = int(scale.seconds(30))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_atheris.py"),
            str(corpus),
            f"-max_total_time={seconds}",
            "-timeout=10",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    tail = "\n".join(result.stderr.splitlines()[-30:])
    assert result.returncode == 0, tail
    runs = [line for line in result.stderr.splitlines() if "Done" in line and "runs" in line]
    executions = int(runs[-1].split("Done")[1].split("runs")[0]) if runs else 0
    record("fuzz.atheris.executions", executions, "inputs", seconds=seconds)
