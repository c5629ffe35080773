"""comm_ws imports its public names on first access (PEP 562), to stay cheap to import.

comm-core imports every installed transport's package (for its plugin) whenever it lists
the backends, so importing comm_ws and its backend classes must import neither asyncio,
ssl nor the WebSocket library: a program that never uses ws:// never pays for them.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Any

import pytest

import comm_ws

#: Each public name, and the module that defines it.
PUBLIC = {
    "SUBPROTOCOL": "comm_ws._protocol",
    "WSBackend": "comm_ws._backend",
    "WSComm": "comm_ws._comm",
    "WSConnector": "comm_ws._connector",
    "WSListener": "comm_ws._listener",
    "WSProtocol": "comm_ws._protocol",
    "WSSBackend": "comm_ws._backend",
    "WSSConnector": "comm_ws._connector",
    "__version__": "comm_ws._version",
}


def test_all_names_the_public_names() -> None:
    assert set(comm_ws.__all__) == set(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_name_is_the_object_of_its_module(name: str) -> None:
    expected = getattr(importlib.import_module(PUBLIC[name]), name)
    assert getattr(comm_ws, name) is expected
    namespace: dict[str, Any] = {}
    exec(f"from comm_ws import {name}", namespace)
    assert namespace[name] is expected


_PROBE = """
import json, sys
import comm_core
backends = {scheme: comm_core.get_backend(scheme) for scheme in ("ws", "wss")}
facts = [[b.scheme, sorted(b.capabilities), b.get_address_host("[::1]:1/comm"),
          b.get_address_host_port("h:2/x/y"), b.resolve_address("127.0.0.1:3/p")]
         for b in backends.values()]
heavy = ("asyncio", "ssl", "msgpack", "websockets", "comm_core.stream", "comm_core.message",
         "comm_ws._connector", "comm_ws._listener", "comm_ws._protocol", "comm_tls._security")
loaded = sorted(m for m in heavy if m in sys.modules)
connector = backends["ws"].get_connector()
print(json.dumps({"facts": facts, "heavy": loaded, "connector": type(connector).__name__,
                  "websockets": "websockets" in sys.modules}))
"""


def test_looking_the_backends_up_is_light() -> None:
    """Looking ws and wss up imports no asyncio, ssl, msgpack or websockets; the
    connector does."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _PROBE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "facts": [
            ["ws", [], "::1", ["h", 2], "127.0.0.1:3/p"],
            ["wss", ["encrypted"], "::1", ["h", 2], "127.0.0.1:3/p"],
        ],
        "heavy": [],
        "connector": "WSConnector",
        "websockets": True,
    }
