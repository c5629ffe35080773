"""``comm bench`` in this process, over test backends registered in code."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import pytest

import comm_core
from comm_core.abc import Comm, Connector
from comm_core.cli import main
from memory_backend import InProcessMemoryBackend, MemoryComm, MemoryConnector


class _LossyComm(MemoryComm):
    """Drops the messages of 1 KiB or more that it writes, as a broken transport would."""

    async def write(self, msg: Any, serializers: Any = None, on_error: Any = "raise") -> int:
        if isinstance(msg, bytes) and len(msg) >= 1024:
            return 0
        return await super().write(msg, serializers, on_error)


class _ShortComm(MemoryComm):
    """Writes the messages of 1 KiB or more one byte short, as a broken transport would."""

    async def write(self, msg: Any, serializers: Any = None, on_error: Any = "raise") -> int:
        if isinstance(msg, bytes) and len(msg) >= 1024:
            msg = msg[:-1]
        return await super().write(msg, serializers, on_error)


class _BrokenConnector(MemoryConnector):
    comm_class: ClassVar[type[MemoryComm]]

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        comm = await super().connect(address, deserialize, **connection_args)
        assert type(comm) is MemoryComm
        comm.__class__ = self.comm_class
        return comm


class _LossyConnector(_BrokenConnector):
    comm_class = _LossyComm


class _ShortConnector(_BrokenConnector):
    comm_class = _ShortComm


class LossyBackend(InProcessMemoryBackend):
    scheme: ClassVar[str] = "lossy"

    def get_connector(self) -> Connector:
        return _LossyConnector(self)


class ShortBackend(InProcessMemoryBackend):
    scheme: ClassVar[str] = "short"

    def get_connector(self) -> Connector:
        return _ShortConnector(self)


def test_bench_of_a_transport_in_this_process_that_loses_messages(
    registry: comm_core.Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    comm_core.register_backend(LossyBackend)
    argv = ["bench", "lossy", "--sizes", "64", "4KiB", "--duration", "0.02", "--timeout", "0.2"]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[3].split() == ["lossy", "failed", "-", "-", "-", "-"]
    # Not "is it `comm serve`?": the listener is bench's own, in this process.
    assert re.fullmatch(
        r"comm: error: lossy: the lossy:// listener that comm bench runs in this process "
        r"\(lossy://[\w-]+\) did not send the 4 KiB messages back within 0\.2 s after the "
        r"measurement: the transport lost or held up messages; --timeout allows more time\n",
        err,
    ), err


def test_bench_of_a_transport_in_this_process_that_alters_messages(
    registry: comm_core.Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    comm_core.register_backend(ShortBackend)
    argv = ["bench", "short", "--sizes", "4KiB", "--duration", "0.02", "--timeout", "1"]
    assert main(argv) == 1
    _, err = capsys.readouterr()
    assert err.startswith(
        "comm: error: short: the short:// listener that comm bench runs in this process did "
        "not send the message back as it was sent (it sent bytes b'"
    )
    assert err.endswith("): the transport altered it\n")
    assert "comm serve" not in err
