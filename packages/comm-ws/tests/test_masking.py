"""Masking keys: fresh for every frame, in every process."""

from __future__ import annotations

import os
import sys

import pytest

from comm_ws._protocol import _mask_key


def test_keys_are_not_handed_out_twice() -> None:
    keys = [_mask_key() for _ in range(3000)]  # more than one read of the pool
    assert all(len(key) == 4 for key in keys)
    # 3000 random 32-bit keys: a repeat is a one-in-a-thousand event, a reused pool is not.
    assert len(set(keys)) >= len(keys) - 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.skipif(sys.platform == "darwin", reason="fork() with threads is unsafe on macOS")
def test_a_forked_child_does_not_reuse_its_parents_keys() -> None:
    _mask_key()  # the pool is filled, and shared with a child forked now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(_mask_key() for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = b""
        while len(child) < 32:
            chunk = os.read(read, 32 - len(child))
            assert chunk, "the child wrote no keys"
            child += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = b"".join(_mask_key() for _ in range(8))
    assert child != parent
