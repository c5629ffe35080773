from __future__ import annotations

import pytest

import comm_core
from comm_core import configure, get_setting
from comm_core._config import iter_settings

DEFAULTS = {
    "default_scheme": "tcp",
    "connect_timeout": 30.0,
    "handshake_timeout": 10.0,
    "max_pending_handshakes": 128,
    "retry_delay_min": 0.01,
    "retry_delay_max": 1.0,
    "require_encryption": False,
    "same_host": True,
    "same_process": False,
    "max_message_size": 2**30,
    "max_message_depth": 100,
    "max_message_expansion": 64.0,
    "disable_plugin_autoload": False,
}


def test_defaults() -> None:
    assert {name: get_setting(name) for name in comm_core.SETTINGS} == DEFAULTS


def test_every_setting_is_documented() -> None:
    for name, setting in comm_core.SETTINGS.items():
        assert setting.name == name
        assert setting.env == f"COMM_{name.upper()}"
        assert setting.doc
    assert {s.name: value for s, value in iter_settings()} == DEFAULTS


@pytest.mark.parametrize(
    ("env", "raw", "name", "value"),
    [
        ("COMM_DEFAULT_SCHEME", " TLS ", "default_scheme", "tls"),
        ("COMM_DEFAULT_SCHEME", "ws+tls", "default_scheme", "ws+tls"),
        ("COMM_CONNECT_TIMEOUT", "2.5", "connect_timeout", 2.5),
        ("COMM_CONNECT_TIMEOUT", "0", "connect_timeout", 0.0),
        ("COMM_HANDSHAKE_TIMEOUT", "3", "handshake_timeout", 3.0),
        ("COMM_MAX_MESSAGE_DEPTH", "1000", "max_message_depth", 1000),
        ("COMM_MAX_MESSAGE_EXPANSION", "8", "max_message_expansion", 8.0),
        ("COMM_RETRY_DELAY_MIN", "0.5", "retry_delay_min", 0.5),
        ("COMM_RETRY_DELAY_MAX", "1e1", "retry_delay_max", 10.0),
        ("COMM_REQUIRE_ENCRYPTION", "1", "require_encryption", True),
        ("COMM_REQUIRE_ENCRYPTION", "Yes", "require_encryption", True),
        ("COMM_REQUIRE_ENCRYPTION", "on", "require_encryption", True),
        ("COMM_REQUIRE_ENCRYPTION", "false", "require_encryption", False),
        ("COMM_REQUIRE_ENCRYPTION", "", "require_encryption", False),
        ("COMM_MAX_MESSAGE_SIZE", "1048576", "max_message_size", 2**20),
        ("COMM_MAX_MESSAGE_SIZE", "64MiB", "max_message_size", 64 * 2**20),
        ("COMM_MAX_MESSAGE_SIZE", "1 GB", "max_message_size", 10**9),
        ("COMM_MAX_MESSAGE_SIZE", "1.5kib", "max_message_size", 1536),
        ("COMM_MAX_MESSAGE_SIZE", "10_000", "max_message_size", 10_000),
        ("COMM_DISABLE_PLUGIN_AUTOLOAD", "true", "disable_plugin_autoload", True),
        ("COMM_MAX_PENDING_HANDSHAKES", " 64 ", "max_pending_handshakes", 64),
        ("COMM_MAX_PENDING_HANDSHAKES", "1_000", "max_pending_handshakes", 1000),
    ],
)
def test_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, raw: str, name: str, value: object
) -> None:
    monkeypatch.setenv(env, raw)
    assert get_setting(name) == value


