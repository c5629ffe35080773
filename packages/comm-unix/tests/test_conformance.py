"""comm-core's backend conformance kit, run against the unix backend.

Four set-ups: listeners on ``unix://`` (each picks a fresh path in a private
temporary directory), on explicit paths in a directory of each test, given by
the kit's ``new_listen_address()`` hook, and (on Linux) on ``unix://@`` (each
gets a fresh abstract name from the kernel) and on explicit abstract names.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator

import pytest

from comm_core.testing import BackendConformance
from comm_unix import ABSTRACT_NAMESPACE

linux_only = pytest.mark.skipif(not ABSTRACT_NAMESPACE, reason="abstract names are Linux's")


class TestUnixConformance(BackendConformance):
    scheme = "unix"
    listen_address = "unix://"
    # Check that comm-core found the backend through comm-unix's entry point.
    distribution = "comm-unix"
    # Locations that every address function, connect() and listen() must refuse.
    malformed_locations = ("relative.sock", "/tmp/nul\0.sock", "/" + "x" * 200)


@pytest.mark.comm_loop("uvloop")  # skipped where uvloop is not installed
class TestUnixConformanceUvloop(TestUnixConformance):
    pass


class TestUnixConformanceExplicitPaths(BackendConformance):
    scheme = "unix"
    distribution = "comm-unix"
    malformed_locations = TestUnixConformance.malformed_locations

    @pytest.fixture(autouse=True)
    def _socket_dir(self) -> Iterator[None]:
        # Not pytest's tmp_path: socket paths must stay short (about 100 bytes).
        with tempfile.TemporaryDirectory(prefix="comm-unix-test-") as path:
            self.socket_dir = path
            yield

    def new_listen_address(self) -> str:
        # Called for every listener a test starts: give each a path of its own.
        return f"unix://{self.socket_dir}/{uuid.uuid4().hex[:16]}.sock"


@linux_only
class TestUnixConformanceAbstract(BackendConformance):
    scheme = "unix"
    listen_address = "unix://@"
    distribution = "comm-unix"
    malformed_locations = (*TestUnixConformance.malformed_locations, "@nul\0name", "@" + "x" * 200)


@linux_only
@pytest.mark.comm_loop("uvloop")
class TestUnixConformanceAbstractUvloop(TestUnixConformanceAbstract):
    pass


@linux_only
class TestUnixConformanceExplicitAbstractNames(BackendConformance):
    scheme = "unix"
    distribution = "comm-unix"
    malformed_locations = TestUnixConformanceAbstract.malformed_locations

    def new_listen_address(self) -> str:
        return f"unix://@comm-unix-test-{uuid.uuid4().hex}"
