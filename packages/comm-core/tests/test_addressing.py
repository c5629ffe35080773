from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import comm_core
from comm_core import (
    AddressError,
    normalize_address,
    parse_address,
    parse_host_port,
    unparse_address,
    unparse_host_port,
)

# -- the examples of the spec ----------------------------------------------------------


def test_parse_address_splits_scheme_and_location() -> None:
    assert parse_address("tcp://127.0.0.1:1234") == ("tcp", "127.0.0.1:1234")


def test_address_without_scheme_uses_tcp() -> None:
    assert parse_address("127.0.0.1:456") == parse_address("tcp://127.0.0.1:456")
    assert parse_address("127.0.0.1:456") == ("tcp", "127.0.0.1:456")


def test_scheme_is_lower_cased() -> None:
    assert parse_address("TCP://Host:1") == ("tcp", "Host:1")


def test_scheme_alone_is_valid_for_listening() -> None:
    assert parse_address("tcp://") == ("tcp", "")
    assert parse_address("inproc://") == ("inproc", "")


def test_location_may_hold_anything_after_the_first_separator() -> None:
    assert parse_address("inproc://host/123/4") == ("inproc", "host/123/4")
    assert parse_address("x+y.z-1://a://b") == ("x+y.z-1", "a://b")


def test_parse_host_port_ipv6() -> None:
    assert parse_host_port("[::1]:123") == ("::1", 123)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("127.0.0.1:8786", ("127.0.0.1", 8786)),
        ("example.org:0", ("example.org", 0)),
        ("example.org:65535", ("example.org", 65535)),
        (":8786", ("", 8786)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("[::ffff:1.2.3.4]:80", ("::ffff:1.2.3.4", 80)),
    ],
)
def test_parse_host_port(location: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(location) == expected


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("example.org", ("example.org", 8786)),
        ("", ("", 8786)),
        ("::1", ("::1", 8786)),
        ("[::1]", ("::1", 8786)),
        ("example.org:1", ("example.org", 1)),
    ],
)
def test_parse_host_port_default_port(location: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(location, default_port=8786) == expected


def test_unparse_host_port_brackets_ipv6_once() -> None:
    assert unparse_host_port("::1", 123) == "[::1]:123"
    assert unparse_host_port("[::1]", 123) == "[::1]:123"
    assert unparse_host_port("::1") == "[::1]"
    assert unparse_host_port("[::1]") == "[::1]"


def test_unparse_host_port_without_port() -> None:
    assert unparse_host_port("127.0.0.1") == "127.0.0.1"
    assert unparse_host_port("127.0.0.1", 0) == "127.0.0.1:0"


def test_normalize_and_unparse_address() -> None:
    assert normalize_address("127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert normalize_address("TLS://h:1") == "tls://h:1"
    assert normalize_address("inproc://") == "inproc://"
    assert unparse_address("tcp", "127.0.0.1:8786") == "tcp://127.0.0.1:8786"
    assert unparse_address("TCP", "") == "tcp://"


def test_strict_requires_a_scheme() -> None:
    assert parse_address("tcp://127.0.0.1:1", strict=True) == ("tcp", "127.0.0.1:1")
    with pytest.raises(AddressError, match=r"'127\.0\.0\.1:1' has no scheme"):
        parse_address("127.0.0.1:1", strict=True)


# -- the default scheme ----------------------------------------------------------------


def test_default_scheme_from_configure() -> None:
    with comm_core.configure(default_scheme="inproc"):
        assert parse_address("somewhere") == ("inproc", "somewhere")
        assert normalize_address("somewhere") == "inproc://somewhere"
    assert parse_address("somewhere") == ("tcp", "somewhere")


def test_default_scheme_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMM_DEFAULT_SCHEME", "TLS")
    assert parse_address("127.0.0.1:1") == ("tls", "127.0.0.1:1")
    assert parse_address("tcp://127.0.0.1:1") == ("tcp", "127.0.0.1:1")
    with comm_core.configure(default_scheme="inproc"):  # configure() wins over the env
        assert parse_address("x") == ("inproc", "x")


def test_bad_default_scheme_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMM_DEFAULT_SCHEME", "not a scheme")
    with pytest.raises(ValueError, match="COMM_DEFAULT_SCHEME"):
        parse_address("127.0.0.1:1")


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, ["NoneType", "None"]),
        (b"tcp://127.0.0.1:1", ["bytes", "b'tcp://127.0.0.1:1'"]),
        (1234, ["int", "1234"]),
    ],
)
def test_non_str_address(value: object, words: list[str]) -> None:
    for func in (parse_address, normalize_address, parse_host_port):
        with pytest.raises(AddressError) as info:
            func(value)  # type: ignore[arg-type]
        for word in words:
            assert word in str(info.value)
        assert "str" in str(info.value)


