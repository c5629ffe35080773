"""Importing a transport's classes when they are first used, not when comm-core lists it.

comm-core imports every installed transport's package and backend module the
first time any backend is looked up, so these must import nothing heavy. The
two helpers here are what comm-tcp, comm-tls and comm-inproc use for that, and
what a third-party transport can use too (see :doc:`/extending`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["imported_on_use", "lazy_exports"]


def lazy_exports(
    module_name: str, sources: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose public names load on first use.

    *sources* maps each such name to the module that defines it. Reading one
    of them from module *module_name* imports that module and keeps the value
    in *module_name*, so that later reads are plain attribute reads (PEP 562)::

        # my_transport/__init__.py
        __all__ = ["MyBackend", "MyComm"]
        __getattr__, __dir__ = comm_core.lazy_exports(
            __name__, {"MyBackend": "my_transport._backend", "MyComm": "my_transport._comm"}
        )

    A name that is not in *sources* raises :class:`AttributeError` naming the
    module, as a missing attribute always does. Put the ``__getattr__``
    assignment under ``if not TYPE_CHECKING:`` and import the names under
    ``if TYPE_CHECKING:``, so that type checkers see the real names and still
    flag a misspelled one.
    """
    module = sys.modules[module_name]

    def __getattr__(name: str) -> Any:
        source = sources.get(name)
        if source is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(import_module(source), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *getattr(module, "__all__", ())})

    return __getattr__, __dir__


class _ImportedOnUse:
    """A class attribute whose value, a class, is imported each time it is read
    (after the first time, from ``sys.modules``); a subclass may still assign its own."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        return getattr(import_module(self.module), self.name)

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}, imported on first use>"


def imported_on_use(module: str, name: str) -> Any:
    """A class attribute that reads as ``module.name``, imported when first read.

    For a backend class that names its connector and listener classes without
    importing them (they import asyncio and more)::

        class MyBackend(Backend):
            connector_class: ClassVar[type[MyConnector]] = comm_core.imported_on_use(
                "my_transport._connector", "MyConnector"
            )

    Typed ``Any``, so that type checkers take the attribute's declared type.
    """
    return _ImportedOnUse(module, name)
