"""comm-tcp: the ``tcp://`` transport of comm.

Users reach it through :func:`comm_core.connect` and :func:`comm_core.listen`;
the classes here are public for subclassing (comm-tls builds on them).
"""

from comm_tcp._backend import TCPBackend, TCPConnector
from comm_tcp._comm import TCPComm, TCPProtocol
from comm_tcp._listener import TCPListener
from comm_tcp._options import SocketOptions
from comm_tcp._version import __version__

__all__ = [
    "SocketOptions",
    "TCPBackend",
    "TCPComm",
    "TCPConnector",
    "TCPListener",
    "TCPProtocol",
    "__version__",
]