@pytest.mark.parametrize(
    ("env", "raw", "name"),
    [
        ("COMM_DEFAULT_SCHEME", "", "default_scheme"),
        ("COMM_DEFAULT_SCHEME", "t/c", "default_scheme"),
        ("COMM_DEFAULT_SCHEME", "1tcp", "default_scheme"),
        ("COMM_DEFAULT_SCHEME", "tcp\u00e9", "default_scheme"),
        ("COMM_CONNECT_TIMEOUT", "soon", "connect_timeout"),
        ("COMM_CONNECT_TIMEOUT", "-1", "connect_timeout"),
        ("COMM_CONNECT_TIMEOUT", "nan", "connect_timeout"),
        ("COMM_HANDSHAKE_TIMEOUT", "inf", "handshake_timeout"),
        ("COMM_REQUIRE_ENCRYPTION", "maybe", "require_encryption"),
        ("COMM_MAX_MESSAGE_SIZE", "0", "max_message_size"),
        ("COMM_MAX_MESSAGE_SIZE", "64XB", "max_message_size"),
        ("COMM_MAX_MESSAGE_SIZE", "MiB", "max_message_size"),
        ("COMM_MAX_MESSAGE_SIZE", "-5", "max_message_size"),
        ("COMM_DISABLE_PLUGIN_AUTOLOAD", "2", "disable_plugin_autoload"),
        ("COMM_MAX_PENDING_HANDSHAKES", "0", "max_pending_handshakes"),
        ("COMM_MAX_PENDING_HANDSHAKES", "many", "max_pending_handshakes"),
        ("COMM_MAX_PENDING_HANDSHAKES", "2.5", "max_pending_handshakes"),
    ],
)
def test_bad_environment_value(
    monkeypatch: pytest.MonkeyPatch, env: str, raw: str, name: str
) -> None:
    monkeypatch.setenv(env, raw)
    with pytest.raises(ValueError, match=f"environment variable {env}={raw!r}"):
        get_setting(name)


def test_configure_plain_call() -> None:
    configure(connect_timeout=5)
    assert get_setting("connect_timeout") == 5
    configure(connect_timeout=None)  # None removes the override
    assert get_setting("connect_timeout") == 30.0


def test_configure_parses_strings() -> None:
    configure(connect_timeout="2.5", max_message_size="1KiB", require_encryption="yes")
    assert get_setting("connect_timeout") == 2.5
    assert get_setting("max_message_size") == 1024
    assert get_setting("require_encryption") is True


def test_configure_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMM_CONNECT_TIMEOUT", "7")
    assert get_setting("connect_timeout") == 7.0
    with configure(connect_timeout=1):
        assert get_setting("connect_timeout") == 1
    assert get_setting("connect_timeout") == 7.0


def test_configure_as_context_manager_restores() -> None:
    configure(connect_timeout=5)
    with configure(connect_timeout=1, handshake_timeout=2):
        assert (get_setting("connect_timeout"), get_setting("handshake_timeout")) == (1, 2)
        with configure(connect_timeout=None):
            assert get_setting("connect_timeout") == 30.0
        assert get_setting("connect_timeout") == 1
    assert get_setting("connect_timeout") == 5  # the plain call's value is back
    assert get_setting("handshake_timeout") == 10.0  # no earlier override: the default


def test_configure_restores_after_an_error() -> None:
    seen = []

    def use_then_fail() -> None:
        with configure(default_scheme="inproc"):
            seen.append(get_setting("default_scheme"))
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        use_then_fail()
    assert seen == ["inproc"]
    assert get_setting("default_scheme") == "tcp"


def test_unknown_setting() -> None:
    with pytest.raises(KeyError, match=r"unknown comm setting 'conect_timeout'.*connect_timeout"):
        configure(conect_timeout=1)
    with pytest.raises(KeyError, match="unknown comm setting 'nope'"):
        get_setting("nope")


def test_bad_value_changes_nothing() -> None:
    with pytest.raises(ValueError, match="seconds"):
        configure(handshake_timeout=1, connect_timeout="-3")
    assert get_setting("handshake_timeout") == 10.0
    with pytest.raises(KeyError):
        configure(handshake_timeout=1, nope=2)
    assert get_setting("handshake_timeout") == 10.0
