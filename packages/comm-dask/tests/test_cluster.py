"""A LocalCluster with worker processes over comm+tcp and comm+tls runs real work, and gets
what it gets over Dask's own tcp."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import Client, LocalCluster

from conftest import Credentials
from workloads import SHUFFLE_ROWS, TINY_TASKS, array_reduction, dataframe_shuffle, tiny_tasks

pytestmark = pytest.mark.cluster

#: Dask's own tcp first: the others' results are compared with its.
PROTOCOLS = ["tcp://", "comm+tcp://", "comm+tls://"]
#: workload -> protocol -> result.
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", params=PROTOCOLS)
def client(request: pytest.FixtureRequest, credentials: Credentials) -> Iterator[Client]:
    protocol = request.param
    security = credentials.security if protocol == "comm+tls://" else None
    with (
        LocalCluster(
            protocol=protocol,
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            worker_dashboard_address=None,
            security=security,
        ) as cluster,
        Client(cluster, security=security) as client,
    ):
        scheme = protocol.removesuffix("://")
        assert cluster.scheduler_address.startswith(protocol)
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(w.startswith(f"{scheme}://") for w in workers)
        yield client


def _check(workload: str, client: Client, result: Any) -> None:
    protocol = client.scheduler.address.split("://")[0] + "://"
    RESULTS.setdefault(workload, {})[protocol] = result
    reference = RESULTS[workload].get("tcp://")
    if reference is not None:
        assert result == reference, f"{workload} over {protocol} differs from Dask's tcp"


def test_array_reduction(client: Client) -> None:
    result = array_reduction(client)
    assert 0.40 < result < 0.41  # the std of the sum of two uniform variables: 1/sqrt(6)
    _check("array", client, result)


def test_dataframe_shuffle(client: Client) -> None:
    result = dataframe_shuffle(client)
    assert sum(count for _, count, _ in result) == SHUFFLE_ROWS
    _check("shuffle", client, result)


def test_tiny_tasks(client: Client) -> None:
    result = tiny_tasks(client)
    assert result == TINY_TASKS * (TINY_TASKS + 1) // 2
    _check("tiny", client, result)


def test_the_workers_talk_over_comm(client: Client) -> None:
    """Over comm+tcp and comm+tls the workers' comms are comm-dask's (Dask's tcp: its own)."""

    def comm_type(dask_worker: Any) -> str:
        return type(dask_worker.batched_stream.comm).__name__

    kinds = set(client.run(comm_type).values())
    protocol = client.scheduler.address.split("://")[0]
    assert kinds == ({"TCP"} if protocol == "tcp" else {"DaskComm"})


def test_the_dask_command_line(tmp_path: Path) -> None:
    """`dask scheduler --protocol comm+tcp` and `dask worker comm+tcp://...`: only the address
    changes."""
    scheduler_file = tmp_path / "scheduler.json"
    command = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    options = ["--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    scheduler = subprocess.Popen(
        [*command, "--protocol", "comm+tcp", *options, "--scheduler-file", str(scheduler_file)],
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            assert scheduler.poll() is None, "the scheduler exited"
            time.sleep(0.1)  # a file appearing has no event to wait on
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("comm+tcp://127.0.0.1:")
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--no-dashboard", "--host", "127.0.0.1"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with Client(address, timeout=30) as client:
            client.wait_for_workers(1, timeout=60)
            (worker_address,) = client.scheduler_info()["workers"]
            assert worker_address.startswith("comm+tcp://127.0.0.1:")
            assert client.submit(sum, [1, 2, 3]).result() == 6
            client.shutdown()
        assert scheduler.wait(30) == 0
    finally:
        for process in (worker, scheduler):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
