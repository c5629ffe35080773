from __future__ import annotations

import builtins
import re

import pytest

import comm_core
from comm_core import exceptions

_TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)(?: \(\+ (?P<extra>\w+)\))?(\s|$)")


def _documented_tree() -> list[tuple[str, str | None, str | None]]:
    """``(class, parent, extra base)`` for each line of the tree in the module docstring."""
    doc = exceptions.__doc__
    assert doc is not None
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    rows: list[tuple[str, str | None, str | None]] = []
    stack: list[str] = []
    for line in block.splitlines():
        match = _TREE_LINE.match(line.removeprefix("    "))
        assert match, f"unparsable line in the exceptions docstring: {line!r}"
        depth = len(match["indent"]) // 4
        del stack[depth:]
        rows.append((match["name"], stack[-1] if stack else None, match["extra"]))
        stack.append(match["name"])
    return rows


def test_docstring_tree_names_every_exception() -> None:
    documented = [name for name, _, _ in _documented_tree()]
    assert sorted(documented) == sorted(exceptions.__all__)


def test_docstring_tree_matches_the_classes() -> None:
    for name, parent, extra in _documented_tree():
        cls = getattr(exceptions, name)
        if parent is None:
            assert cls.__bases__ == (Exception,)
        else:
            assert parent in [base.__name__ for base in cls.__bases__], name
        if extra is not None:
            assert issubclass(cls, getattr(builtins, extra)), name


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (comm_core.CommClosedError, OSError),
        (comm_core.FatalCommClosedError, comm_core.CommClosedError),
        (comm_core.ConnectError, OSError),
        (comm_core.ConnectTimeoutError, TimeoutError),
        (comm_core.ConnectTimeoutError, comm_core.ConnectError),
        (comm_core.HandshakeTimeoutError, TimeoutError),
        (comm_core.HandshakeTimeoutError, comm_core.HandshakeError),
        (comm_core.IncompatibleProtocolError, comm_core.HandshakeError),
        (comm_core.HandshakeError, comm_core.ProtocolError),
        (comm_core.HandshakeError, OSError),
        (comm_core.IncompatibleProtocolError, OSError),
        (comm_core.HandshakeTimeoutError, OSError),
        (comm_core.MessageTooLargeError, comm_core.ProtocolError),
        (comm_core.AddressError, ValueError),
        (comm_core.UnknownSchemeError, comm_core.AddressError),
        (comm_core.BackendConflictError, comm_core.BackendError),
        (comm_core.PluginError, comm_core.BackendError),
        (comm_core.EncryptionRequiredError, ValueError),
    ],
)
def test_hierarchy(cls: type[BaseException], base: type[BaseException]) -> None:
    assert issubclass(cls, base)
    assert issubclass(cls, comm_core.CommError)


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (comm_core.AddressError, OSError),
        (comm_core.ProtocolError, OSError),
        (comm_core.BackendError, ValueError),
        (comm_core.CommClosedError, comm_core.ConnectError),
        (comm_core.ConnectError, TimeoutError),
        (comm_core.HandshakeError, comm_core.ConnectError),  # never retried by connect()
        (comm_core.MessageTooLargeError, OSError),
    ],
)
def test_not_subclass(cls: type[BaseException], base: type[BaseException]) -> None:
    assert not issubclass(cls, base)


def test_every_exception_is_exported_from_the_package() -> None:
    for name in exceptions.__all__:
        assert getattr(comm_core, name) is getattr(exceptions, name)
        assert name in comm_core.__all__


def test_attributes() -> None:
    exc = comm_core.ConnectTimeoutError("m", address="tcp://h:1", elapsed=1.5, attempts=3)
    assert (exc.address, exc.elapsed, exc.attempts, str(exc)) == ("tcp://h:1", 1.5, 3, "m")
    big = comm_core.MessageTooLargeError("m", size=10, limit=5)
    assert (big.size, big.limit) == (10, 5)
    unknown = comm_core.UnknownSchemeError("m", scheme="x", known=("tcp",))
    assert (unknown.scheme, unknown.known) == ("x", ("tcp",))
