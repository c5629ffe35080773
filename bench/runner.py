"""Measure one cell in this (fresh) process and print its figures as JSON.

``python -m bench.runner '<cell as JSON>'`` is what ``python -m bench`` runs for
every cell and repeat, so that no cell inherits another's imports, garbage or
memory peak. In ``one`` mode the listener runs on this process's event loop; in
``two`` mode a server process is started (see :mod:`bench.server`). The last
line on stdout is ``{"metrics": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import traceback
from typing import Any

from bench import server
from bench.config import BACKENDS, Cell
from bench.impls import get_impl
from bench.loops import run
from bench.workloads import WORKLOADS, raw_put

__all__ = ["measure"]


async def _measure_async(cell: Cell) -> dict[str, Any]:
    impl = get_impl(cell.impl)
    workload = WORKLOADS[cell.workload]
    listen = BACKENDS[cell.backend].listen
    # Leave a margin so that a hang is reported from here, with the stack of the wait.
    budget = cell.limits.cell_timeout * 0.8
    if cell.mode == "one":
        started = await server.start(impl, listen)
        try:
            return await asyncio.wait_for(workload(impl, started.address, cell), budget)
        finally:
            await started.stop()
    with server.server_process(cell.impl, listen, cell.loop) as address:
        return await asyncio.wait_for(workload(impl, address, cell), budget)


def _measure_raw(cell: Cell) -> dict[str, Any]:
    from bench.rawsock import RawServer

    if cell.mode == "one":
        raw_server = RawServer(BACKENDS[cell.backend].listen)
        try:
            return raw_put(raw_server.address, cell)
        finally:
            raw_server.close()
    with server.server_process("raw", BACKENDS[cell.backend].listen, cell.loop) as address:
        return raw_put(address, cell)


def measure(cell: Cell) -> dict[str, Any]:
    """Run *cell* on its event loop; return its figures."""
    if cell.impl == "raw":
        return _measure_raw(cell)
    return run(_measure_async(cell), cell.loop)


def main() -> int:
    cell = Cell.from_json(json.loads(sys.argv[1]))
    # comm's same-host selection only where the row asks for it (tcp+select), here and
    # in the server process, which inherits the environment.
    os.environ["COMM_SAME_HOST"] = "1" if BACKENDS[cell.backend].same_host else "0"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the result
            metrics = measure(cell)
    except BaseException as exc:
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) and not str(exc):
            exc = TimeoutError(f"timed out after {cell.limits.cell_timeout * 0.8:g}s")
        text = "".join(traceback.format_exception(exc))
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "traceback": text}))
        return 1
    print(json.dumps({"metrics": metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
