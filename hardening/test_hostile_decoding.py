"""Every class of hostile input through the receive path, in a child process, bounded.

Each attack class of :mod:`hostile_msgpack` is fed to a ``FrameDecoder``
and a ``Decoder`` (as ``fuzz_targets.receive`` does) in a child process
(:mod:`decode_worker`): deep nesting can overflow the C stack, and a
segfault must fail a test, not end the run. For each class, as the first
message of a connection (the handshake: 60 KiB, under the 64 KiB
first-message limit) and after it (up to 4 MiB), with and without
deserialization, whole and in 1,500-byte pieces:

* only comm's errors come out (``ProtocolError``, with
  ``MessageTooLargeError``, and ``SerializationError``);
* decoding a stream of N bytes takes at most ``TIME_PER_BYTE * N +
  TIME_BASE`` (the child gives up at four times that: a hang);
* the memory traced while decoding peaks at most at ``MEMORY_PER_BYTE * N
  + MEMORY_BASE``;
* a header that announces more than has arrived (65,536 frames, a frame of
  1 MiB - 1 bytes) holds at most ``HELD_BASE`` plus twice what arrived.

Hypothesis then mixes the classes (:func:`hostile_msgpack.streams`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from comm_core.protocol import MAX_FIRST_MESSAGE
from decode_worker import DecodeWorker, Result
from hostile_msgpack import CLASSES, PREAMBLE, streams
from support import KiB, MiB, record

#: Decoding N bytes may take TIME_PER_BYTE * N + TIME_BASE seconds. msgpack itself
#: makes about 4 million small objects a second (0.25 us per byte of a body of empty
#: maps): half a microsecond per byte leaves room for a busy machine, not for a
#: quadratic decode (colliding keys cost 2-9 us per byte at 60 KiB-1 MiB).
TIME_PER_BYTE = 0.5e-6
TIME_BASE = 0.02
#: Traced memory while decoding N bytes may peak at MEMORY_PER_BYTE * N + MEMORY_BASE.
#: Legitimate bodies stay below it (a list of small ints: 8 bytes per byte; one-char
#: non-Latin-1 strings: 28); an empty map is one byte that decodes to a 64-byte dict.
MEMORY_PER_BYTE = 32
MEMORY_BASE = 1 * MiB
#: A decoder waiting for the rest of a message may hold this much more than twice
#: what it received.
HELD_BASE = 32 * KiB
#: What the suite sends before a handshake (a first message is limited to 64 KiB).
PRE_SIZE = 60 * KiB
#: What it sends after a handshake, by class (1 MiB for the others).
POST_SIZES = {"empty-maps": 4 * MiB, "empty-arrays": 4 * MiB}
#: Classes that only announce a message and never send it.
CLAIMS = {"frame-count-claim", "frame-length-claim"}


@pytest.fixture(scope="session")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecodeWorker]:
    decode_worker = DecodeWorker(tmp_path_factory.mktemp("decode") / "stderr.txt")
    decode_worker.start()
    try:
        yield decode_worker
    finally:
        decode_worker.close()


def time_bound(size: int) -> float:
    return TIME_PER_BYTE * size + TIME_BASE


def _check(result: Result, what: str, size: int, problems: list[str]) -> None:
    if not result.comm_error_or_ok:
        problems.append(f"{what}: {result.describe()}")
    if result.seconds is not None and result.seconds > time_bound(size):
        problems.append(
            f"{what}: took {result.seconds:.3f}s for {size:,} bytes "
            f"(bound {time_bound(size):.3f}s: {TIME_PER_BYTE * 1e6:g} us/byte + {TIME_BASE}s)"
        )
    if result.peak is not None and result.peak > MEMORY_PER_BYTE * size + MEMORY_BASE:
        problems.append(
            f"{what}: traced memory peaked at {result.peak / MiB:.1f} MiB for {size:,} bytes "
            f"({result.peak / size:.0f} bytes per byte; bound {MEMORY_PER_BYTE} per byte "
            f"+ {MEMORY_BASE // MiB} MiB)"
        )


@pytest.mark.parametrize("phase", ["handshake", "after"])
@pytest.mark.parametrize("name", list(CLASSES))
def test_each_class_decodes_within_bounds(
    name: str, phase: str, worker: DecodeWorker, scale: Any
) -> None:
    """One class as the first message (with the 64 KiB first-message limit) or after
    it: only comm's errors, time linear in the size, memory a bounded multiple of it."""
    attack = CLASSES[name]
    first = phase == "handshake"
    size = PRE_SIZE if first else POST_SIZES.get(name, MiB) * (4 if scale.soak else 1)
    stream = PREAMBLE + attack.framed(size)
    n = len(stream)
    alarm = max(2.0, 4 * time_bound(n))
    limit = MAX_FIRST_MESSAGE if first else None
    problems: list[str] = []
    whole = worker.run(stream, first_message_limit=limit, alarm=alarm)
    if whole.seconds is not None and whole.seconds > time_bound(n):
        # Once more, keeping the faster: a busy machine is not a quadratic decoder.
        again = worker.run(stream, first_message_limit=limit, alarm=alarm)
        if again.outcome == whole.outcome and (again.seconds or 0) < whole.seconds:
            whole = again
    _check(whole, "whole, deserialized", n, problems)
    pieces = worker.run(
        stream, deserialize=False, relay=True, chunk=1500, first_message_limit=limit,
        alarm=alarm,
    )  # fmt: skip
    _check(pieces, "in 1,500-byte pieces, deserialize=False, relayed", n, problems)
    if whole.outcome in ("hang", "died"):  # the traced run would only do the same, slower
        memory = Result("skipped")
    else:
        memory = worker.run(stream, mode="memory", first_message_limit=limit, alarm=3 * alarm)
        _check(memory, "traced", n, problems)
    if name in CLAIMS and memory.held is not None and memory.held > HELD_BASE + 2 * n:
        problems.append(
            f"waiting for the rest of a message announced in {n} bytes, the decoder holds "
            f"{memory.held / KiB:.0f} KiB (bound {HELD_BASE // KiB} KiB + twice what arrived)"
        )
    where = {"phase": phase, "bytes": n, "outcome": whole.outcome}
    if whole.seconds is not None:
        record(f"decode.{name}.{phase}.seconds", round(whole.seconds, 4), "s", **where,
               ns_per_byte=round(whole.seconds / n * 1e9, 1))  # fmt: skip
    if memory.peak is not None:
        record(f"decode.{name}.{phase}.traced_peak", round(memory.peak / MiB, 2), "MiB",
               **where, bytes_per_byte=round(memory.peak / n, 1),
               held_kib=round((memory.held or 0) / KiB, 1))  # fmt: skip
    if problems:
        pytest.fail(f"{name} ({attack.summary}), {phase}:\n  " + "\n  ".join(problems))


