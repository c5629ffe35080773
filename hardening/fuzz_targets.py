"""What the fuzzers feed: the receive path of the wire protocol, and the address parsers.

Each target takes generated input and lets only comm's own errors out; any
other exception (or a hang) is a bug. Shared by the hypothesis tests and by
the coverage-guided fuzzer (``fuzz_atheris.py``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import comm_core
from comm_core import AddressError, CommError, ProtocolError, SerializationError
from comm_core.protocol import PREAMBLE, Decoder, FrameDecoder

#: The errors the receive path may raise on bad input.
PROTOCOL_ERRORS = (ProtocolError, SerializationError)
#: The limit the fuzzed decoders enforce: far below what a header may claim.
MAX_MESSAGE_SIZE = 1 << 20


class Hang(Exception):
    """A target ran longer than it may."""


@contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in this (main) thread if the block runs longer than *seconds*."""

    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"the target ran longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def receive(stream: bytes, chunks: Sequence[int] = (), *, deserialize: bool = True) -> list[Any]:
    """Feed *stream* to a fresh receiver in pieces of the sizes *chunks* (then the rest),
    decode every message it yields, and return them.

    Raises only :data:`PROTOCOL_ERRORS` (MessageTooLargeError is a ProtocolError).
    """
    frames_seen: list[list[Any]] = []
    decoder = FrameDecoder(frames_seen.append, max_message_size=MAX_MESSAGE_SIZE, peer="fuzz")
    view = memoryview(stream)
    for size in chunks:
        if not view.nbytes:
            break
        decoder.feed(view[:size])
        view = view[size:]
    if view.nbytes:
        decoder.feed(view)
    body_decoder = Decoder(deserialize=deserialize)
    messages = []
    for frames in frames_seen:
        assert sum(memoryview(f).nbytes for f in frames) <= MAX_MESSAGE_SIZE
        try:
            messages.append(body_decoder.decode(frames))
        except SerializationError:
            continue  # one whole message refused: the comm stays usable
    return messages


def parse_everything(text: str) -> None:
    """Run every address parser on *text*; raises only :class:`AddressError`."""
    for call in (
        lambda: comm_core.parse_address(text),
        lambda: comm_core.parse_address(text, strict=True),
        lambda: comm_core.normalize_address(text),
        lambda: comm_core.parse_host_port(text),
        lambda: comm_core.parse_host_port(text, default_port=8786),
        lambda: comm_core.get_address_host(text),
        lambda: comm_core.get_address_host_port(text),
        lambda: comm_core.get_address_host(f"tcp://{text}"),
        lambda: comm_core.get_address_host_port(f"tcp://{text}"),
        lambda: comm_core.get_address_host_port(f"tls://{text}"),
        lambda: comm_core.get_address_host(f"inproc://{text}"),
    ):
        with suppress(AddressError):
            call()


def fuzz_one_input(data: bytes) -> None:
    """The coverage-guided fuzzer's entry point: the first byte picks the target."""
    if not data:
        return
    target, rest = data[0] % 3, data[1:]
    if target == 0:
        text = rest.decode("utf-8", errors="replace")
        parse_everything(text)
        return
    chunk = rest[0] + 1 if rest else 1
    with suppress(PROTOCOL_ERRORS):
        receive(PREAMBLE + rest[1:], [chunk] * 4, deserialize=target == 1)


__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_ERRORS",
    "CommError",
    "Hang",
    "fuzz_one_input",
    "no_hang",
    "parse_everything",
    "receive",
]
