"""The HTTP upgrade that opens a WebSocket connection, checked by the websockets library.

comm-ws frames messages itself (:mod:`comm_ws._protocol`), but the HTTP/1.1
upgrade before it is checked by websockets' sans-I/O protocol objects
(:class:`websockets.client.ClientProtocol`,
:class:`websockets.server.ServerProtocol`): the request and response headers,
``Sec-WebSocket-Accept`` and the subprotocol negotiation. comm-ws finds where
the head ends (bounded: :data:`MAX_HEAD` bytes) and hands the library exactly
the head, so that the bytes after it (the first frames, which may come in the
same segment) stay comm-ws's.

What a server may answer instead of switching protocols becomes comm's errors
here (:class:`ClientUpgrade`): a proxy's 502 or 503, or a 500, is worth
retrying (:class:`~comm_core.ConnectError`); a 404, a plain HTTP server, a
server that is a ``tcp://`` comm listener or speaks TLS, and a WebSocket
server that does not speak comm's subprotocol are final
(:class:`~comm_core.FatalCommClosedError`).
"""

from __future__ import annotations

import re
from typing import Final

from websockets.client import ClientProtocol
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from comm_core import PROTOCOL_VERSION, ConnectError, FatalCommClosedError, unparse_host_port
from comm_core.protocol import MAGIC, WIRE_VERSION
from comm_ws._version import __version__

__all__ = [
    "MAX_HEAD",
    "SUBPROTOCOL",
    "TLS_ALERT",
    "ClientUpgrade",
    "ServerUpgrade",
    "head_end",
    "not_http",
    "refusal",
]

#: The WebSocket subprotocol of comm: messages in comm's wire format (its version), and the
#: comm handshake's protocol version after it.
SUBPROTOCOL: Final = f"comm.wire{WIRE_VERSION}.v{PROTOCOL_VERSION}"
#: The most bytes an HTTP head (request or response line and headers) may take.
MAX_HEAD: Final = 16 * 1024
#: Statuses worth a retry: the server (or the proxy before it) may do better soon.
TRANSIENT: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
#: A TLS record: fatal alert "protocol_version", for a TLS client at a ws:// listener.
TLS_ALERT: Final = b"\x15\x03\x03\x00\x02\x02\x46"

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r?\n")
_HEADER_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*?)[ \t]*\r?$", re.M)


def head_end(data: bytes | bytearray, end: int) -> int:
    """Where the HTTP head at the start of *data* ends (just past its blank line), looking
    at its first *end* bytes only; -1 if it does not end there."""
    at = data.find(b"\r\n\r\n", 0, end)
    return -1 if at < 0 else at + 4


def not_http(head: bytes, what: str) -> str | None:
    """Why *head*, the first bytes of a peer that should speak HTTP, cannot be (or ``None``).

    *what* names the peer's end in the sentence ("listener", "client").
    """
    if not head:
        return None
    if head.startswith(MAGIC) or (len(head) < len(MAGIC) and MAGIC.startswith(head)):
        if len(head) < len(MAGIC):
            return None  # perhaps: wait for more
        return f"the {what} speaks comm's own stream protocol: it is a tcp:// endpoint"
    if head[0] in (0x15, 0x16):
        return f"the {what} speaks TLS: it is a wss:// (or tls://) endpoint"
    if head[0] < 0x20 or head[0] > 0x7E:
        return f"the {what} does not speak HTTP (it sent {head[:8]!r})"
    return None


def _text(data: bytes, limit: int = 200) -> str:
    text = data.decode("latin-1")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


