"""TLS credentials shared by every cell and server process of a run.

``python -m bench`` makes one throwaway CA and certificate (with
``comm_tls.Security.temporary()``), writes them as PEM files to a temporary
directory and names it in ``COMM_BENCH_TLS_DIR``, which the cell and server
processes inherit. Every implementation then loads the same files its own way:
comm through ``comm_tls.Security``, Dask through ``distributed.Security``, the
baseline through plain :mod:`ssl` contexts. All three use mutual TLS with
certificate verification, so each pays for the same handshake.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ENV", "baseline_contexts", "credentials", "files"]

ENV = "COMM_BENCH_TLS_DIR"
_NAMES = ("ca.pem", "cert.pem", "key.pem")


@contextlib.contextmanager
def credentials() -> Iterator[None]:
    """Make the run's credentials unless ``COMM_BENCH_TLS_DIR`` names some; remove them after."""
    if os.environ.get(ENV):
        yield
        return
    try:
        from comm_tls import Security
    except ImportError:  # no tls backend installed: nothing to benchmark over TLS
        yield
        return
    made = Security.temporary()
    with tempfile.TemporaryDirectory(prefix="comm-bench-tls-") as directory:
        for name, pem in zip(_NAMES, (made.ca, made.cert, made.key), strict=True):
            Path(directory, name).write_text(str(pem), encoding="ascii")
        os.environ[ENV] = directory
        try:
            yield
        finally:
            del os.environ[ENV]


def files() -> tuple[str, str, str]:
    """The paths of the run's CA, certificate and key."""
    directory = os.environ.get(ENV)
    if not directory:
        raise RuntimeError(f"{ENV} is not set: run the benchmark through `python -m bench`")
    ca, cert, key = (str(Path(directory, name)) for name in _NAMES)
    return ca, cert, key


def baseline_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for the baseline, from the run's files (mutual TLS)."""
    ca, cert, key = files()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    client.load_cert_chain(cert, key)
    return server, client
