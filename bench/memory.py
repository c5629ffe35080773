"""Resident memory of this process, from ``/proc/self/status`` (Linux)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

__all__ = ["peak_rss", "reset_peak", "rss", "settle"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss() -> int | None:
    """Resident set size now (VmRSS), in bytes; ``None`` where unknown."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss() -> int | None:
    """Peak resident set size (VmHWM), in bytes; ``None`` where unknown."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); return whether that worked."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def settle() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc), for a clean baseline."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)
