"""Fixtures of comm-dask's tests: the schemes, and TLS credentials as Dask users give them."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from distributed.security import Security

#: comm-dask's schemes, the transports they run over.
SCHEMES = ["comm+tcp", "comm+tls", "comm+inproc"]


class Credentials:
    """A CA and one certificate for 127.0.0.1, ::1 and localhost, in files, and Dask's
    ``Security`` and connection arguments made from them."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "::1", "localhost")
        self.ca_file = tmp / "ca.pem"
        self.cert_file = tmp / "node.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(self.cert_file))
        self.security = Security(
            tls_ca_file=str(self.ca_file),
            tls_scheduler_cert=str(self.cert_file),
            tls_worker_cert=str(self.cert_file),
            tls_client_cert=str(self.cert_file),
            require_encryption=True,
        )

    def listen_args(self) -> dict[str, Any]:
        return dict(self.security.get_listen_args("scheduler"))

    def connect_args(self) -> dict[str, Any]:
        return dict(self.security.get_connection_args("client"))

    def other_ca_context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        """A context whose certificate another CA signed (and which trusts only that CA)."""
        other = trustme.CA()
        context = ssl.create_default_context(purpose)
        context.check_hostname = False
        other.configure_trust(context)
        other.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return Credentials(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def args(scheme: str, credentials: Credentials) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(listen arguments, connect arguments) for *scheme*, as Dask passes them."""
    if scheme == "comm+tls":
        yield credentials.listen_args(), credentials.connect_args()
    else:
        yield {}, {}


def local_address(scheme: str) -> str:
    """An address to listen on, on the loopback (or a fresh inproc one)."""
    return f"{scheme}://" if scheme == "comm+inproc" else f"{scheme}://127.0.0.1:0"