def test_generated_streams_decode_within_bounds(
    request: pytest.FixtureRequest, worker: DecodeWorker
) -> None:
    """Hypothesis mixes every class: chains of any nesting kinds up to 100,000 deep around
    floods, colliding maps, lying headers and timestamps, nested in one another, framed
    honestly or with lying counts and lengths. Only comm's errors, within the time bound.
    (No shrinking: a crash restarts the child, and the first failing stream is reported.)"""
    soak = bool(request.config.getoption("--soak"))
    seen: dict[str, int] = {}
    starts = worker.started

    @settings(
        max_examples=1000 if soak else 120,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
        verbosity=Verbosity.quiet,  # the assertion shows the stream's start, not all of it
    )
    @given(streams(), st.booleans(), st.sampled_from([0, 0, 1500, 65536]))
    def check(stream: bytes, deserialize: bool, chunk: int) -> None:
        alarm = max(2.0, 4 * time_bound(len(stream)))
        result = worker.run(
            stream, deserialize=deserialize, relay=not deserialize, chunk=chunk, alarm=alarm
        )
        seen[result.outcome] = seen.get(result.outcome, 0) + 1
        problems: list[str] = []
        _check(result, f"{len(stream):,}-byte stream", len(stream), problems)
        assert not problems, f"{problems[0]}\nstream starts {stream[:120]!r}"

    try:
        check()
    finally:
        record("decode.generated.streams", sum(seen.values()), "streams",
               restarts=worker.started - starts, **dict(sorted(seen.items())))  # fmt: skip
