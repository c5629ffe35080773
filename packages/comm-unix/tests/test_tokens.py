"""The tokens behind which a tls:// listener offers its Unix socket (comm_unix._select.Tokens)."""

from __future__ import annotations

from typing import Any

import pytest

from comm_unix._select import Tokens


def test_a_token_vouches_for_what_it_was_issued_for_and_can_be_used_again() -> None:
    tokens = Tokens()
    identity = {"peercert": {"subject": ((("commonName", "client"),),)}}
    token = tokens.issue(identity)
    assert len(token) == 32
    assert int(token, 16) >= 0
    assert tokens.redeem(token) is identity
    assert tokens.redeem(token) is identity  # within its lifetime, as often as needed
    assert tokens.issue(identity) != token  # each greeting gets a fresh one


@pytest.mark.parametrize(
    "forged",
    [None, 0, 1.5, b"0" * 32, ["x"], "0" * 32, "0" * 31, "0" * 33, "é" * 32, "", "0" * 4000],
)
def test_anything_not_issued_vouches_for_nothing(forged: Any) -> None:
    tokens = Tokens()
    tokens.issue({})
    assert tokens.redeem(forged) is None


def test_a_token_expires() -> None:
    """With a lifetime of 0 a token is expired as soon as it is issued."""
    tokens = Tokens(lifetime=0.0)
    token = tokens.issue({"who": 1})
    assert tokens.redeem(token) is None
    # Expired tokens are dropped when the next is issued: the table does not grow.
    for n in range(50):
        tokens.issue({"who": n})
    assert len(tokens) == 1


def test_the_table_is_bounded_and_the_oldest_go_first() -> None:
    tokens = Tokens(limit=100)
    first = tokens.issue({"n": 0})
    issued = [tokens.issue({"n": n}) for n in range(1, 1000)]
    assert len(tokens) == 100
    assert tokens.redeem(first) is None
    assert tokens.redeem(issued[-1]) == {"n": 999}
    assert tokens.redeem(issued[-100]) == {"n": 900}
    assert tokens.redeem(issued[-101]) is None
