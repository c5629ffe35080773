"""Import time: a fresh interpreter importing comm (with its tcp backend) vs Dask's comm."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS", "measure_imports"]

ROOT = Path(__file__).resolve().parent.parent

#: Label -> code for ``python -c``. "bare" is subtracted from the others.
COMMANDS: dict[str, str] = {
    "bare": "pass",
    "comm": "import comm_core; comm_core.get_backend('tcp')",
    "dask": "import distributed.comm",
    "baseline": "import asyncio, msgpack",
}


def _time_once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def measure_imports(runs: int, labels: list[str] | None = None) -> dict[str, Any]:
    """Time each command *runs* times, interleaved; medians in ms, raw runs kept.

    Returns ``{label: {"code", "runs_ms", "median_ms", "minus_bare_ms"}}``; a
    command that fails (its package is missing) has an ``"error"`` instead.
    """
    chosen = {k: v for k, v in COMMANDS.items() if labels is None or k in labels or k == "bare"}
    runs_ms: dict[str, list[float]] = {label: [] for label in chosen}
    errors: dict[str, str] = {}
    for label, code in chosen.items():  # one untimed run each: warm the file cache
        try:
            _time_once(code)
        except subprocess.CalledProcessError as exc:
            errors[label] = exc.stderr.decode(errors="replace").strip().splitlines()[-1]
    for _ in range(runs):
        for label, code in chosen.items():
            if label not in errors:
                runs_ms[label].append(_time_once(code) * 1000)
    bare = statistics.median(runs_ms["bare"]) if "bare" not in errors else 0.0
    result: dict[str, Any] = {}
    for label, code in chosen.items():
        if label in errors:
            result[label] = {"code": code, "error": errors[label]}
            continue
        median = statistics.median(runs_ms[label])
        result[label] = {
            "code": code,
            "runs_ms": runs_ms[label],
            "median_ms": median,
            "minus_bare_ms": median - bare,
        }
    return result
