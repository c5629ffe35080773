"""Tools for testing comm backends and code that uses comm.

The conformance kit is a pytest suite that any backend runs against itself::

    # tests/test_conformance.py of a backend
    from comm_core.testing import BackendConformance

    class TestMyConformance(BackendConformance):
        scheme = "my"

Its tests are ``async def`` methods run by comm-core's pytest plugin, which is
opt-in: enable it with ``-p comm_core.testing.plugin`` in ``addopts``, or with
``pytest_plugins = ["comm_core.testing.plugin"]`` in the root ``conftest.py``.
See :class:`BackendConformance` for what a subclass sets.

The other helpers need no pytest: :func:`echo_handler` (which the docs'
examples use), :class:`LeakCheck` (the kit's checks for comms, listeners,
descriptors and tasks left behind), :func:`open_comms`,
:func:`open_listeners`, :func:`within` and :func:`until`. Only reading
``BackendConformance`` imports pytest; ``import comm_core`` never imports this
package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from comm_core.testing._handlers import echo_handler
from comm_core.testing._leaks import LeakCheck, open_comms, open_listeners
from comm_core.testing._waiting import until, within

if TYPE_CHECKING:
    from comm_core.testing._conformance import BackendConformance

__all__ = [
    "BackendConformance",
    "LeakCheck",
    "echo_handler",
    "open_comms",
    "open_listeners",
    "until",
    "within",
]


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":
        return _load_kit()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_kit() -> Any:
    """Import the conformance kit, a pytest suite, with pytest's assertion messages."""
    try:
        import pytest
    except ImportError as exc:
        raise ImportError(
            "comm_core.testing.BackendConformance is a pytest suite: install pytest "
            "(comm-core's 'test' extra) to use it; the other helpers of "
            "comm_core.testing need no pytest"
        ) from exc
    # Before the import below, so that the kit's assertions get pytest's messages.
    pytest.register_assert_rewrite("comm_core.testing._conformance")
    from comm_core.testing._conformance import BackendConformance

    globals()["BackendConformance"] = BackendConformance
    return BackendConformance
