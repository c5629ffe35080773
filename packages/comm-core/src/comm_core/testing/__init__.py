"""Tools for testing comm backends: the conformance kit and an async test runner.

The conformance kit is a pytest suite that any backend runs against itself::

    # tests/test_conformance.py of a backend
    from comm_core.testing import BackendConformance

    class TestMyConformance(BackendConformance):
        scheme = "my"

Its tests are ``async def`` methods run by comm-core's pytest plugin, which is
opt-in: enable it with ``-p comm_core.testing.plugin`` in ``addopts``, or with
``pytest_plugins = ["comm_core.testing.plugin"]`` in the root ``conftest.py``.
See :class:`BackendConformance` for what a subclass sets.

This package imports pytest; ``import comm_core`` never imports it.
"""

import pytest

# Before the import below, so that the kit's assertions get pytest's messages.
pytest.register_assert_rewrite("comm_core.testing._conformance")

from comm_core.testing._conformance import (  # noqa: E402
    BackendConformance,
    echo_handler,
    open_comms,
    open_listeners,
)
from comm_core.testing._waiting import until, within  # noqa: E402

__all__ = [
    "BackendConformance",
    "echo_handler",
    "open_comms",
    "open_listeners",
    "until",
    "within",
]
