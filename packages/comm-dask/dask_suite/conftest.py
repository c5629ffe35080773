"""Runs Dask's own comm tests (distributed/comm/tests/test_comms.py) over comm-dask.

``nox -s dask-suite`` copies Dask's test file next to this conftest, outside the
work tree, puts Dask's test certificates (``distributed/tests/tls-*.pem``, which
distributed's wheel leaves out) where Dask's ``get_cert`` reads them, and runs
it. Dask's suite speaks of ``tcp``, ``tls`` and ``inproc``, and reaches into
Dask's modules for their classes (``tcp.TCPListener(...)``,
``inproc.InProcListener(...)``); this conftest makes each of those names
comm-dask's:

* Dask's registry maps ``tcp``, ``tls`` and ``inproc`` to comm-dask backends over
  comm's ``tcp``, ``tls`` and ``inproc``, under Dask's own scheme names, so that
  addresses read as the suite expects (``tcp://127.0.0.1:...``);
* ``distributed.comm.tcp``'s ``TCPBackend``, ``TLSBackend``, ``TCPConnector``,
  ``TLSConnector``, ``TCPListener`` and ``TLSListener``, and
  ``distributed.comm.inproc``'s ``InProcListener``, become comm-dask classes bound
  to those backends, which the suite's ``tcp`` fixture then installs.

The tests that need Dask's own transport objects (tornado's streams, Dask's inproc
address manager) or check a documented difference are skipped, each with the
difference named (see comm's docs, "Using comm with Dask").
"""

from __future__ import annotations

from typing import Any

import distributed.comm.inproc as dask_inproc
import distributed.comm.tcp as dask_tcp
import pytest
from distributed.comm import registry

from comm_dask import CommBackend, CommConnector, CommListener


def _bound(comm_scheme: str) -> tuple[type, type, type]:
    """Backend, connector and listener classes of comm's *comm_scheme* under Dask's name for
    it, built with the arguments the suite gives Dask's classes."""

    class Backend(CommBackend):
        def __init__(self) -> None:
            super().__init__(comm_scheme, scheme=comm_scheme)

        def get_connector(self) -> Any:
            return self._connector_class()

    class Connector(CommConnector):
        def __init__(self) -> None:
            super().__init__(Backend())

    class Listener(CommListener):
        def __init__(self, loc: str, handle_comm: Any, deserialize: bool = True, **kw: Any):
            super().__init__(Backend(), loc, handle_comm, deserialize, **kw)

    Backend._connector_class = Connector  # type: ignore[attr-defined]
    for cls, kind in ((Backend, "Backend"), (Connector, "Connector"), (Listener, "Listener")):
        cls.__name__ = cls.__qualname__ = f"Comm{comm_scheme.upper()}{kind}"
    return Backend, Connector, Listener


TCPBackend, TCPConnector, TCPListener = _bound("tcp")
TLSBackend, TLSConnector, TLSListener = _bound("tls")
InProcBackend, _, InProcListener = _bound("inproc")

dask_tcp.TCPBackend, dask_tcp.TCPConnector, dask_tcp.TCPListener = (
    TCPBackend,
    TCPConnector,
    TCPListener,
)
dask_tcp.TLSBackend, dask_tcp.TLSConnector, dask_tcp.TLSListener = (
    TLSBackend,
    TLSConnector,
    TLSListener,
)
dask_inproc.InProcListener = InProcListener
registry.backends["tcp"] = TCPBackend()
registry.backends["tls"] = TLSBackend()
registry.backends["inproc"] = InProcBackend()

_DOCS = "see 'What differs from Dask's transports' in comm's docs/dask.rst"
_TORNADO = (
    "needs Dask's tornado-based TCP objects ({what}), which comm-dask does not have: "
    "comm-dask's comms and listeners are comm's ({docs})"
)
_INPROC = (
    "builds inproc addresses with Dask's own inproc address manager ({what}); comm+inproc "
    "addresses are comm-inproc's, host/pid/n with the host's name, not its IP ({docs})"
)

#: Test (or test[parameters]) -> why it is skipped: the difference, as docs/dask.rst names it.
SKIPPED: dict[str, str] = {
    "test_tcp_specific": (
        "checks that a tcp comm's extra_info is empty; comm-dask's extra_info is comm's: "
        f"socket names, keepalive, size limit ({_DOCS}, extra_info)"
    ),
    "test_inproc_specific_same_thread": _INPROC.format(what="global_manager", docs=_DOCS),
    "test_inproc_specific_different_threads": _INPROC.format(what="global_manager", docs=_DOCS),
    "test_inproc_client_server": _INPROC.format(what="new_address(), get_ip()", docs=_DOCS),
    "test_inproc_comm_closed_implicit": _INPROC.format(what="new_address()", docs=_DOCS),
    "test_inproc_comm_closed_explicit": _INPROC.format(what="new_address()", docs=_DOCS),
    "test_comm_closed_on_write_error": _TORNADO.format(
        what="replaces comm.stream.write; comm aborts a comm whose write fails midway "
        "and tests it itself",
        docs=_DOCS,
    ),
    "test_stop_listener_during_handle_stream": _TORNADO.format(
        what="listener.tcp_server and _handle_stream; comm's stop() serves the connections "
        "it accepted, so the client is never left hanging",
        docs=_DOCS,
    ),
    "test_handshake_slow_comm": _TORNADO.format(
        what="a subclass of Dask's TCP comm as the connector's comm_class, which comm-dask's "
        "connector does not use; comm-dask's connect timeout covers comm's handshake, not Dask's",
        docs=_DOCS,
    ),
    "test_share_buffer_with_header": (
        "checks how Dask's tcp lays frames out in receive buffers (small frames merged with "
        "the header); comm receives each frame of 64 KiB or more into a buffer of its own "
        f"and smaller ones as bytes ({_DOCS}, buffers)"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: Dask's marker of slow tests")


def pytest_report_header() -> str:
    return "comm-dask: Dask's tcp, tls and inproc are comm-dask's comm+tcp, comm+tls, comm+inproc"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = SKIPPED.get(item.name) or SKIPPED.get(item.originalname)  # type: ignore[attr-defined]
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
