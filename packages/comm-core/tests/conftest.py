from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import comm_core
from comm_core import _config, _registry
from memory_backend import MemoryBackend


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with default settings: no COMM_* variable, no configure() override."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.setattr(_config, "_overrides", {})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> comm_core.Registry:
    """A fresh process-wide registry that loads no entry point."""
    fresh = comm_core.Registry(autoload=False)
    monkeypatch.setattr(_registry, "_default", fresh)
    return fresh


@pytest.fixture
def memory(registry: comm_core.Registry) -> MemoryBackend:
    """The ``memory`` test backend, registered in code, with fast connect retries."""
    comm_core.register_backend(MemoryBackend, replace=True)
    comm_core.configure(retry_delay_min=0.001, retry_delay_max=0.01)
    backend = comm_core.get_backend("memory")
    assert isinstance(backend, MemoryBackend)
    return backend


class FakeDistributions:
    """Writes installed-looking distributions (a module and a ``.dist-info``) into a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules: list[str] = []

    def add(
        self,
        name: str,
        entry_points: dict[str, str],
        modules: dict[str, str],
        *,
        version: str = "1.0",
        group: str = comm_core.ENTRY_POINT_GROUP,
    ) -> None:
        for module, source in modules.items():
            (self.root / f"{module}.py").write_text(source, encoding="utf-8")
            self.modules.append(module)
        info = self.root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
        )
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}", encoding="utf-8")
        importlib.invalidate_caches()


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDistributions]:
    """Fake distributions on ``sys.path``; their modules are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    fakes = FakeDistributions(root)
    yield fakes
    for module in fakes.modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
