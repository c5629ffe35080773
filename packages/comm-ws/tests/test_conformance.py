"""comm-core's backend conformance kit against ws and wss, on IPv4 and IPv6, on asyncio and
uvloop, with listeners on the root path and on a path of their own; wss over comm-tls's own
TLS transport and (IPv4) over asyncio's TLS layer, the fallback.

``distribution`` makes the kit check that the backends are found through comm-ws's entry
point. ``stream_transport = True``: a WebSocket message carries comm's wire format and
comm-ws applies the 64 KiB limit of a connection's first message, so the kit checks it.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from comm_core.testing import BackendConformance
from comm_tls import Security
from ws_support import IPV4, IPV6, needs_ipv6

_SECURITY = Security.temporary()


class WSConformance(BackendConformance):
    scheme = "ws"
    distribution = "comm-ws"
    stream_transport = True
    malformed_locations = ("127.0.0.1:8786/a b", "127.0.0.1:8786/x?y=1", "[::1]:1/#")


class WSSConformance(WSConformance):
    scheme = "wss"
    connection_args = MappingProxyType({"security": _SECURITY})


@pytest.mark.comm_loop("asyncio")
class TestWSv4Asyncio(WSConformance):
    listen_address = f"ws://{IPV4}:0"


@pytest.mark.comm_loop("asyncio")
class TestWSv4PathAsyncio(WSConformance):
    listen_address = f"ws://{IPV4}:0/comm/v1"


@pytest.mark.comm_loop("uvloop")
class TestWSv4Uvloop(WSConformance):
    listen_address = f"ws://{IPV4}:0/comm"


@needs_ipv6
@pytest.mark.comm_loop("asyncio")
class TestWSv6Asyncio(WSConformance):
    listen_address = f"ws://[{IPV6}]:0/comm"


@needs_ipv6
@pytest.mark.comm_loop("uvloop")
class TestWSv6Uvloop(WSConformance):
    listen_address = f"ws://[{IPV6}]:0"


@pytest.mark.comm_loop("asyncio")
class TestWSSv4Asyncio(WSSConformance):
    listen_address = f"wss://{IPV4}:0/comm"


@pytest.mark.comm_loop("uvloop")
class TestWSSv4Uvloop(WSSConformance):
    listen_address = f"wss://{IPV4}:0"


@needs_ipv6
@pytest.mark.comm_loop("asyncio")
class TestWSSv6Asyncio(WSSConformance):
    listen_address = f"wss://[{IPV6}]:0/comm"


class _OverAsyncioTLS(WSSConformance):
    """wss over asyncio's TLS layer, the fallback where comm-tls's own transport is off."""

    @pytest.fixture(autouse=True)
    def _asyncio_tls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COMM_TLS_TRANSPORT", "asyncio")


@pytest.mark.comm_loop("asyncio")
class TestWSSv4AsyncioOverAsyncioTLS(_OverAsyncioTLS):
    listen_address = f"wss://{IPV4}:0/comm"


@pytest.mark.comm_loop("uvloop")
class TestWSSv4UvloopOverAsyncioTLS(_OverAsyncioTLS):
    listen_address = f"wss://{IPV4}:0"
