from __future__ import annotations

from collections.abc import Iterator

import pytest

import comm_core


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Default settings (no COMM_* variables), with fast connect retries."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    with comm_core.configure(retry_delay_min=0.001, retry_delay_max=0.02):
        yield
