"""comm-tls: the ``tls://`` transport of comm, TLS over comm-tcp.

Pass a :class:`Security` (or an :class:`ssl.SSLContext` as ``ssl_context=``)
to :func:`comm_core.listen` and :func:`comm_core.connect`::

    security = comm_tls.Security.temporary()  # or Security(ca=..., cert=..., key=...)
    listener = comm_core.listen("tls://127.0.0.1:0", handler, security=security)
    comm = await comm_core.connect(address, security=security)

The classes are public for subclassing and for type checks; users reach the
transport through comm_core.
"""

from comm_tls._backend import TLSBackend, TLSConnector
from comm_tls._comm import TLSComm
from comm_tls._errors import TLSConfigurationError
from comm_tls._listener import TLSListener
from comm_tls._security import Security
from comm_tls._version import __version__

__all__ = [
    "Security",
    "TLSBackend",
    "TLSComm",
    "TLSConfigurationError",
    "TLSConnector",
    "TLSListener",
    "__version__",
]
