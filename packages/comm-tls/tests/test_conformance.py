"""comm-core's backend conformance kit against tls, on IPv4 and IPv6, on asyncio and uvloop,
over comm-tls's own TLS transport, and (IPv4) over asyncio's TLS layer, the fallback.

Both ends use one set of temporary mutual-TLS credentials. ``distribution``
makes the kit check that the backend is found through comm-tls's entry point.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from comm_core.testing import BackendConformance
from comm_tls import Security
from tls_support import IPV4, IPV6, needs_ipv6

_SECURITY = Security.temporary()


class TLSConformance(BackendConformance):
    scheme = "tls"
    distribution = "comm-tls"
    connection_args = MappingProxyType({"security": _SECURITY})


@pytest.mark.comm_loop("asyncio")
class TestTLSv4Asyncio(TLSConformance):
    listen_address = f"tls://{IPV4}:0"


@pytest.mark.comm_loop("uvloop")
class TestTLSv4Uvloop(TLSConformance):
    listen_address = f"tls://{IPV4}:0"


@needs_ipv6
@pytest.mark.comm_loop("asyncio")
class TestTLSv6Asyncio(TLSConformance):
    listen_address = f"tls://[{IPV6}]:0"


@needs_ipv6
@pytest.mark.comm_loop("uvloop")
class TestTLSv6Uvloop(TLSConformance):
    listen_address = f"tls://[{IPV6}]:0"


class _OverAsyncioTLS(TLSConformance):
    @pytest.fixture(autouse=True)
    def _asyncio_tls(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("COMM_TLS_TRANSPORT", "asyncio")


@pytest.mark.comm_loop("asyncio")
class TestTLSv4AsyncioOverAsyncioTLS(_OverAsyncioTLS):
    listen_address = f"tls://{IPV4}:0"


@pytest.mark.comm_loop("uvloop")
class TestTLSv4UvloopOverAsyncioTLS(_OverAsyncioTLS):
    listen_address = f"tls://{IPV4}:0"
