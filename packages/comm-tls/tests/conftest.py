"""Fixtures of comm-tls's tests; helpers that tests import are in ``tls_support``."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import pytest
import trustme

import comm_core
from comm_core.testing import open_comms
from comm_tls import Security

_LOOPS = [pytest.param(name, marks=pytest.mark.comm_loop(name)) for name in ("asyncio", "uvloop")]


#: Tests marked ``large`` need gigabytes of memory (messages above 2 GiB): they run only
#: when this variable is set to 1, as CI does (see docs/development.rst).
LARGE_TESTS_VARIABLE = "COMM_LARGE_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``large`` unless ``COMM_LARGE_TESTS=1``."""
    if os.environ.get(LARGE_TESTS_VARIABLE, "0") not in ("", "0"):
        return
    skip = pytest.mark.skip(
        reason=f"needs about 4.5 GB of memory: set {LARGE_TESTS_VARIABLE}=1 to run it"
    )
    for item in items:
        if item.get_closest_marker("large"):
            item.add_marker(skip)


@pytest.fixture(params=_LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    """Runs a test once on asyncio and once on uvloop (skipped where uvloop is missing).

    Modules that should run on both loops say ``pytestmark = pytest.mark.usefixtures("loop_name")``.
    """
    name: str = request.param
    return name


@pytest.fixture(params=["socket", "asyncio"])
def tls_layer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test over comm-tls's own TLS transport, then over asyncio's TLS layer (the
    fallback, ``COMM_TLS_TRANSPORT=asyncio``).

    Modules that should run on both say ``pytestmark = pytest.mark.usefixtures("tls_layer")``.
    """
    name: str = request.param
    if name == "asyncio":
        monkeypatch.setenv("COMM_TLS_TRANSPORT", "asyncio")
    else:
        monkeypatch.delenv("COMM_TLS_TRANSPORT", raising=False)
    return name


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Default settings (no COMM_* variables), with fast connect retries."""
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    with comm_core.configure(retry_delay_min=0.001, retry_delay_max=0.02):
        yield


@pytest.fixture(autouse=True)
def _no_open_comms() -> Iterator[None]:
    """Fail a test that leaves a comm open (comms are aborted so later tests are not affected)."""
    before = {id(comm) for comm in open_comms(collect=False)}
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        leaked = [repr(comm) for comm in open_comms() if id(comm) not in before]
    for comm in open_comms(collect=False):
        if id(comm) not in before:
            with contextlib.suppress(Exception):
                comm.abort()
    leaked += [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    if leaked:
        pytest.fail("the test left comm(s) open:\n  " + "\n  ".join(leaked), pytrace=False)


@pytest.fixture(scope="session")
def temporary() -> Security:
    """Mutual-TLS credentials for both ends, made once per run."""
    return Security.temporary()


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The CA that signs the certificates of the error tests' good servers and clients."""
    return trustme.CA()


@pytest.fixture(scope="session")
def other_ca() -> trustme.CA:
    """A CA that nobody in the tests trusts."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def client_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("client.example", common_name="a comm client")
