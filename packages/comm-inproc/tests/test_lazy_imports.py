"""comm_inproc imports its public names on first access (PEP 562), to stay cheap to import.

comm-core imports every installed transport's package (for its plugin) whenever it
lists the backends, so importing comm_inproc and its backend class must not import
asyncio; the connector, the comm and the listener are imported when first used.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

import comm_inproc

#: Each public name, and the module that defines it.
PUBLIC = {
    "InProcBackend": "comm_inproc._backend",
    "InProcComm": "comm_inproc._comm",
    "InProcConnector": "comm_inproc._connector",
    "InProcListener": "comm_inproc._listener",
    "__version__": "comm_inproc._version",
}


def test_all_names_the_public_names() -> None:
    assert set(comm_inproc.__all__) == set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_the_object_of_its_module(name: str) -> None:
    expected = getattr(importlib.import_module(PUBLIC[name]), name)
    assert getattr(comm_inproc, name) is expected
    namespace: dict[str, Any] = {}
    exec(f"from comm_inproc import {name}", namespace)
    assert namespace[name] is expected
    assert name in dir(comm_inproc)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match=r"^module 'comm_inproc' has no attribute 'nope'$"):
        comm_inproc.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope'"):
        from comm_inproc import nope  # type: ignore[attr-defined]  # noqa: F401


_PROBE = """
import json, sys
import comm_inproc
unlisted = sorted(set(comm_inproc.__all__) - set(dir(comm_inproc)))
backend = comm_inproc.InProcBackend()
facts = [backend.scheme, backend.get_address_host("h/1/2"), backend.resolve_address("h/1/2")]
heavy = ("asyncio", "socket", "logging", "comm_inproc._comm", "comm_inproc._connector",
         "comm_inproc._listener")
loaded = sorted(m for m in heavy if m in sys.modules)
connector = backend.get_connector()
print(json.dumps({"unlisted": unlisted, "facts": facts, "heavy": loaded,
                  "connector": type(connector).__name__,
                  "same": backend.get_connector() is connector}))
"""


def test_importing_the_package_and_its_backend_is_light() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _PROBE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "unlisted": [],
        "facts": ["inproc", "h", "h/1/2"],
        "heavy": [],
        "connector": "InProcConnector",
        "same": True,
    }
