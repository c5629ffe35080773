"""Three workloads for a Dask cluster, shared by the cluster tests and ``python -m bench``.

Each takes a ``distributed.Client`` and returns a small result that is the same
whatever transport the cluster runs over (the data is made from fixed seeds).
"""

from __future__ import annotations

from typing import Any

#: The size of the shuffle: rows and partitions (8 bytes x 6 columns a row: 576 MB).
SHUFFLE_ROWS = 12_000_000
SHUFFLE_PARTITIONS = 24
#: The number of tiny tasks.
TINY_TASKS = 10_000


def array_reduction(client: Any, n: int = 6000, chunk: int = 1000) -> float:
    """``(x + x.T).std()`` of a seeded random n x n array: each chunk meets its transpose's,
    so most of them cross between workers."""
    import dask.array as da

    x = da.random.RandomState(42).random_sample((n, n), chunks=(chunk, chunk))
    return float(client.compute((x + x.T).std()).result())


def _partition(i: int, rows: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(i)
    columns = {"key": rng.integers(0, 100_000, rows)}
    columns.update({f"v{j}": rng.random(rows) for j in range(5)})
    return pd.DataFrame(columns)


def _summary(frame: Any) -> Any:
    """Per key: how many rows, and the sum of v0, in one partition of the shuffled frame."""
    return frame.groupby("key")["v0"].agg(["count", "sum"]).reset_index()


def dataframe_shuffle(
    client: Any, rows: int = SHUFFLE_ROWS, partitions: int = SHUFFLE_PARTITIONS
) -> list[tuple[int, int, float]]:
    """Shuffle a seeded frame of *rows* rows on ``key`` (Dask's p2p shuffle: about half of the
    data moves between two workers), then summarize each output partition.

    Returns (key, count, sum of v0) for every key, sorted; raises AssertionError if a key
    ended up in two partitions (the shuffle did not group it).
    """
    import dask.dataframe as dd

    frame = dd.from_map(_partition, range(partitions), rows=rows // partitions)
    shuffled = frame.shuffle("key", npartitions=partitions, shuffle_method="p2p")
    summary = client.compute(shuffled.map_partitions(_summary)).result()
    assert summary["key"].is_unique, "a key is in two partitions after the shuffle"
    assert int(summary["count"].sum()) == rows // partitions * partitions
    summary = summary.sort_values("key")
    return [
        (int(k), int(c), round(float(s), 6))
        for k, c, s in zip(summary["key"], summary["count"], summary["sum"], strict=False)
    ]


def _inc(x: int) -> int:
    return x + 1


def tiny_tasks(client: Any, count: int = TINY_TASKS) -> int:
    """*count* tasks of nothing (``x + 1``) and one that sums their results."""
    futures = client.map(_inc, range(count))
    total = client.submit(sum, futures)
    result = int(total.result())
    del futures, total
    return result


WORKLOADS = {
    "array reduction": array_reduction,
    "dataframe shuffle": dataframe_shuffle,
    "10,000 tiny tasks": tiny_tasks,
}
