"""comm_tls imports its public names on first access (PEP 562), to stay cheap to import.

comm-core imports every installed transport's package (for its plugin) whenever it
lists the backends, so importing comm_tls and its backend class must import neither
ssl nor asyncio: a program that never uses tls:// never pays for them. The
connector, the listener and Security are imported when first used.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

import comm_tls
from comm_tls import TLSBackend, TLSConnector, TLSListener

#: Each public name, and the module that defines it.
PUBLIC = {
    "Security": "comm_tls._security",
    "TLSBackend": "comm_tls._backend",
    "TLSComm": "comm_tls._comm",
    "TLSConfigurationError": "comm_tls._errors",
    "TLSConnector": "comm_tls._connector",
    "TLSListener": "comm_tls._listener",
    "__version__": "comm_tls._version",
    "TLSTransport": "comm_tls._transport",
    "available": "comm_tls._transport",
    "context_for": "comm_tls._security",
    "describe_failure": "comm_tls._errors",
    "handshake": "comm_tls._transport",
}


def test_all_names_the_public_names() -> None:
    assert set(comm_tls.__all__) == set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_the_object_of_its_module(name: str) -> None:
    expected = getattr(importlib.import_module(PUBLIC[name]), name)
    assert getattr(comm_tls, name) is expected
    namespace: dict[str, Any] = {}
    exec(f"from comm_tls import {name}", namespace)
    assert namespace[name] is expected
    assert name in dir(comm_tls)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match=r"^module 'comm_tls' has no attribute 'nope'$"):
        comm_tls.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope'"):
        from comm_tls import nope  # type: ignore[attr-defined]  # noqa: F401


_PROBE = """
import json, sys
import comm_tls
unlisted = sorted(set(comm_tls.__all__) - set(dir(comm_tls)))
backend = comm_tls.TLSBackend()
facts = [backend.scheme, sorted(backend.capabilities), backend.get_address_host("[::1]:1")]
heavy = ("asyncio", "ssl", "msgpack", "socket", "comm_core.stream", "comm_tls._connector",
         "comm_tls._listener", "comm_tls._security", "comm_tcp._connector")
loaded = sorted(m for m in heavy if m in sys.modules)
connector = backend.get_connector()
print(json.dumps({"unlisted": unlisted, "facts": facts, "heavy": loaded,
                  "connector": type(connector).__name__, "ssl": "ssl" in sys.modules}))
"""


def test_importing_the_package_and_its_backend_is_light() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _PROBE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "unlisted": [],
        "facts": ["tls", ["encrypted"], "::1"],
        "heavy": [],
        "connector": "TLSConnector",
        "ssl": True,  # the connector needs it
    }


def test_connector_and_listener_classes() -> None:
    assert TLSBackend.connector_class is TLSConnector
    assert TLSBackend.listener_class is TLSListener
    assert type(TLSBackend().get_connector()) is TLSConnector
