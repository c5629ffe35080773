"""Fixtures of comm-ws's tests; helpers that tests import are in ``ws_support``."""

from __future__ import annotations

import pytest

_LOOPS = [pytest.param(name, marks=pytest.mark.comm_loop(name)) for name in ("asyncio", "uvloop")]


@pytest.fixture(params=_LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Runs a test once on asyncio and once on uvloop (skipped where uvloop is missing).

    Modules that should run on both loops say ``pytestmark = pytest.mark.usefixtures("loop_name")``.
    """
    name: str = request.param
    return name
