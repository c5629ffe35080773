"""``require_encryption`` across transports: tcp is refused, tls and inproc are accepted.

For both ``connect()`` and ``listen()``, asked for per call or with
``COMM_REQUIRE_ENCRYPTION=1``. Transports that are not installed are skipped.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

import comm_core
from comm_core import Comm, EncryptionRequiredError


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in comm_core.SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)


@pytest.fixture(params=["argument", "environment"])
def required(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Keyword arguments that require encryption: the argument, or COMM_REQUIRE_ENCRYPTION=1."""
    if request.param == "environment":
        monkeypatch.setenv("COMM_REQUIRE_ENCRYPTION", "1")
        return {}
    return {"require_encryption": True}


def _tls_args() -> dict[str, Any]:
    from comm_tls import Security

    return {"security": Security.temporary()}


ACCEPTED = [
    pytest.param("inproc://", dict, id="inproc"),
    pytest.param(
        "tls://127.0.0.1:0",
        _tls_args,
        id="tls",
        marks=pytest.mark.skipif(not _installed("comm_tls"), reason="comm-tls is not installed"),
    ),
]


async def _echo(comm: Comm) -> None:
    async with comm:
        await comm.write(await comm.read())


@pytest.mark.parametrize(("where", "make_args"), ACCEPTED)
async def test_encrypted_and_in_process_transports_are_accepted(
    where: str, make_args: Any, required: dict[str, Any]
) -> None:
    args = make_args()
    listener = comm_core.listen(where, _echo, **required, **args)
    async with (
        listener,
        await comm_core.connect(listener.contact_address, timeout=10, **required, **args) as comm,
    ):
        await comm.write("hello")
        assert await comm.read() == "hello"


@pytest.mark.skipif(not _installed("comm_tcp"), reason="comm-tcp is not installed")
async def test_tcp_is_refused(required: dict[str, Any]) -> None:
    with pytest.raises(EncryptionRequiredError, match="'tcp' backend, which does not encrypt"):
        comm_core.listen("tcp://127.0.0.1:0", _echo, **required)
    # An explicit False wins over the environment: a tcp listener to dial.
    async with comm_core.listen("tcp://127.0.0.1:0", _echo, require_encryption=False) as listener:
        with pytest.raises(
            EncryptionRequiredError, match="use an encrypted scheme such as 'tls://'"
        ):
            await comm_core.connect(listener.contact_address, **required)
