"""Fixtures of the cross-package tests that several modules use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import comm_core
from comm_core import selection
from selection_support import UVLOOP


@pytest.fixture(
    params=[
        pytest.param("asyncio", marks=pytest.mark.comm_loop("asyncio")),
        pytest.param(
            "uvloop",
            marks=[
                pytest.mark.comm_loop("uvloop"),
                pytest.mark.skipif(not UVLOOP, reason="uvloop is not installed"),
            ],
        ),
    ]
)
def loop_name(request: pytest.FixtureRequest) -> str:
    """The dialer's loop (this process), and the child listener's."""
    name: str = request.param
    return name


@pytest.fixture
def selection_clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No comm setting from the environment, and no remembered offer, before and after."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    selection.forget_paths()
    yield
    selection.forget_paths()
