"""Helpers shared by comm-ws's tests."""

from __future__ import annotations

import socket

import pytest

IPV4 = "127.0.0.1"
IPV6 = "::1"
#: How long a test waits for something that should happen.
EVENT_TIMEOUT = 10.0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind((IPV6, 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback")
