"""Frames by reference and control records (``FrameReferences``): the decoder's side, and
that a decoder without references refuses them exactly as before."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from comm_core import MessageTooLargeError, ProtocolError
from comm_core.protocol import (
    BY_REFERENCE,
    CONTROL_RELEASED,
    CONTROL_SIZE,
    PREAMBLE,
    REFERENCE_SIZE,
    FrameDecoder,
    FrameReferences,
    control_record,
    encode_message,
)


class Recorder(FrameReferences):
    """Resolves a reference to bytes made from it; records control records."""

    def __init__(self) -> None:
        self.resolved: list[tuple[bytes, int]] = []
        self.controls: list[tuple[int, bytes]] = []

    def resolve(self, reference: bytes, length: int) -> Any:
        self.resolved.append((reference, length))
        return memoryview(reference[:1] * length)

    def control(self, kind: int, payload: bytes) -> None:
        if kind == 99:
            raise ProtocolError("kind 99 refused")
        self.controls.append((kind, payload))


def handshake() -> bytes:
    buffers, _ = encode_message({"protocol": 1})
    return PREAMBLE + b"".join(buffers)


def referenced(body: bytes, *references: tuple[bytes, int]) -> bytes:
    """A message of *body* and frames by reference ``(reference, length)``."""
    lengths = [len(body)] + [length | BY_REFERENCE for _, length in references]
    header = struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)
    return header + body + b"".join(reference for reference, _ in references)


def decoder(references: FrameReferences | None) -> tuple[FrameDecoder, list[list[Any]]]:
    messages: list[list[Any]] = []
    decoder = FrameDecoder(messages.append, max_message_size=1 << 20, first_message_limit=4096)
    decoder.references = references
    decoder.feed(handshake())
    assert len(messages) == 1
    messages.clear()
    return decoder, messages


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_references_and_control_records_are_handed_to_the_transport(chunk: int) -> None:
    references = Recorder()
    decoder_, messages = decoder(references)
    first, second = b"A" * REFERENCE_SIZE, b"B" * REFERENCE_SIZE
    data = (
        control_record(CONTROL_RELEASED, b"r" * REFERENCE_SIZE)
        + referenced(b"\xc0", (first, 100_000), (second, 5))
        + control_record(300, b"s" * REFERENCE_SIZE)
    )
    for start in range(0, len(data), chunk):
        decoder_.feed(data[start : start + chunk])
    assert references.controls == [
        (CONTROL_RELEASED, b"r" * REFERENCE_SIZE),
        (300, b"s" * REFERENCE_SIZE),
    ]
    assert references.resolved == [(first, 100_000), (second, 5)]
    [frames] = messages
    assert frames[0] == b"\xc0"
    assert [bytes(frame) for frame in frames[1:]] == [b"A" * 100_000, b"B" * 5]
    assert len(control_record(1, bytes(REFERENCE_SIZE))) == CONTROL_SIZE


def test_the_size_of_a_message_by_reference_counts_its_frames() -> None:
    references = Recorder()
    decoder_, _ = decoder(references)
    with pytest.raises(MessageTooLargeError):
        decoder_.feed(referenced(b"\xc0", (bytes(REFERENCE_SIZE), 1 << 20)))


def test_the_body_and_the_first_message_are_never_by_reference() -> None:
    references = Recorder()
    decoder_, _ = decoder(references)
    with pytest.raises(ProtocolError, match="its message body by reference"):
        decoder_.feed(struct.pack("<IQ", 1, 1 | BY_REFERENCE) + bytes(REFERENCE_SIZE))
    fresh = FrameDecoder(lambda frames: None, max_message_size=1 << 20, first_message_limit=4096)
    fresh.references = references
    with pytest.raises(ProtocolError, match="its first message by reference"):
        fresh.feed(PREAMBLE + referenced(b"\xc0", (bytes(REFERENCE_SIZE), 10)))


def test_what_the_transport_refuses_is_a_protocol_error() -> None:
    decoder_, _ = decoder(Recorder())
    with pytest.raises(ProtocolError, match="kind 99 refused"):
        decoder_.feed(control_record(99, bytes(REFERENCE_SIZE)))
    base, _ = decoder(FrameReferences())  # accepts nothing
    with pytest.raises(ProtocolError, match="not accepted"):
        base.feed(referenced(b"\xc0", (bytes(REFERENCE_SIZE), 10)))


def test_without_references_nothing_changes() -> None:
    decoder_, _ = decoder(None)
    with pytest.raises(MessageTooLargeError):
        decoder_.feed(referenced(b"\xc0", (bytes(REFERENCE_SIZE), 10)))
    decoder_, _ = decoder(None)
    with pytest.raises(ProtocolError, match="0 frames"):
        decoder_.feed(control_record(CONTROL_RELEASED, bytes(REFERENCE_SIZE)))


@pytest.mark.parametrize(("kind", "payload"), [(0, bytes(16)), (1 << 32, bytes(16)), (1, b"x")])
def test_control_record_arguments(kind: int, payload: bytes) -> None:
    with pytest.raises(ValueError, match="not a control record"):
        control_record(kind, payload)
