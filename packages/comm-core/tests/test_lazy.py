"""comm_core.lazy_exports and comm_core.imported_on_use, on a package made for the test."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import comm_core


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``lazypkg``: ``Thing`` (in ``lazypkg._heavy``) exported lazily; ``Backend`` names it."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text(
        textwrap.dedent(
            """
            import comm_core
            __all__ = ["Thing", "Backend"]
            __getattr__, __dir__ = comm_core.lazy_exports(
                __name__, {"Thing": "lazypkg._heavy", "Backend": "lazypkg._backend"}
            )
            """
        )
    )
    (root / "_heavy.py").write_text("class Thing:\n    pass\n")
    (root / "_backend.py").write_text(
        textwrap.dedent(
            """
            import comm_core
            class Backend:
                thing_class = comm_core.imported_on_use("lazypkg._heavy", "Thing")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("lazypkg")
    finally:
        for name in [m for m in sys.modules if m == "lazypkg" or m.startswith("lazypkg.")]:
            del sys.modules[name]


def test_a_name_is_imported_when_first_read_and_kept(package: ModuleType) -> None:
    assert "lazypkg._heavy" not in sys.modules
    assert "Thing" in dir(package)  # listed before it is loaded
    thing = package.Thing
    assert thing is sys.modules["lazypkg._heavy"].Thing
    assert vars(package)["Thing"] is thing  # later reads are plain attribute reads
    namespace: dict[str, object] = {}
    exec("from lazypkg import Thing", namespace)
    assert namespace["Thing"] is thing


def test_an_unknown_name_is_an_attribute_error_naming_the_module(package: ModuleType) -> None:
    with pytest.raises(AttributeError, match=r"^module 'lazypkg' has no attribute 'Nope'$"):
        package.Nope  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Nope'"):
        exec("from lazypkg import Nope", {})


def test_a_class_attribute_imports_its_class_when_read(package: ModuleType) -> None:
    backend = package.Backend
    assert "lazypkg._heavy" not in sys.modules
    assert "lazypkg._heavy.Thing, imported on first use" in repr(vars(backend)["thing_class"])
    assert backend.thing_class is sys.modules["lazypkg._heavy"].Thing
    assert backend().thing_class is backend.thing_class

    class Own(backend):  # type: ignore[misc, valid-type]
        thing_class = int

    assert Own.thing_class is int


def test_the_helpers_are_public() -> None:
    assert {"lazy_exports", "imported_on_use"} <= set(comm_core.__all__)