class ClientUpgrade:
    """The client's side of the upgrade to ``ws://host:port/path`` (``wss://`` if *secure*).

    :attr:`request` is the request to send; :meth:`check` checks the response head.
    """

    def __init__(self, scheme: str, host: str, port: int, path: str) -> None:
        self.address = f"{scheme}://{unparse_host_port(host, port)}{'' if path == '/' else path}"
        secure = scheme == "wss"
        uri = parse_uri(f"{'wss' if secure else 'ws'}://{unparse_host_port(host, port)}{path}")
        self._protocol = ClientProtocol(uri, subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None)
        request = self._protocol.connect()
        request.headers["User-Agent"] = f"comm-ws/{__version__}"
        self._protocol.send_request(request)
        #: The request's bytes.
        self.request = b"".join(self._protocol.data_to_send())

    def check(self, head: bytes, body: bytes) -> None:
        """Check the response *head* (through its blank line); *body* is what came after it.

        Raises:
            ConnectError: the server, or a proxy, answered with a status worth
                a retry (502, 503, 504, 500, 429...).
            FatalCommClosedError: any other answer but comm's WebSocket
                upgrade, saying what the server seems to be.
        """
        where = f"WebSocket upgrade at {self.address}"
        status = _STATUS.match(head)
        if status is None:
            reason = not_http(head, "listener") or (
                f"the listener did not answer in HTTP (it sent {head[:40]!r})"
            )
            raise FatalCommClosedError(f"{where} failed: {reason}; {self._fix(reason)}")
        code = int(status[1])
        phrase = _text(status[2] or b"", 80)
        if code != 101:
            raise self._refused(code, phrase, head, body)
        self._protocol.receive_data(head)
        self._protocol.events_received()
        exc = self._protocol.handshake_exc
        if exc is not None:
            raise FatalCommClosedError(
                f"{where} failed: the server's answer is not a valid WebSocket upgrade: {exc}"
            ) from exc
        chosen = self._protocol.subprotocol
        if chosen != SUBPROTOCOL:  # websockets refuses any other, so: none
            raise FatalCommClosedError(
                f"{where} failed: the server is a WebSocket server, but not a comm endpoint "
                f"(it did not accept the subprotocol {SUBPROTOCOL!r}); is the address's path "
                "that of a comm listener?"
            )

    def _fix(self, reason: str) -> str:
        if "tcp://" in reason:
            return f"dial it with tcp:// instead of {self.address.split(':', 1)[0]}://"
        if "wss://" in reason:
            return "dial it with wss://"
        return "is a comm ws:// listener at that address?"

    def _refused(self, code: int, phrase: str, head: bytes, body: bytes) -> Exception:
        where = f"WebSocket upgrade at {self.address}"
        said = f"HTTP {code} {phrase}".rstrip()
        text = _text(body)
        if text:
            said += f": {text!r}"
        headers = {k.lower(): v for k, v in _HEADER_LINE.findall(head)}
        server = _text(headers.get(b"server", b""), 60)
        if server:
            said += f" (server: {server})"
        if code in TRANSIENT:
            return ConnectError(
                f"{where} failed: the server answered {said}; a proxy or load balancer "
                "answers so while nothing serves the address behind it: retrying"
            )
        if code == 404:
            return FatalCommClosedError(
                f"{where} failed: the server answered {said}: no comm listener serves that "
                "path; dial the path the listener was given (such as ws://host:port/comm)"
            )
        if 300 <= code < 400:
            location = _text(headers.get(b"location", b""), 200)
            return FatalCommClosedError(
                f"{where} failed: the server answered {said}, a redirect"
                + (f" to {location}" if location else "")
                + "; comm does not follow redirects: dial the address of the comm listener"
            )
        if code == 101:  # pragma: no cover - handled by the caller
            return FatalCommClosedError(f"{where} failed: {said}")
        if 200 <= code < 300:
            return FatalCommClosedError(
                f"{where} failed: the server answered {said}: it is a plain HTTP server, "
                "not a comm ws:// listener"
            )
        return FatalCommClosedError(
            f"{where} failed: the server answered {said}; is a comm ws:// listener at that "
            "address, and does nothing between them (a proxy) block WebSocket upgrades?"
        )


class ServerUpgrade:
    """The listener's side of the upgrade: comm's subprotocol, on the listener's path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def respond(self, head: bytes) -> tuple[bytes, str | None]:
        """The response to the request *head* (through its blank line), and why the
        request was refused (``None``: accepted, the response switches protocols)."""
        protocol = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)], max_size=None)
        protocol.receive_data(head)
        events = protocol.events_received()
        request = events[0] if events else None
        if not isinstance(request, Request):
            exc = protocol.handshake_exc
            reason = f"not a valid HTTP request: {exc}{_cause(exc)}"
            response = b"".join(protocol.data_to_send())
            if not response:
                response = _plain(400, "Bad Request", "not a valid HTTP request\n")
            return response, reason
        path = request.path.partition("?")[0]
        if path != self.path:
            refusal = protocol.reject(
                404,
                f"No comm endpoint at {path[:200]}: this comm listener serves {self.path}.\n",
            )
            protocol.send_response(refusal)
            return b"".join(protocol.data_to_send()), f"HTTP path {path[:200]!r} not served"
        answer = protocol.accept(request)
        protocol.send_response(answer)
        data = b"".join(protocol.data_to_send())
        if answer.status_code != 101:
            exc = protocol.handshake_exc
            return data, f"refused the WebSocket upgrade ({answer.status_code}): {exc}"
        return data, None


def _cause(exc: BaseException | None) -> str:
    cause = exc.__cause__ if exc is not None else None
    return f" ({cause})" if cause is not None else ""


def _plain(code: int, phrase: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def refusal(code: int, phrase: str, text: str) -> bytes:
    """A plain HTTP response refusing a request, closing the connection."""
    return _plain(code, phrase, text)
