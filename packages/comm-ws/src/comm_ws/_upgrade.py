"""The HTTP/1.1 upgrade that opens a WebSocket connection (RFC 6455, section 4).

comm-ws writes and checks the upgrade itself, strictly and within bounds: the
head (request or status line and headers) is at most :data:`MAX_HEAD` bytes,
at most :data:`MAX_HEADERS` header lines, and no body. ``Sec-WebSocket-Accept``
is computed by the websockets library (:func:`websockets.utils.accept_key`).
websockets' sans-I/O ``ClientProtocol`` and ``ServerProtocol`` did this at
first; they cost 170 µs of CPU per connection (both sides), a third of a
whole tcp connection's setup, for a handshake whose every header is fixed
here. The tests check this handshake against websockets' own client and
server.

What a server may answer instead of switching protocols becomes comm's errors
here (:meth:`ClientUpgrade.check`): a proxy's 502, 503 or 504, a 500 or a 429
are worth retrying (:class:`~comm_core.ConnectError`); a 404, a plain HTTP
server, a redirect, a server that is a ``tcp://`` comm listener or speaks TLS,
and a WebSocket server that does not speak comm's subprotocol are final
(:class:`~comm_core.FatalCommClosedError`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Final

from websockets.utils import accept_key

from comm_core import PROTOCOL_VERSION, ConnectError, FatalCommClosedError, unparse_host_port
from comm_core.protocol import MAGIC, WIRE_VERSION
from comm_ws._version import __version__

__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
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
#: The most bytes an HTTP head (request or status line and headers) may take.
MAX_HEAD: Final = 16 * 1024
#: The most header lines an HTTP head may have.
MAX_HEADERS: Final = 100
#: Statuses worth a retry: the server (or the proxy before it) may do better soon.
TRANSIENT: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
#: A TLS record: fatal alert "protocol_version", for a TLS client at a ws:// listener.
TLS_ALERT: Final = b"\x15\x03\x03\x00\x02\x02\x46"

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n")
_REQUEST = re.compile(rb"([A-Z]{1,20}) (\S{1,8192}) HTTP/(\d\.\d)\r\n")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}):[ \t]*([^\r\n]*?)[ \t]*")


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


def _headers(lines: list[bytes]) -> dict[bytes, list[bytes]] | str:
    """The header lines *lines* by lower-cased name, or what is wrong with them."""
    if len(lines) > MAX_HEADERS:
        return f"more than {MAX_HEADERS} header lines"
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        match = _HEADER.fullmatch(line)
        if match is None:
            return f"a malformed header line {_text(line, 60)!r}"
        headers.setdefault(match[1].lower(), []).append(match[2])
    return headers


def _tokens(values: list[bytes] | None) -> set[bytes]:
    """The comma-separated tokens of a header's *values*, lower-cased."""
    return {t.strip().lower() for v in values or () for t in v.split(b",") if t.strip()}