def test_non_str_host_or_scheme() -> None:
    with pytest.raises(AddressError, match="NoneType"):
        unparse_host_port(None, 1)  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="bytes"):
        unparse_address(b"tcp", "x")  # type: ignore[arg-type]
    with pytest.raises(AddressError, match="int"):
        unparse_address("tcp", 1)  # type: ignore[arg-type]


def test_empty_address() -> None:
    with pytest.raises(AddressError, match="empty address ''"):
        parse_address("")


def test_address_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="empty address"):
        parse_address("")


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("tc p://x", "invalid scheme 'tc p'"),
        ("1tcp://x", "invalid scheme '1tcp'"),
        ("tcp_x://x", "invalid scheme 'tcp_x'"),
        ("tcp/x://y", "invalid scheme 'tcp/x'"),
        ("tcp\u00e9://x", "invalid scheme"),
        ("://127.0.0.1:1", "empty scheme"),
    ],
)
def test_invalid_scheme(address: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(address)
    message = str(info.value)
    assert repr(address) in message
    assert problem in message


def test_invalid_scheme_in_unparse_address() -> None:
    with pytest.raises(AddressError, match="invalid scheme 'a b'"):
        unparse_address("a b", "x")


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("127.0.0.1", "has no port"),
        ("[::1]", "has no port"),
        ("", "has no port"),
        ("::1:8786", "brackets"),
        ("fe80::1", "brackets"),
        ("h:65536", "port 65536, outside 0-65535"),
        ("[::1]:99999", "port 99999, outside 0-65535"),
        ("h:abc", "non-numeric port 'abc'"),
        ("h:-1", "non-numeric port '-1'"),
        ("h:+80", "non-numeric port '+80'"),
        ("h: 80", "non-numeric port ' 80'"),
        ("h:\u0661\u0662", "non-numeric port"),  # Arabic-Indic digits are not a port
        ("h:", "empty port"),
        ("[::1]:", "empty port"),
        (":", "empty port"),
        ("[::1:80", "never closes"),
        ("::1]:80", "never opened"),
        ("h]:80", "never opened"),
        ("h[:80", "'[' inside the host"),
        ("a[b]:80", "'[' inside the host"),
        ("[[::1]:80", "'[' inside its brackets"),
        ("[]:80", "empty brackets"),
        ("[::1]x", "'x' after ']'"),
        ("[::1]80", "after ']'"),
    ],
)
def test_bad_host_port(location: str, problem: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port(location)
    message = str(info.value)
    assert repr(location) in message
    assert problem in message


@pytest.mark.parametrize("default_port", [None, 0, 8786])
@pytest.mark.parametrize(
    ("location", "advice"),
    [
        ("::1:123", "'[::1]:123' for port 123 of ::1"),
        ("::1:8786", "'[::1]:8786' for port 8786 of ::1"),
        ("fe80::1:2", "'[fe80::1]:2' for port 2 of fe80::1"),
        ("::2:3", "'[::2]:3' for port 3 of ::2"),
        ("::ffff:1.2.3.4:80", "'[::ffff:1.2.3.4]:80' for port 80 of ::ffff:1.2.3.4"),
        ("::1:99999", "'[::1]:99999' for port 99999 of ::1"),  # no IPv6 address itself
    ],
)
def test_unbracketed_ipv6_with_a_port_is_refused(
    location: str, advice: str, default_port: int | None
) -> None:
    """An IPv6 host followed by a port, without brackets, is never taken for a host (nor
    split): ``::1:123`` would be the IPv6 address ``::1:123``, or port 123 of ``::1``."""
    with pytest.raises(AddressError) as info:
        parse_host_port(location, default_port=default_port)
    message = str(info.value)
    assert repr(location) in message
    assert "IPv6 addresses need brackets" in message
    assert f"write {advice}" in message


def test_an_ambiguous_location_names_both_readings() -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port("::1:123", default_port=0, scheme="tcp")
    assert str(info.value) == (
        "address 'tcp://::1:123' is ambiguous: IPv6 addresses need brackets: write "
        "'tcp://[::1]:123' for port 123 of ::1, or 'tcp://[::1:123]' for the host ::1:123"
    )
    with pytest.raises(AddressError, match=r"or '\[::1:123\]:<port>' for the host") as info:
        parse_host_port("::1:123")


@pytest.mark.parametrize(
    "host",
    ["::1", "::", "1::", "fe80::1", "fe80::1%eth0", "2001:db8:0:0:0:0:0:1", "::ffff:1.2.3.4"],
)
def test_unbracketed_ipv6_host_alone(host: str) -> None:
    """Where a host alone is enough (a default port), an IPv6 address that cannot be read
    as one followed by a port needs no brackets; with a port to find, it is refused."""
    assert parse_host_port(host, default_port=8786) == (host, 8786)
    with pytest.raises(AddressError) as info:
        parse_host_port(host)
    assert f"address {host!r} has no port" in str(info.value)
    assert f"'[{host}]:8786'" in str(info.value)


@pytest.mark.parametrize("default_port", [None, 0])
@pytest.mark.parametrize("location", ["a:b:c", "127.0.0.1:1:2", "example.org:80:80", "::1:", "::g"])
def test_colons_in_a_host_that_is_no_ipv6_address(location: str, default_port: int | None) -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port(location, default_port=default_port)
    assert f"address {location!r} is not 'host:port'" in str(info.value)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("127.0.0.1", "address 'tls://127.0.0.1' has no port; write it as 'tls://host:port'"),
        ("", "address 'tls://' has no port; write it as 'tls://host:port'"),
        ("h:x", "address 'tls://h:x' has a non-numeric port 'x'"),
        ("[::1", "address 'tls://[::1' opens '[' but never closes it"),
        ("h:70000", "address 'tls://h:70000' has port 70000, outside 0-65535"),
        ("fe80::1", "address 'tls://fe80::1' has no port: IPv6 addresses need brackets"),
    ],
)
def test_scheme_makes_messages_quote_the_whole_address(location: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port(location, scheme="tls")
    assert str(info.value).startswith(message)


def test_string_functions_do_not_look_inside_locations() -> None:
    """parse_address, normalize_address and unparse_address leave the location to its
    backend: a malformed tcp location passes through them, and the backend's functions
    (get_address_host, ...; comm-tcp's tests) refuse it."""
    assert parse_address("tcp://::1:123") == ("tcp", "::1:123")
    assert normalize_address("::1:123") == "tcp://::1:123"
    assert unparse_address("tcp", "::1:123") == "tcp://::1:123"


@pytest.mark.parametrize("port", [65536, -1, 10**10])
def test_unparse_host_port_out_of_range(port: int) -> None:
    with pytest.raises(AddressError, match=f"port {port}, outside 0-65535") as info:
        unparse_host_port("example.org", port)
    assert "'example.org'" in str(info.value)


@pytest.mark.parametrize("port", ["80", 80.0, True])
def test_unparse_host_port_port_type(port: object) -> None:
    with pytest.raises(AddressError, match="must be an int"):
        unparse_host_port("example.org", port)  # type: ignore[arg-type]


def test_default_port_is_checked() -> None:
    with pytest.raises(AddressError, match="outside 0-65535"):
        parse_host_port("example.org", default_port=70000)


# -- properties --------------------------------------------------------------------------

_label = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hostnames = st.lists(_label, min_size=1, max_size=4).map(".".join)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(hostnames, ipv4, ipv6, st.just(""))
ports = st.integers(min_value=0, max_value=65535)
schemes = st.from_regex(r"[A-Za-z][A-Za-z0-9+.\-]{0,10}", fullmatch=True)


@given(host=hosts, port=ports)
def test_host_port_round_trip(host: str, port: int) -> None:
    assert parse_host_port(unparse_host_port(host, port)) == (host, port)


@given(host=ipv6, port=ports)
def test_ipv6_round_trip_through_brackets(host: str, port: int) -> None:
    location = unparse_host_port(host, port)
    assert location.startswith(f"[{host}]:")
    assert unparse_host_port(f"[{host}]", port) == location
    assert parse_host_port(location) == (host, port)


@given(host=hosts, port=ports)
def test_host_without_port_round_trip(host: str, port: int) -> None:
    assert parse_host_port(unparse_host_port(host), default_port=port) == (host, port)


@given(scheme=schemes, location=st.text())
def test_address_round_trip(scheme: str, location: str) -> None:
    address = unparse_address(scheme, location)
    assert parse_address(address) == (scheme.lower(), location)
    assert normalize_address(address) == address
    assert normalize_address(normalize_address(address)) == address


@given(text=st.text())
def test_parse_address_raises_only_address_error(text: str) -> None:
    try:
        scheme, location = parse_address(text)
    except AddressError:
        return
    assert normalize_address(text) == f"{scheme}://{location}"


@given(text=st.text(), default_port=st.none() | st.integers())
def test_parse_host_port_raises_only_address_error(text: str, default_port: int | None) -> None:
    try:
        host, port = parse_host_port(text, default_port=default_port)
    except AddressError:
        return
    assert isinstance(host, str)
    assert 0 <= port <= 65535


@given(text=st.text(alphabet="[]:.0123456789abf", max_size=12))
def test_parse_host_port_on_address_like_text(text: str) -> None:
    try:
        host, port = parse_host_port(text)
    except AddressError:
        return
    assert "[" not in host
    assert "]" not in host
    assert parse_host_port(unparse_host_port(host, port)) == (host, port)


@given(host=ipv6, port=ports, default_port=st.none() | ports)
def test_unbracketed_ipv6_and_port_is_never_a_host(
    host: str, port: int, default_port: int | None
) -> None:
    with pytest.raises(AddressError) as info:
        parse_host_port(f"{host}:{port}", default_port=default_port)
    assert f"'[{host}]:{port}' for port {port} of {host}" in str(info.value)


@given(host=ipv6, default_port=ports)
def test_unbracketed_ipv6_alone_is_a_host_unless_ambiguous(host: str, default_port: int) -> None:
    head, _, tail = host.rpartition(":")
    try:
        ipaddress.IPv6Address(head)
    except ValueError:
        with_port = False
    else:
        with_port = tail.isdigit()
    if not with_port:
        assert parse_host_port(host, default_port=default_port) == (host, default_port)
        return
    # It reads as an IPv6 address followed by a port, too: refused, both readings named.
    with pytest.raises(AddressError) as info:
        parse_host_port(host, default_port=default_port)
    assert f"'[{head}]:{tail}' for port {tail} of {head}" in str(info.value)
    assert f"'[{host}]' for the host {host}" in str(info.value)
