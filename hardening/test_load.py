"""Load: a thousand comms at once, ten thousand connect/close cycles, a slow reader.

Nothing may be left behind (descriptors and tasks back to where they
started) and a writer facing a slow reader keeps its memory flat.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from comm_core import Comm
from support import (
    KiB,
    MiB,
    Transport,
    connect,
    echo,
    fd_count,
    linux_only,
    other_tasks,
    percentile,
    record,
    round_trips,
    serving,
    settle,
    until,
    within,
)

HERE = Path(__file__).parent

pytestmark = linux_only


@pytest.fixture
def tcp() -> Transport:
    return Transport("tcp")


async def test_a_thousand_comms_at_once(tcp: Transport, scale: Any) -> None:
    """1,000 comms open at once on one listener, all exchanging messages concurrently."""
    count = 1000 * (2 if scale.soak else 1)
    exchanges = scale.count(10)
    loop = asyncio.get_running_loop()
    async with serving(tcp, echo, backlog=2048) as served:
        # One comm first: the loop's own lazily made descriptors (uvloop's for name
        # resolution) are then in the baseline.
        async with await connect(tcp, served.port) as comm:
            await round_trips(comm, 1)
        await until(lambda: not served.tasks, "the first comm's handler to return")
        served.forget()
        gc.collect()
        fds_before, tasks_before = fd_count(), len(other_tasks())
        start = loop.time()
        comms: list[Comm] = await within(
            asyncio.gather(*(connect(tcp, served.port, timeout=60) for _ in range(count))),
            f"{count} connects",
            timeout=120,
        )
        opened = loop.time() - start
        try:
            assert len({comm.local_address for comm in comms}) == count
            fds_open = fd_count()
            start = loop.time()
            times = await within(
                asyncio.gather(
                    *(round_trips(comm, exchanges, payload=b"x" * 100) for comm in comms)
                ),
                "every comm's round trips",
                timeout=120,
            )
            exchanged = loop.time() - start
        finally:
            await asyncio.gather(*(comm.close() for comm in comms))
        assert len(served.comms) == count
        del comms
        served.forget()
        gc.collect()
        fds_after, tasks_after, settled = await settle(
            fds_before, tasks_before, "after 1,000 comms"
        )
    assert tasks_after == tasks_before
    flat = [t for per_comm in times for t in per_comm]
    record("load.thousand.comms", count, "comms")
    record("load.thousand.open_all", round(opened, 2), "s", comms=count)
    record("load.thousand.round_trips_per_s", round(len(flat) / exchanged), "1/s",
           round_trips=len(flat))  # fmt: skip
    record("load.thousand.round_trip_p99", round(percentile(flat, 99) * 1e3, 2), "ms",
           concurrent=count)  # fmt: skip
    record("load.thousand.fds_open", fds_open, "fds")
    record("load.thousand.fds_before", fds_before, "fds")
    record("load.thousand.fds_after", fds_after, "fds", settle_s=round(settled, 2))


async def test_connect_handshake_close_cycles_leave_nothing(tcp: Transport, scale: Any) -> None:
    """10,000 connect/handshake/close cycles: descriptors and tasks back where they started."""
    cycles = scale.count(10_000)
    workers = 4
    loop = asyncio.get_running_loop()
    async with serving(tcp, echo) as served:
        # One cycle first: imports, caches and the listener's own state are in place.
        async with await connect(tcp, served.port) as comm:
            await round_trips(comm, 1)
        await until(lambda: not served.tasks, "the first cycle's handler to return")
        served.forget()
        gc.collect()
        fds_before, tasks_before = fd_count(), len(other_tasks())
        objects_before = len(gc.get_objects())
        done = 0
        deadline = loop.time() + scale.seconds(120)

        async def worker(share: int) -> None:
            nonlocal done
            for _ in range(share):
                if loop.time() > deadline:
                    return
                comm = await connect(tcp, served.port)
                await comm.close()
                done += 1
                served.forget()  # closed, or closing: keep no reference

        start = loop.time()
        await within(
            asyncio.gather(*(worker(cycles // workers) for _ in range(workers))),
            f"{cycles} cycles",
            timeout=scale.seconds(150),
        )
        elapsed = loop.time() - start
        assert done == cycles, f"only {done} of {cycles} cycles within the time allowed"
        gc.collect()
        fds_after, tasks_after, settled = await settle(fds_before, tasks_before, "after cycles")
        objects_after = len(gc.get_objects())
    assert fds_after == fds_before
    assert tasks_after == tasks_before
    # Nothing kept per cycle (the process's RSS says little here: the allocator keeps
    # and reuses what earlier tests freed).
    assert objects_after - objects_before < 1000, (objects_before, objects_after)
    record("load.cycles.count", cycles, "cycles")
    record("load.cycles.rate", round(cycles / elapsed), "cycles/s", workers=workers)
    record("load.cycles.fds_before", fds_before, "fds")
    record("load.cycles.fds_after", fds_after, "fds", settle_s=round(settled, 2))
    record("load.cycles.tasks_before", tasks_before, "tasks")
    record("load.cycles.tasks_after", tasks_after, "tasks")
    record("load.cycles.gc_objects_growth", objects_after - objects_before, "objects",
           before=objects_before)  # fmt: skip


async def test_slow_reader_fast_writer_memory_stays_flat(scale: Any) -> None:
    """A writer that writes as fast as it can to a reader taking one message every 20 ms
    (in another process) is held back by backpressure: the memory it allocates (traced)
    stays flat for the whole run."""
    duration = scale.seconds(4.0)
    interval = 0.02
    payload = bytes(256 * KiB)
    loop = asyncio.get_running_loop()
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "slow_reader.py"),
        str(interval),
        stdout=asyncio.subprocess.PIPE,
    )
    samples: list[tuple[float, int]] = []
    tracemalloc.start()
    try:
        assert reader.stdout is not None
        port = int(await within(reader.stdout.readline(), "the slow reader's port"))
        comm = await connect(Transport("tcp"), port)
        written = 0
        blocked = []
        async with comm:
            start = loop.time()
            next_sample = start
            while loop.time() - start < duration and written < 1_000_000:
                before = loop.time()
                await comm.write({"n": written, "data": payload})
                blocked.append(loop.time() - before)
                written += 1
                if loop.time() >= next_sample:
                    samples.append((loop.time() - start, tracemalloc.get_traced_memory()[0]))
                    next_sample += 0.05
        read = int(await within(reader.stdout.readline(), "the slow reader's count", 60))
        await within(reader.wait(), "the slow reader to exit")
    finally:
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if reader.returncode is None:
            reader.kill()
            await reader.wait()
    assert read == written, f"wrote {written} messages, the reader read {read}"
    # Flat: after the first second (buffers filling), memory no longer grows.
    settled = [value for at, value in samples if at >= min(1.0, duration / 4)]
    assert settled, samples
    growth = max(settled) - settled[0]
    peak = max(value for _, value in samples) - samples[0][1]
    assert growth < 16 * MiB, f"the writer's memory grew by {growth / MiB:.1f} MiB"
    record("load.slow_reader.duration", duration, "s", read_interval_ms=interval * 1e3)
    record("load.slow_reader.messages_written", written, "messages",
           message_kib=256, throughput_mib_s=round(written * 256 / 1024 / duration, 1))  # fmt: skip
    record("load.slow_reader.writer_traced_peak", round(traced_peak / MiB, 1), "MiB",
           growth_from_first_sample_mib=round(peak / MiB, 1))  # fmt: skip
    record("load.slow_reader.writer_traced_growth_after_1s", round(growth / MiB, 2), "MiB")
    record("load.slow_reader.write_blocked_max", round(max(blocked) * 1e3, 1), "ms")
