"""comm-core's backend conformance kit, run against every installed transport.

Each transport also runs the kit in its own test suite; here they run side by
side, installed together, so that they are found through their entry points
(``distribution`` is checked) and do not disturb one another.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from comm_core.testing import BackendConformance


def _requires(module: str, distribution: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"{distribution} is not installed"
    )


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def _tls_args() -> Mapping[str, Any]:
    """Temporary mutual-TLS credentials for both ends, if comm-tls is installed."""
    if importlib.util.find_spec("comm_tls") is None:
        return MappingProxyType({})
    from comm_tls import Security

    return MappingProxyType({"security": Security.temporary()})


_TLS_ARGS = _tls_args()


class TestInprocConformance(BackendConformance):
    scheme = "inproc"
    distribution = "comm-inproc"
    serializes = False  # messages are passed by reference
    bounded_writes = False  # its queue is unbounded by design
    malformed_locations = ("no-slashes", "host/pid/1")


@_requires("comm_tcp", "comm-tcp")
class TestTCPConformance(BackendConformance):
    scheme = "tcp"
    listen_address = "tcp://127.0.0.1:0"
    distribution = "comm-tcp"


@_requires("comm_tcp", "comm-tcp")
@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
class TestTCPv6Conformance(BackendConformance):
    scheme = "tcp"
    listen_address = "tcp://[::1]:0"
    distribution = "comm-tcp"


@_requires("comm_tls", "comm-tls")
class TestTLSConformance(BackendConformance):
    scheme = "tls"
    listen_address = "tls://127.0.0.1:0"
    connection_args = _TLS_ARGS
    distribution = "comm-tls"


@_requires("comm_tls", "comm-tls")
@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
class TestTLSv6Conformance(BackendConformance):
    scheme = "tls"
    listen_address = "tls://[::1]:0"
    connection_args = _TLS_ARGS
    distribution = "comm-tls"


def _abstract_names() -> bool:
    if importlib.util.find_spec("comm_unix") is None:
        return False
    from comm_unix import ABSTRACT_NAMESPACE

    return ABSTRACT_NAMESPACE


@_requires("comm_unix", "comm-unix")
class TestUnixConformance(BackendConformance):
    scheme = "unix"
    listen_address = "unix://"
    distribution = "comm-unix"
    malformed_locations = ("relative.sock", "/tmp/nul\0.sock", "/" + "x" * 200)


@_requires("comm_unix", "comm-unix")
@pytest.mark.skipif(not _abstract_names(), reason="abstract socket names are Linux's")
class TestUnixAbstractConformance(BackendConformance):
    scheme = "unix"
    listen_address = "unix://@"
    distribution = "comm-unix"
    malformed_locations = ("@nul\0name", "@" + "x" * 200)
