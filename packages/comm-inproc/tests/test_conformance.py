"""comm-core's backend conformance kit, run against the inproc backend."""

from __future__ import annotations

from comm_core.testing import BackendConformance


class TestInProcConformance(BackendConformance):
    scheme = "inproc"
    listen_address = "inproc://"
    distribution = "comm-inproc"
