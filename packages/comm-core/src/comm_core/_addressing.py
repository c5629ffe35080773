"""Pure functions on address strings: no I/O and no registry.

An address is a URI ``scheme://location``. The location's form belongs to the
scheme's backend: ``host:port`` for tcp and tls, ``host/pid/n`` for inproc.
An address without ``://`` uses the default scheme (``tcp`` unless the
``default_scheme`` setting says otherwise).
"""

from __future__ import annotations

from comm_core._config import get_setting
from comm_core.exceptions import AddressError

__all__ = [
    "normalize_address",
    "parse_address",
    "parse_host_port",
    "unparse_address",
    "unparse_host_port",
]

# string.ascii_letters and string.digits, written out: importing string compiles a regex.
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SCHEME_FIRST = frozenset(_LETTERS)
_SCHEME_REST = frozenset(_LETTERS + "0123456789+-.")


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise AddressError(
            f"expected {what} as a str such as 'tcp://127.0.0.1:8786', "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def _check_scheme(scheme: str, addr: str) -> str:
    if not scheme:
        raise AddressError(f"address {addr!r} has an empty scheme before '://'")
    if scheme[0] not in _SCHEME_FIRST or not _SCHEME_REST.issuperset(scheme):
        raise AddressError(
            f"address {addr!r} has an invalid scheme {scheme!r}: a scheme starts with a "
            "letter followed by letters, digits, '+', '-' or '.'"
        )
    return scheme.lower()


def parse_address(addr: str, strict: bool = False) -> tuple[str, str]:
    """Split *addr* into ``(scheme, location)``.

    >>> parse_address("tcp://127.0.0.1:8786")
    ('tcp', '127.0.0.1:8786')
    >>> parse_address("127.0.0.1:8786")
    ('tcp', '127.0.0.1:8786')

    The scheme is lower-cased. Without ``://`` the default scheme is used,
    unless *strict* is true, in which case a missing scheme is an error.
    Whether the scheme is installed is not checked here.

    Raises:
        AddressError: *addr* is not a str, is empty, has an invalid scheme, or
            (with *strict*) has none.
    """
    _check_str(addr, "an address")
    if not addr:
        raise AddressError(
            "empty address ''; write 'scheme://location', such as 'tcp://127.0.0.1:8786', "
            "or 'tcp://' to listen on every interface"
        )
    scheme, sep, loc = addr.partition("://")
    if not sep:
        if strict:
            raise AddressError(f"address {addr!r} has no scheme; write it as 'tcp://{addr}'")
        return get_setting("default_scheme"), addr
    return _check_scheme(scheme, addr), loc


def unparse_address(scheme: str, loc: str) -> str:
    """Join *scheme* and *loc* into an address: the inverse of :func:`parse_address`.

    >>> unparse_address("tcp", "127.0.0.1:8786")
    'tcp://127.0.0.1:8786'
    """
    _check_str(scheme, "a scheme")
    _check_str(loc, "a location")
    return f"{_check_scheme(scheme, scheme + '://' + loc)}://{loc}"


def normalize_address(addr: str) -> str:
    """Return *addr* with an explicit, lower-cased scheme.

    >>> normalize_address("127.0.0.1:8786")
    'tcp://127.0.0.1:8786'
    """
    return unparse_address(*parse_address(addr))


def _parse_port(text: str, address: str) -> int:
    if not text:
        raise AddressError(f"address {address!r} has an empty port after ':'")
    if not (text.isascii() and text.isdigit()):
        raise AddressError(f"address {address!r} has a non-numeric port {text!r}")
    return _check_port(int(text), address)


def _check_port(port: int, address: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise AddressError(f"port for {address!r} must be an int, got {port!r}")
    if not 0 <= port <= 65535:
        raise AddressError(f"address {address!r} has port {port}, outside 0-65535")
    return port


def _is_ipv6(text: str) -> bool:
    import ipaddress  # only locations with several ':' need it

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _unbracketed_ipv6(location: str, shown: str, prefix: str, host_alone: bool) -> str:
    """The host of *location*, a host with several ':' and no brackets, if it is one.

    Such a host may only be an IPv6 address, and one that cannot also be read
    as an IPv6 address followed by a port: ``::1:123`` is the address
    ``::1:123``, or port 123 of ``::1``, so it is refused, as is anything that
    is no IPv6 address. *shown* is the address to quote, *prefix* the
    ``scheme://`` to put before suggestions, *host_alone* whether a location
    without a port is acceptable.
    """
    head, _, tail = location.rpartition(":")
    with_port = bool(tail) and tail.isascii() and tail.isdigit() and _is_ipv6(head)
    as_host = _is_ipv6(location)
    if with_port:
        advice = f"write '{prefix}[{head}]:{tail}' for port {tail} of {head}"
        if as_host:
            whole = f"{prefix}[{location}]" + ("" if host_alone else ":<port>")
            raise AddressError(
                f"address {shown!r} is ambiguous: IPv6 addresses need brackets: {advice}, "
                f"or {whole!r} for the host {location}"
            )
        raise AddressError(f"address {shown!r}: IPv6 addresses need brackets: {advice}")
    if not as_host:
        raise AddressError(
            f"address {shown!r} is not 'host:port': its host holds ':' but is no IPv6 "
            f"address (IPv6 addresses need brackets, as in '{prefix}[::1]:8786')"
        )
    if not host_alone:
        raise AddressError(
            f"address {shown!r} has no port: IPv6 addresses need brackets before the "
            f"port, as in '{prefix}[{location}]:8786'"
        )
    return location


def parse_host_port(
    address: str, default_port: int | None = None, *, scheme: str | None = None
) -> tuple[str, int]:
    """Split a ``host:port`` location into ``(host, port)``.

    IPv6 hosts are written in brackets, which are removed:

    >>> parse_host_port("[::1]:123")
    ('::1', 123)
    >>> parse_host_port("example.org", default_port=8786)
    ('example.org', 8786)

    A location without a port takes *default_port*; without one, it is an
    error. An empty host (as in ``":8786"`` or ``""``) means every interface,
    which only listening accepts. An IPv6 host without brackets is accepted
    only without a port, and only if it cannot also be read as an IPv6 address
    followed by a port: ``"::1"`` is a host, ``"::1:8786"`` is an error, which
    suggests ``"[::1]:8786"``.

    *scheme*, if given, is the scheme of the address that *address* is the
    location of: error messages quote, and suggest, whole addresses
    (``'tcp://[::1]:8786'``).

    Raises:
        AddressError: *address* is not a str; the port is missing and there is
            no *default_port*; the port is empty, not a number, or outside
            0-65535; an IPv6 host is not in brackets and either has a port or
            could be read as having one; a host holds ':' but is no IPv6
            address; a bracket is unbalanced or misplaced.
    """
    _check_str(address, "a host:port location")
    prefix = "" if scheme is None else f"{scheme}://"
    shown = prefix + address
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            raise AddressError(f"address {shown!r} opens '[' but never closes it")
        host, rest = address[1:end], address[end + 1 :]
        if not host:
            raise AddressError(f"address {shown!r} has empty brackets '[]'")
        if "[" in host:
            raise AddressError(f"address {shown!r} has '[' inside its brackets")
        if rest and not rest.startswith(":"):
            raise AddressError(
                f"address {shown!r} has {rest!r} after ']'; expected ':port' or nothing"
            )
        port_text: str | None = rest[1:] if rest else None
    elif "[" in address:
        raise AddressError(
            f"address {shown!r} has '[' inside the host; only a whole IPv6 host is "
            "bracketed, as in '[::1]:8786'"
        )
    elif "]" in address:
        raise AddressError(f"address {shown!r} closes ']' that it never opened")
    elif address.count(":") > 1:
        host = _unbracketed_ipv6(address, shown, prefix, host_alone=default_port is not None)
        port_text = None
    else:
        host, sep, tail = address.partition(":")
        port_text = tail if sep else None

    if port_text is not None:
        return host, _parse_port(port_text, shown)
    if default_port is None:
        raise AddressError(f"address {shown!r} has no port; write it as '{prefix}host:port'")
    return host, _check_port(default_port, shown)


def unparse_host_port(host: str, port: int | None = None) -> str:
    """Join *host* and *port* into a location; the inverse of :func:`parse_host_port`.

    IPv6 hosts are bracketed, once:

    >>> unparse_host_port("::1", 123)
    '[::1]:123'
    >>> unparse_host_port("[::1]", 123)
    '[::1]:123'
    >>> unparse_host_port("127.0.0.1")
    '127.0.0.1'

    Raises:
        AddressError: *host* is not a str, or *port* is not an int in 0-65535.
    """
    _check_str(host, "a host")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        host = f"[{host}]"
    if port is None:
        return host
    return f"{host}:{_check_port(port, host)}"
