"""Settings: a value set with :func:`configure` wins over the environment, then the default."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType, TracebackType
from typing import Any

from comm_core._record import Record

__all__ = ["SETTINGS", "Setting", "configure", "get_setting"]


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, yes/no, on/off), got {text!r}")


def _parse_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a finite, non-negative number of seconds, got {text!r}")
    return value


def _parse_count(text: str) -> int:
    """a whole number > 0 (``128``)"""
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"expected a positive whole number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive whole number, got {text!r}")
    return value


def _parse_size(text: str) -> int:
    """Parse ``"64MiB"``, ``"1 GB"``, ``"1048576"`` into a number of bytes."""
    units = {
        "": 1, "b": 1,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
        "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    }  # fmt: skip
    raw = text.strip().lower().replace(" ", "").replace("_", "")
    number = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(number) :]
    if unit not in units or not number:
        raise ValueError(f"expected a size such as 1048576, 64MiB or 2GB, got {text!r}")
    value = int(float(number) * units[unit])
    if value <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return value


def _parse_depth(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise ValueError(f"expected a nesting depth from 1 to 1000, got {text!r}")
    return value


def _parse_factor(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"expected a finite factor of at least 1, got {text!r}")
    return value


# Not from the string module: importing it compiles a regex, at every start-up.
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+-.")


def _parse_scheme(text: str) -> str:
    scheme = text.strip().lower()
    # The rule of parse_address(): a letter, then letters, digits, '+', '-' or '.'.
    if not (scheme[:1].isalpha() and scheme.isascii() and _SCHEME_CHARS.issuperset(scheme)):
        raise ValueError(f"expected a URI scheme such as 'tcp', got {text!r}")
    return scheme


class Setting(Record):
    """One setting: its name, environment variable, default and meaning (immutable)."""

    __slots__ = ("name", "env", "default", "parse", "doc")  # noqa: RUF023 (field order)

    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    doc: str

    def __init__(
        self, name: str, env: str, default: Any, parse: Callable[[str], Any], doc: str
    ) -> None:
        self._assign(name=name, env=env, default=default, parse=parse, doc=doc)


def _settings(*items: Setting) -> Mapping[str, Setting]:
    return MappingProxyType({item.name: item for item in items})


#: Every setting comm-core knows, by name.
SETTINGS: Mapping[str, Setting] = _settings(
    Setting(
        "default_scheme", "COMM_DEFAULT_SCHEME", "tcp", _parse_scheme,
        "Scheme assumed for an address written without one, such as '127.0.0.1:8786'.",
    ),
    Setting(
        "connect_timeout", "COMM_CONNECT_TIMEOUT", 30.0, _parse_seconds,
        "Total time budget of connect(), in seconds, retries and handshake included.",
    ),
    Setting(
        "handshake_timeout", "COMM_HANDSHAKE_TIMEOUT", 10.0, _parse_seconds,
        "Seconds a new comm may take to complete the comm handshake, on either side.",
    ),
    Setting(
        "max_pending_handshakes", "COMM_MAX_PENDING_HANDSHAKES", 128, _parse_count,
        "Most connections one listener keeps before their handshake is done; past it, the "
        "oldest silent one is dropped first. Keep it well below the descriptor limit.",
    ),
    Setting(
        "retry_delay_min", "COMM_RETRY_DELAY_MIN", 0.01, _parse_seconds,
        "Base delay of connect()'s full-jitter exponential backoff, in seconds.",
    ),
    Setting(
        "retry_delay_max", "COMM_RETRY_DELAY_MAX", 1.0, _parse_seconds,
        "Upper bound of one backoff delay between two connection attempts, in seconds.",
    ),
    Setting(
        "require_encryption", "COMM_REQUIRE_ENCRYPTION", False, _parse_bool,
        "Refuse backends that neither encrypt nor stay inside the process.",
    ),
    Setting(
        "same_host", "COMM_SAME_HOST", True, _parse_bool,
        "Let connect() to a listener on this host (or in this process) take a faster "
        "path the listener offers (a Unix socket) instead of the address given.",
    ),
    Setting(
        "same_process", "COMM_SAME_PROCESS", False, _parse_bool,
        "With same_host: let connect() to a listener in this process use inproc, whose "
        "messages are shared, not copied or serialized (off: not transparent).",
    ),
    Setting(
        "max_message_size", "COMM_MAX_MESSAGE_SIZE", 2**30, _parse_size,
        "Largest message, in bytes, that stream transports send or accept (1 GiB).",
    ),
    Setting(
        "max_message_depth", "COMM_MAX_MESSAGE_DEPTH", 100, _parse_depth,
        "Deepest nesting of lists, dicts and tuples a received message may have (1 to 1000).",
    ),
    Setting(
        "max_message_expansion", "COMM_MAX_MESSAGE_EXPANSION", 64.0, _parse_factor,
        "Most memory a received message's body may decode to, as a multiple of its size "
        "(estimated; the first MiB is free).",
    ),
    Setting(
        "disable_plugin_autoload", "COMM_DISABLE_PLUGIN_AUTOLOAD", False, _parse_bool,
        "Do not load backends from the 'comm_core.backends' entry points.",
    ),
)  # fmt: skip

_overrides: dict[str, Any] = {}
_parsed: dict[tuple[str, str], Any] = {}  # (name, environment text) -> parsed value
_MISSING = object()


def _lookup(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        known = ", ".join(sorted(SETTINGS))
        raise KeyError(f"unknown comm setting {name!r}; settings are: {known}") from None


def get_setting(name: str) -> Any:
    """Return the value of setting *name* now in force.

    Order: a value set with :func:`configure`, then the environment variable,
    then the default. A malformed environment value raises :class:`ValueError`
    naming the variable.
    """
    value = _overrides.get(name, _MISSING)
    if value is not _MISSING:
        return value
    setting = SETTINGS.get(name) or _lookup(name)
    raw = os.environ.get(setting.env)
    if raw is None:
        return setting.default
    key = (name, raw)
    value = _parsed.get(key, _MISSING)
    if value is not _MISSING:
        return value
    try:
        value = _parsed[key] = setting.parse(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {setting.env}={raw!r}: {exc}") from None
    return value


class _Restore(AbstractContextManager[None]):
    """Returned by :func:`configure`; leaving its ``with`` block restores prior values."""

    def __init__(self, previous: dict[str, Any]) -> None:
        self._previous = previous

    def restore(self) -> None:
        for name, value in self._previous.items():
            if value is _MISSING:
                _overrides.pop(name, None)
            else:
                _overrides[name] = value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def configure(**values: Any) -> AbstractContextManager[None]:
    """Set settings for this process, over the environment and the defaults.

    Use it plainly, or as a context manager that restores the previous values::

        comm_core.configure(connect_timeout=5)
        with comm_core.configure(default_scheme="inproc"):
            ...

    A value of ``None`` removes an earlier override. Strings are parsed as the
    environment variable would be.
    """
    previous: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        setting = _lookup(name)
        if isinstance(value, str):
            value = setting.parse(value)
        parsed[name] = value
    for name, value in parsed.items():
        previous[name] = _overrides.get(name, _MISSING)
        if value is None:
            _overrides.pop(name, None)
        else:
            _overrides[name] = value
    return _Restore(previous)


def iter_settings() -> Iterator[tuple[Setting, Any]]:
    """Yield every setting with its value now in force (for docs and the CLI)."""
    for setting in SETTINGS.values():
        yield setting, get_setting(setting.name)
