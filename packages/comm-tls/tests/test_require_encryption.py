"""``require_encryption`` refuses tcp:// and accepts tls://, per call and from the environment.

comm-core enforces it from the backends' capabilities; comm-tls declares
``encrypted``. The same across inproc is checked in the repository's
cross-package tests (this package's test environment has no inproc).
"""

from __future__ import annotations

import pytest

import comm_core
from comm_core import EncryptionRequiredError
from comm_tls import Security, TLSBackend
from tls_support import IPV4, connected, ping, serving

pytestmark = pytest.mark.usefixtures("loop_name")

HOW = ("argument", "environment")


@pytest.fixture(params=HOW)
def required(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Keyword arguments that require encryption: the argument, or COMM_REQUIRE_ENCRYPTION=1."""
    if request.param == "environment":
        monkeypatch.setenv("COMM_REQUIRE_ENCRYPTION", "1")
        return {}
    return {"require_encryption": True}


def test_tls_declares_encryption() -> None:
    backend = comm_core.get_backend("tls")
    assert isinstance(backend, TLSBackend)
    assert backend.encrypted
    assert not comm_core.get_backend("tcp").encrypted


async def test_tcp_is_refused(required: dict[str, bool]) -> None:
    with pytest.raises(EncryptionRequiredError) as info:
        comm_core.listen(f"tcp://{IPV4}:0", lambda comm: None, **required)
    assert f"but 'tcp://{IPV4}:0' uses the 'tcp' backend, which does not encrypt" in str(info.value)
    assert "use an encrypted scheme such as 'tls://'" in str(info.value)
    # An explicit False wins over the environment: a tcp listener to dial.
    async with serving(address=f"tcp://{IPV4}:0", require_encryption=False) as served:
        with pytest.raises(EncryptionRequiredError, match="which does not encrypt"):
            await comm_core.connect(served.address(scheme="tcp"), **required)


async def test_tls_is_accepted(required: dict[str, bool], temporary: Security) -> None:
    async with (
        serving(security=temporary, **required) as served,
        connected(served.address(), security=temporary, **required) as comm,
    ):
        await ping(comm)


async def test_not_required_by_default(temporary: Security) -> None:
    async with (
        serving(address=f"tcp://{IPV4}:0") as served,
        connected(served.address(scheme="tcp")) as comm,
    ):
        await ping(comm)
