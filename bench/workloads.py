"""The client side of each workload; the server side is :func:`bench.server.make_handler`.

Each workload connects to a benchmark server, warms up, then measures; every
loop stops at its count or its time budget (see :class:`bench.config.Limits`),
whichever comes first. All return a flat dict of figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import memory, rawsock
from bench.config import Cell, Limits
from bench.impls import Impl

__all__ = ["WORKLOADS", "raw_put"]

SMALL = b"x" * 16
NS = 1_000_000_000


def _percentile(sorted_values: list[int], q: float) -> float:
    """The *q*-quantile (0..1) of *sorted_values*, nearest-rank."""
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return float(sorted_values[index])


# -- W1: small round trips -------------------------------------------------------------


async def _round_trips(conn: Any, count: int, seconds: float) -> tuple[list[int], float]:
    """Up to *count* ping round trips in *seconds*; their latencies (ns) and the elapsed s."""
    clock = time.perf_counter_ns
    data = SMALL
    latencies: list[int] = []
    start = clock()
    deadline = start + int(seconds * NS)
    for i in range(count):
        msg = {"op": "ping", "i": i, "data": data}
        sent = clock()
        await conn.write(msg)
        reply = await conn.read()
        done = clock()
        latencies.append(done - sent)
        if reply["i"] != i:
            raise AssertionError(f"round trip {i} got the reply of {reply['i']}")
        if done > deadline:
            break
    return latencies, (clock() - start) / NS


async def w1(impl: Impl, address: str, cell: Cell) -> dict[str, Any]:
    limits = cell.limits
    conn = await impl.connect(address)
    try:
        await _round_trips(conn, limits.w1_warmup, limits.w1_seconds)
        latencies, elapsed = await _round_trips(conn, limits.w1_count, limits.w1_seconds)
    finally:
        await conn.close()
    latencies.sort()
    return {
        "round_trips_per_s": len(latencies) / elapsed,
        "p50_us": _percentile(latencies, 0.50) / 1000,
        "p99_us": _percentile(latencies, 0.99) / 1000,
        "mean_us": statistics.fmean(latencies) / 1000,
        "round_trips": len(latencies),
    }


# -- W2: pipelined small messages ----------------------------------------------------------


async def _pipeline(conn: Any, count: int, seconds: float) -> tuple[int, float]:
    """Write up to *count* pushes without waiting, then sync; the number sent and elapsed s."""
    clock = time.perf_counter
    data = SMALL
    sent = 0
    start = clock()
    deadline = start + seconds
    for i in range(count):
        await conn.write({"op": "push", "i": i, "data": data})
        sent += 1
        if not i & 1023 and clock() > deadline:
            break
    await conn.write({"op": "sync"})
    reply = await conn.read()
    elapsed = clock() - start
    if reply["n"] != sent:
        raise AssertionError(f"wrote {sent} messages but the server counted {reply['n']}")
    return sent, elapsed


async def w2(impl: Impl, address: str, cell: Cell) -> dict[str, Any]:
    limits = cell.limits
    conn = await impl.connect(address)
    try:
        await _pipeline(conn, limits.w2_warmup, limits.w2_seconds)
        sent, elapsed = await _pipeline(conn, limits.w2_count, limits.w2_seconds)
    finally:
        await conn.close()
    return {"messages_per_s": sent / elapsed, "messages": sent}


# -- W3: large messages --------------------------------------------------------------------


def _puts(limits: Limits, size: int) -> int:
    return max(limits.w3_min_puts, limits.w3_bytes // size)


def _throughput(size: int, times: list[float]) -> dict[str, Any]:
    """MB/s of the puts after the first, and the first's apart.

    The first put of a size is the first to receive into that much fresh memory:
    it pays for the process's first touch of it (several times the cost of later
    puts on a VM), which the raw socket's full-size warm-up puts have paid
    before it is timed. From the second put on, every implementation is timed
    in the same steady state.
    """
    steady = times[1:] or times
    return {
        "mb_per_s": size * len(steady) / sum(steady) / 1e6,
        "first_put_mb_per_s": size / times[0] / 1e6,
        "puts": len(times),
        "put_seconds": times,
    }


async def _put(conn: Any, payload: bytes) -> None:
    await conn.write({"op": "put", "data": payload})
    reply = await conn.read()
    if reply["n"] != len(payload):
        raise AssertionError(f"put {len(payload)} bytes, the server got {reply['n']}")


async def _stats(conn: Any, reset: bool) -> dict[str, Any]:
    await conn.write({"op": "stats", "reset": reset})
    return dict(await conn.read())


def _growth(peak: int | None, base: int | None, size: int) -> float | None:
    return None if peak is None or base is None else (peak - base) / size


async def w3(impl: Impl, address: str, cell: Cell) -> dict[str, Any]:
    """One-way throughput of ``put`` messages, and peak RSS growth per payload byte.

    RSS growth is VmHWM after the puts minus VmRSS before the payload is
    allocated, over the payload size: the payload itself counts 1.0 in the
    process that allocates it, a receive buffer 1.0 in the one that receives.
    """
    limits, size = cell.limits, cell.size
    assert size is not None
    two_process = cell.mode == "two"
    conn = await impl.connect(address)
    try:
        warm = b"x" * limits.w3_warmup_size
        for _ in range(limits.w3_warmup):
            await _put(conn, warm)
        del warm
        server_before = await _stats(conn, reset=True) if two_process else None
        memory.settle()
        base = memory.rss()
        reset = memory.reset_peak()
        payload = b"x" * size  # b"x" * n writes every page: it is resident at once
        times: list[float] = []
        deadline = time.perf_counter() + limits.w3_seconds
        for _ in range(_puts(limits, size)):
            start = time.perf_counter()
            await _put(conn, payload)
            end = time.perf_counter()
            times.append(end - start)
            if end > deadline:
                break
        peak = memory.peak_rss()
        server_after = await _stats(conn, reset=False) if two_process else None
    finally:
        await conn.close()
    result: dict[str, Any] = {
        **_throughput(size, times),
        "rss_growth": _growth(peak, base, size),
        "peak_reset": reset,
    }
    if server_before is not None and server_after is not None:
        result["server_rss_growth"] = _growth(server_after["peak"], server_before["rss"], size)
        result["server_peak_reset"] = server_before["reset"]
    return result


def raw_put(address: str, cell: Cell) -> dict[str, Any]:
    """W3 over blocking sockets (no event loop): the ceiling for "% of raw socket"."""
    limits, size = cell.limits, cell.size
    assert size is not None
    with rawsock.connect(address) as sock:
        payload = b"x" * size
        for _ in range(limits.w3_warmup):  # full size: the receiver's buffer is then resident
            rawsock.put(sock, payload)
        times: list[float] = []
        deadline = time.perf_counter() + limits.w3_seconds
        for _ in range(_puts(limits, size)):
            start = time.perf_counter()
            rawsock.put(sock, payload)
            end = time.perf_counter()
            times.append(end - start)
            if end > deadline:
                break
    return _throughput(size, times)


# -- W4: connection setup ------------------------------------------------------------------


async def _connections(impl: Impl, address: str, count: int, seconds: float) -> tuple[int, float]:
    """Up to *count* connect + handshake + round trip + close in *seconds*."""
    clock = time.perf_counter
    done = 0
    start = clock()
    deadline = start + seconds
    while done < count:
        conn = await impl.connect(address)
        await conn.write({"op": "ping", "i": done, "data": SMALL})
        await conn.read()
        await conn.close()
        done += 1
        if clock() > deadline:
            break
    return done, clock() - start


async def w4(impl: Impl, address: str, cell: Cell) -> dict[str, Any]:
    limits = cell.limits
    await _connections(impl, address, limits.w4_warmup, limits.w4_seconds)
    done, elapsed = await _connections(impl, address, limits.w4_count, limits.w4_seconds)
    return {"connections_per_s": done / elapsed, "connections": done}


Workload = Callable[[Impl, str, Cell], Awaitable[dict[str, Any]]]

#: The client coroutine of each workload.
WORKLOADS: dict[str, Workload] = {"W1": w1, "W2": w2, "W3": w3, "W4": w4}
