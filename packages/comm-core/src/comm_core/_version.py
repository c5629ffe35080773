"""The version of comm-core and of the comm protocol it speaks."""

__all__ = ["PROTOCOL_VERSION", "__version__"]

__version__ = "0.1.0.dev0"

#: Version of the comm handshake and wire protocol; peers must agree on it.
PROTOCOL_VERSION = 1
