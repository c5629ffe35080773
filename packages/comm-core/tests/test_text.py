"""peer_text(): what a peer chose, as one bounded, escaped line; LogLimiter: a few lines
per interval whatever a flood of peers does; check_handshake(): the handshake's limits."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from comm_core._ratelimit import LogLimiter
from comm_core._text import PEER_TEXT_LIMIT, peer_text
from comm_core.session import (
    HANDSHAKE_MAX_ENTRIES,
    HANDSHAKE_MAX_ITEMS,
    HANDSHAKE_MAX_KEY,
    HANDSHAKE_MAX_TEXT,
    HANDSHAKE_MAX_VALUES,
    check_handshake,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("comm-core", "'comm-core'"),
        ("line\nCRITICAL:root:forged", "'line\\nCRITICAL:root:forged'"),
        ("\x1b[31mred\r", "'\\x1b[31mred\\r'"),
        ("\u202egnp.exe", "'\\u202egnp.exe'"),  # right-to-left override
        ("\u2028", "'\\u2028'"),  # a line separator to some log viewers
        (b"\x00\xff", "b'\\x00\\xff'"),
        (bytearray(b"ab"), "b'ab'"),
        (memoryview(b"ab"), "b'ab'"),
        (7, "7"),
        (True, "True"),
        (None, "None"),
        (1.5, "1.5"),
        ([1, "a", (2,)], "[1, 'a', (2,)]"),
        ({"k": [b"v"]}, "{'k': [b'v']}"),
        ((), "()"),
        (set(), "set()"),
        (object(), "<object>"),
    ],
)
def test_small_values_read_as_their_repr(value: Any, expected: str) -> None:
    assert peer_text(value) == expected


def test_bare_leaves_plain_text_plain() -> None:
    assert peer_text("comm-core 1.0", bare=True) == "comm-core 1.0"
    assert peer_text("a\nb", bare=True) == "'a\\nb'"
    assert peer_text("x" * 300, 100, bare=True).startswith("'xxx")


@pytest.mark.parametrize(
    "value",
    [
        "x" * 10**6,
        "\n" * 10**6,
        "\U0001f600" * 10**5,
        "\x00" * 10**5,
        b"\xff" * 10**6,
        list(range(10**5)),
        {str(i): "v" * 1000 for i in range(1000)},
        [[[[[[[["deep"]]]]]]]] * 1000,
        10**5000,
    ],
    ids=["long", "newlines", "emoji", "nul", "bytes", "list", "dict", "nested", "huge-int"],
)
@pytest.mark.parametrize("limit", [16, 80, PEER_TEXT_LIMIT, 1000])
def test_any_value_is_one_bounded_line(value: Any, limit: int) -> None:
    start = time.perf_counter()
    text = peer_text(value, limit)
    assert time.perf_counter() - start < 0.1  # never the cost of the whole value
    assert len(text) <= limit
    assert text.isprintable() or text.replace(" ", "").isprintable()
    assert "\n" not in text
    assert "\r" not in text


def test_a_cut_says_how_long_the_whole_was() -> None:
    assert peer_text("x" * 1000, 40).endswith("... (1000 chars)")
    assert peer_text(b"x" * 5000, 40).endswith("... (5000 bytes)")
    assert peer_text(list(range(1000)), 40).endswith("...")


def test_a_value_whose_repr_fails_is_named_by_type() -> None:
    class Hostile(list[int]):
        def __iter__(self) -> Any:
            raise RuntimeError("no")

    assert peer_text(Hostile([1])) == "<Hostile>"


# -- LogLimiter ---------------------------------------------------------------------------


def test_log_limiter_lets_a_burst_through_then_counts(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("comm_core.test_limiter")
    caplog.set_level(logging.INFO, logger=logger.name)
    limiter = LogLimiter(logger, "things dropped", burst=2, interval=60)
    for n in range(100):
        limiter.log(logging.INFO, "dropped thing %d", n)
    assert [r.getMessage() for r in caplog.records] == ["dropped thing 0", "dropped thing 1"]
    limiter.flush()
    assert caplog.records[-1].getMessage() == (
        "... and 98 more things dropped in the last 60s (not logged one by one)"
    )
    limiter.flush()  # nothing more to say
    assert len(caplog.records) == 3


async def test_log_limiter_sums_up_at_the_end_of_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("comm_core.test_limiter")
    caplog.set_level(logging.INFO, logger=logger.name)
    limiter = LogLimiter(logger, "things dropped", burst=1, interval=0.05)
    for n in range(10):
        limiter.log(logging.WARNING, "dropped thing %d", n)
    assert len(caplog.records) == 1
    deadline = time.monotonic() + 5
    while len(caplog.records) < 2 and time.monotonic() < deadline:
        await _tick()
    assert caplog.records[1].getMessage().startswith("... and 9 more things dropped")
    assert caplog.records[1].levelno == logging.WARNING


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)


# -- check_handshake ------------------------------------------------------------------------


def _info(**extra: Any) -> dict[str, Any]:
    return {"protocol": 1, "library": "comm-core", "version": "1.0", **extra}


def test_what_comm_and_dask_announce_passes() -> None:
    info = _info(compression=None, python=(3, 11, 7), pickle_protocol=5, token=b"\0" * 32)
    assert check_handshake(info) is None


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ({f"k{i}": i for i in range(HANDSHAKE_MAX_ENTRIES + 1)}, "65 entries, more than 64"),
        (_info(**{"k" * (HANDSHAKE_MAX_KEY + 1): 1}), "a key of 129 characters"),
        ({**_info(), 1: "one"}, "a key of type int, 1; keys are str"),
        (_info(text="x" * (HANDSHAKE_MAX_TEXT + 1)), "entry 'text' is a str of 1025 characters"),
        (_info(blob=b"x" * (HANDSHAKE_MAX_TEXT + 1)), "entry 'blob' is a bytes of 1025 bytes"),
        (_info(items=[0] * (HANDSHAKE_MAX_ITEMS + 1)), "entry 'items' is a list of 65 items"),
        (_info(nested={"a": 1}), "entry 'nested' is a value of type dict"),
        (_info(deep=[[1]]), "entry 'deep' holds a value of type list"),
        (_info(mixed=(1, "x" * 2000)), "entry 'mixed' holds a str of 2000 characters"),
        (
            {f"k{i}": [0] * HANDSHAKE_MAX_ITEMS for i in range(8)},
            f"more than {HANDSHAKE_MAX_VALUES} values",
        ),
        (_info(**{"evil\nkey": {}}), "entry 'evil\\nkey' is a value of type dict"),
    ],
    ids=[
        "entries", "key-length", "key-type", "str", "bytes", "items", "dict", "nested",
        "item-length", "values", "escaped",
    ],
)  # fmt: skip
def test_what_breaks_the_limits_is_named(info: dict[Any, Any], problem: str) -> None:
    found = check_handshake(info)
    assert found is not None
    assert problem in found, found
    assert "\n" not in found
    assert len(found) <= 300


def test_the_limits_themselves_pass() -> None:
    info = {f"k{i}": i for i in range(HANDSHAKE_MAX_ENTRIES)}
    assert check_handshake(info) is None
    assert check_handshake(_info(**{"k" * HANDSHAKE_MAX_KEY: "x" * HANDSHAKE_MAX_TEXT})) is None
    assert check_handshake(_info(items=[b"x" * HANDSHAKE_MAX_TEXT] * HANDSHAKE_MAX_ITEMS)) is None