def _one(headers: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    values = headers.get(name)
    return values[0] if values is not None and len(values) == 1 else None


class ClientUpgrade:
    """The client's side of the upgrade to ``scheme://host:port/path``.

    :attr:`request` is the request to send; :meth:`check` checks the response head.
    """

    def __init__(self, scheme: str, host: str, port: int, path: str) -> None:
        host_port = unparse_host_port(host, port)
        self.address = f"{scheme}://{host_port}{'' if path == '/' else path}"
        key = base64.b64encode(os.urandom(16)).decode()
        self._accept = accept_key(key).encode()
        #: The request's bytes.
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nUser-Agent: comm-ws/{__version__}\r\n\r\n"
        ).encode()

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
        headers = _headers(
            head[status.end() : -4].split(b"\r\n") if status.end() < len(head) - 2 else []
        )
        if isinstance(headers, str):
            raise FatalCommClosedError(f"{where} failed: the server's answer has {headers}")
        if code != 101:
            raise self._refused(code, phrase, headers, body)
        problem = None
        if b"websocket" not in _tokens(headers.get(b"upgrade")):
            problem = "no 'Upgrade: websocket'"
        elif b"upgrade" not in _tokens(headers.get(b"connection")):
            problem = "no 'Connection: Upgrade'"
        elif _one(headers, b"sec-websocket-accept") != self._accept:
            problem = "a wrong Sec-WebSocket-Accept"
        elif b"sec-websocket-extensions" in headers:
            problem = "extensions this side did not ask for"
        if problem is not None:
            raise FatalCommClosedError(
                f"{where} failed: the server's answer is not a valid WebSocket upgrade: it has "
                f"{problem}"
            )
        if _one(headers, b"sec-websocket-protocol") != SUBPROTOCOL.encode():
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

    def _refused(
        self, code: int, phrase: str, headers: dict[bytes, list[bytes]], body: bytes
    ) -> Exception:
        where = f"WebSocket upgrade at {self.address}"
        said = f"HTTP {code} {phrase}".rstrip()
        text = _text(body)
        if text:
            said += f": {text!r}"
        server = _text(b", ".join(headers.get(b"server", [])), 60)
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
            location = _text(b", ".join(headers.get(b"location", [])), 200)
            return FatalCommClosedError(
                f"{where} failed: the server answered {said}, a redirect"
                + (f" to {location}" if location else "")
                + "; comm does not follow redirects: dial the address of the comm listener"
            )
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
        request = _REQUEST.match(head)
        if request is None:
            return refusal(400, "Bad Request", "Not an HTTP/1.1 request.\n"), (
                f"not an HTTP request (it starts with {head[:40]!r})"
            )
        method, target, version = request[1], request[2], request[3]
        lines = head[request.end() : -4].split(b"\r\n") if request.end() < len(head) - 2 else []
        headers = _headers(lines)
        if isinstance(headers, str):
            return refusal(400, "Bad Request", f"The request has {headers}.\n"), (
                f"the request has {headers}"
            )
        if version != b"1.1":
            return refusal(505, "HTTP Version Not Supported", "WebSocket needs HTTP/1.1.\n"), (
                f"HTTP/{version.decode()} request"
            )
        if method != b"GET":
            return refusal(405, "Method Not Allowed", "A WebSocket upgrade is a GET.\n"), (
                f"{_text(method)} request"
            )
        path = target.partition(b"?")[0].decode("latin-1")
        if path != self.path:
            text = f"No comm endpoint at {_text(target, 200)}: this listener serves {self.path}.\n"
            return refusal(404, "Not Found", text), f"HTTP path {path[:200]!r} not served"
        if b"content-length" in headers or b"transfer-encoding" in headers:
            body = _one(headers, b"content-length")
            if body is None or body.strip() != b"0":
                return refusal(400, "Bad Request", "A WebSocket upgrade has no body.\n"), (
                    "a request with a body"
                )
        if b"websocket" not in _tokens(headers.get(b"upgrade")) or b"upgrade" not in _tokens(
            headers.get(b"connection")
        ):
            text = f"This is a comm WebSocket endpoint: dial ws://host:port{self.path}.\n"
            return refusal(426, "Upgrade Required", text, b"Upgrade: websocket\r\n"), (
                "a plain HTTP request, not a WebSocket upgrade"
            )
        if _one(headers, b"sec-websocket-version") != b"13":
            return refusal(
                426,
                "Upgrade Required",
                "WebSocket version 13 only.\n",
                b"Sec-WebSocket-Version: 13\r\n",
            ), "not WebSocket version 13"
        key = _one(headers, b"sec-websocket-key")
        if key is None or not _valid_key(key):
            return refusal(400, "Bad Request", "Missing or malformed Sec-WebSocket-Key.\n"), (
                "a missing or malformed Sec-WebSocket-Key"
            )
        if SUBPROTOCOL.encode().lower() not in _tokens(headers.get(b"sec-websocket-protocol")):
            text = f"This comm endpoint speaks the WebSocket subprotocol {SUBPROTOCOL} only.\n"
            return refusal(400, "Bad Request", text), (
                f"the client does not offer the subprotocol {SUBPROTOCOL} (not a comm client, or "
                "another version of comm)"
            )
        response = (
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key.decode('ascii'))}\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
        return response, None


def _valid_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def refusal(code: int, phrase: str, text: str, extra: bytes = b"") -> bytes:
    """A plain HTTP response refusing a request, closing the connection."""
    body = text.encode()
    return (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )
