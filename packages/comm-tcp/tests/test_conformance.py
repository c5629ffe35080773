"""comm-core's backend conformance kit against tcp, on IPv4 and IPv6, on asyncio and uvloop.

On asyncio, comms run over comm-tcp's own socket transport, and once more over
asyncio's (``COMM_TCP_TRANSPORT=asyncio``), which stays selectable.

``distribution`` makes the kit check that the backend is found through comm-tcp's
entry point. Each class runs on the loop its ``comm_loop`` marker names; the
uvloop classes are skipped where uvloop cannot be imported.
"""

from __future__ import annotations

import asyncio

import pytest

from comm_core.testing import BackendConformance, plugin
from comm_tcp import _transport
from tcp_support import IPV4, IPV6, needs_ipv6


class TCPConformance(BackendConformance):
    scheme = "tcp"
    distribution = "comm-tcp"

    async def test_runs_on_the_marked_loop(self, request: pytest.FixtureRequest) -> None:
        marker = request.node.get_closest_marker("comm_loop")
        assert marker is not None
        assert plugin.loop_name(request.node) == marker.args[0]
        loop = asyncio.get_running_loop()
        assert type(loop).__module__.partition(".")[0] == marker.args[0]


@pytest.mark.comm_loop("asyncio")
class TestTCPv4Asyncio(TCPConformance):
    listen_address = f"tcp://{IPV4}:0"


@pytest.mark.comm_loop("asyncio")
class TestTCPv4AsyncioTransport(TCPConformance):
    listen_address = f"tcp://{IPV4}:0"

    @pytest.fixture(autouse=True)
    def _asyncio_transport(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(_transport.ENV, "asyncio")
        assert not _transport.available()


@pytest.mark.comm_loop("uvloop")
class TestTCPv4Uvloop(TCPConformance):
    listen_address = f"tcp://{IPV4}:0"


@needs_ipv6
@pytest.mark.comm_loop("asyncio")
class TestTCPv6Asyncio(TCPConformance):
    listen_address = f"tcp://[{IPV6}]:0"


@needs_ipv6
@pytest.mark.comm_loop("uvloop")
class TestTCPv6Uvloop(TCPConformance):
    listen_address = f"tcp://[{IPV6}]:0"
