"""comm-core's backend conformance kit, run against the inproc backend."""

from __future__ import annotations

from comm_core.testing import BackendConformance


class TestInProcConformance(BackendConformance):
    scheme = "inproc"
    listen_address = "inproc://"
    distribution = "comm-inproc"
    # Messages are passed by reference, never serialized (no size limit, no serializer
    # families), through a queue that is unbounded by design.
    serializes = False
    bounded_writes = False
    malformed_locations = ("no-slashes", "host/pid/1", "host/1/n", "host/1/2/3")
