"""comm_tcp imports its public names on first access (PEP 562), to stay cheap to import.

comm-core imports every installed transport's package (for its plugin) whenever it
lists the backends, so importing comm_tcp and its backend class must import neither
asyncio nor msgpack; the connector and the listener are imported by the first
connect() or listen().
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

import comm_tcp
from comm_tcp import TCPBackend, TCPConnector, TCPListener

#: Each public name, and the module that defines it.
PUBLIC = {
    "SocketOptions": "comm_tcp._options",
    "StreamTransportBase": "comm_tcp._transport",
    "TCPBackend": "comm_tcp._backend",
    "TCPComm": "comm_tcp._comm",
    "TCPConnector": "comm_tcp._connector",
    "TCPListener": "comm_tcp._listener",
    "TCPProtocol": "comm_tcp._comm",
    "__version__": "comm_tcp._version",
}


def test_all_names_the_public_names() -> None:
    assert set(comm_tcp.__all__) == set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_the_object_of_its_module(name: str) -> None:
    expected = getattr(importlib.import_module(PUBLIC[name]), name)
    assert getattr(comm_tcp, name) is expected
    namespace: dict[str, Any] = {}
    exec(f"from comm_tcp import {name}", namespace)
    assert namespace[name] is expected
    assert name in dir(comm_tcp)


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match=r"^module 'comm_tcp' has no attribute 'nope'$"):
        comm_tcp.nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'nope'"):
        from comm_tcp import nope  # type: ignore[attr-defined]  # noqa: F401


_PROBE = """
import json, sys
import comm_tcp
unlisted = sorted(set(comm_tcp.__all__) - set(dir(comm_tcp)))
backend = comm_tcp.TCPBackend()
host = backend.get_address_host("127.0.0.1:8786")
heavy = ("asyncio", "ssl", "msgpack", "socket", "comm_core.stream", "comm_tcp._connector",
         "comm_tcp._listener")
loaded = sorted(m for m in heavy if m in sys.modules)
connector = backend.get_connector()
print(json.dumps({"unlisted": unlisted, "host": host, "heavy": loaded,
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
        "host": "127.0.0.1",
        "heavy": [],
        "connector": "TCPConnector",
        "same": True,
    }


def test_connector_and_listener_classes() -> None:
    # Read on the class or on an instance, they are the classes themselves.
    assert TCPBackend.connector_class is TCPConnector
    assert TCPBackend.listener_class is TCPListener
    assert TCPBackend().connector_class is TCPConnector


class _MyConnector(TCPConnector):
    pass


class _MyListener(TCPListener):
    pass


class _MyBackend(TCPBackend):
    scheme = "mytcp"
    connector_class = _MyConnector
    listener_class = _MyListener


def test_a_subclass_sets_its_own_classes() -> None:
    backend = _MyBackend()
    connector = backend.get_connector()
    assert type(connector) is _MyConnector
    assert backend.get_connector() is connector
    listener = backend.get_listener("127.0.0.1:0", _handler, True)
    assert type(listener) is _MyListener
    assert listener.connector is connector
    assert TCPBackend.connector_class is TCPConnector  # the base is unchanged


async def _handler(comm: Any) -> None:
    raise AssertionError("not reached")
