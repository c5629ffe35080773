"""The end-to-end section: a Dask cluster's real work over Dask's transports and comm-dask's.

A ``LocalCluster`` with two worker processes (one thread each) runs the three
workloads of comm-dask's cluster tests (``packages/comm-dask/tests/workloads.py``):
a ``dask.array`` reduction, a ``dask.dataframe`` p2p shuffle and 10,000 tiny
tasks. Each repeat starts a fresh cluster in a fresh process (``python -m
bench.cluster PROTOCOL``), for each protocol in turn, so that drift on the
machine hits each alike; the report shows medians.

Where the time goes, per run: the cluster's start; each workload's wall time;
for the shuffle, its transfer phase (from the first ``shuffle-transfer`` task's
start to the end of the ``shuffle-barrier`` task, by the task stream: the
partitions are split and the shards sent between the workers), the phase after
it (the output partitions read and summarized) and the bytes the shuffle sent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS_FILE = ROOT / "packages" / "comm-dask" / "tests" / "workloads.py"

#: Dask's own first: the report's ratios are "Dask's ÷ comm-dask's" time (above 1: comm faster).
#: ``comm+tcp+select`` is ``comm+tcp://`` with comm's same-host selection on (the worker
#: processes and the scheduler take each other's Unix sockets, and large buffers the
#: shared-memory arena); ``comm+tls+select`` the same behind TLS's tokens; every other
#: run has it off.
PROTOCOLS = (
    "tcp://",
    "comm+tcp://",
    "comm+tcp+select",
    "tls://",
    "comm+tls://",
    "comm+tls+select",
)
#: Run -> the one it is compared with.
COMPARED = {
    "comm+tcp://": "tcp://",
    "comm+tcp+select": "tcp://",
    "comm+tls://": "tls://",
    "comm+tls+select": "tls://",
}
#: Runs that are not a protocol of their own: the protocol, and whether selection is on.
VARIANTS = {"comm+tcp+select": ("comm+tcp://", True), "comm+tls+select": ("comm+tls://", True)}
#: What each run reports, in the report's order.
FIGURES = (
    ("start", "cluster start"),
    ("array reduction", "array reduction"),
    ("dataframe shuffle", "dataframe shuffle"),
    ("shuffle transfer", "  transfer phase (split, send shards)"),
    ("shuffle output", "  output phase (read, summarize)"),
    ("10,000 tiny tasks", "10,000 tiny tasks"),
)
#: Quick mode: smaller data, fewer tasks.
QUICK_SIZES = {"rows": 1_200_000, "partitions": 8, "tasks": 1_000, "n": 2000}


def available() -> bool:
    """Whether comm-dask, dask.dataframe and the workloads file are there."""
    return WORKLOADS_FILE.is_file() and all(
        importlib.util.find_spec(name) is not None
        for name in ("comm_dask", "dask.dataframe", "pandas")
    )


def _workloads() -> ModuleType:
    """comm-dask's tests' ``workloads`` module, imported by that name from its directory (the
    worker processes, which multiprocessing starts with this process's ``sys.path``, import
    it the same way when they unpickle its functions)."""
    directory = str(WORKLOADS_FILE.parent)
    if directory not in sys.path:
        sys.path.append(directory)
    return importlib.import_module("workloads")


def _security(protocol: str) -> Any:
    if "tls" not in protocol:
        return None
    from distributed.security import Security

    from bench import tls

    ca, cert, key = tls.files()
    return Security(
        tls_ca_file=ca,
        **{
            f"tls_{role}_{kind}": path
            for role in ("scheduler", "worker", "client")
            for kind, path in (("cert", cert), ("key", key))
        },
        require_encryption=True,
    )


def _phases(stream: list[dict[str, Any]]) -> dict[str, float]:
    """The shuffle's transfer and output phases, from the task stream's records."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for record in stream:
        key = record["key"]
        name = key[0] if isinstance(key, tuple) else key
        prefix = str(name).rsplit("-", 1)[0]
        for startstop in record["startstops"]:
            if startstop["action"] == "compute":
                spans.setdefault(prefix, []).append((startstop["start"], startstop["stop"]))
    transfer_start = min(start for start, _ in spans["shuffle-transfer"])
    barrier_end = max(stop for _, stop in spans["shuffle-barrier"])
    output_end = max(stop for prefix in ("p2pshuffle", "_summary") for _, stop in spans[prefix])
    return {
        "shuffle transfer": barrier_end - transfer_start,
        "shuffle output": output_end - barrier_end,
    }


def measure(protocol: str, quick: bool) -> dict[str, Any]:
    """One fresh cluster over *protocol*: the figures of :data:`FIGURES`, in seconds."""
    from distributed import Client, LocalCluster, get_task_stream

    workloads = _workloads()
    sizes = QUICK_SIZES if quick else {}
    security = _security(protocol)
    figures: dict[str, Any] = {}
    started = time.perf_counter()
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
        client.wait_for_workers(2, timeout=120)
        figures["start"] = time.perf_counter() - started
        results = {}

        def timed(name: str, run: Any, *args: Any, **kwargs: Any) -> None:
            begin = time.perf_counter()
            results[name] = run(client, *args, **kwargs)
            figures[name] = time.perf_counter() - begin

        timed("array reduction", workloads.array_reduction, **({"n": sizes["n"]} if sizes else {}))
        with get_task_stream(client) as stream:
            timed(
                "dataframe shuffle",
                workloads.dataframe_shuffle,
                **({"rows": sizes["rows"], "partitions": sizes["partitions"]} if sizes else {}),
            )
        figures.update(_phases(stream.data))
        figures["shuffle bytes"] = client.run_on_scheduler(_shuffle_bytes)
        timed(
            "10,000 tiny tasks",
            workloads.tiny_tasks,
            **({"count": sizes["tasks"]} if sizes else {}),
        )
    figures["results"] = {
        "array reduction": results["array reduction"],
        "dataframe shuffle rows": sum(count for _, count, _ in results["dataframe shuffle"]),
        "dataframe shuffle checksum": round(sum(s for *_, s in results["dataframe shuffle"]), 3),
        "10,000 tiny tasks": results["10,000 tiny tasks"],
    }
    return figures


def _shuffle_bytes(dask_scheduler: Any) -> int:
    """The bytes that the p2p shuffle's background comms sent (to both workers)."""
    metrics = dask_scheduler.cumulative_worker_metrics
    return int(metrics.get(("p2p", "background-comms", "process", "bytes"), 0))


def run(repeats: int, quick: bool, log: Any) -> dict[str, Any]:
    """Every protocol *repeats* times, interleaved, each run in a fresh process."""
    runs: dict[str, list[dict[str, Any]]] = {protocol: [] for protocol in PROTOCOLS}
    for repeat in range(repeats):
        for protocol in PROTOCOLS:
            dialled, same_host = VARIANTS.get(protocol, (protocol, False))
            command = [sys.executable, "-m", "bench.cluster", dialled]
            if quick:
                command.append("--quick")
            env = {**os.environ, "COMM_SAME_HOST": "1" if same_host else "0"}
            begin = time.perf_counter()
            done = subprocess.run(
                command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
            )
            lines = done.stdout.strip().splitlines()
            try:
                figures = json.loads(lines[-1])
            except (IndexError, json.JSONDecodeError):
                figures = {"error": f"exited with {done.returncode}", "stderr": done.stderr[-4000:]}
            runs[protocol].append(figures)
            summary = figures.get("error") or f"{figures['dataframe shuffle']:.1f} s shuffle"
            log(
                f"[cluster {repeat + 1}/{repeats}] {protocol}: {summary} "
                f"({time.perf_counter() - begin:.0f} s)"
            )
    medians: dict[str, dict[str, float]] = {}
    for protocol, these in runs.items():
        good = [figures for figures in these if "error" not in figures]
        if good:
            medians[protocol] = {
                key: statistics.median(figures[key] for figures in good)
                for key, _ in (*FIGURES, ("shuffle bytes", ""))
            }
    results = {
        json.dumps(figures["results"], sort_keys=True)
        for these in runs.values()
        for figures in these
        if "error" not in figures
    }
    return {
        "runs": runs,
        "medians": medians,
        "repeats": repeats,
        "same_results": len(results) == 1,
    }


def render(section: dict[str, Any]) -> list[str]:
    """The report's section: median seconds per protocol, and Dask's ÷ comm-dask's."""
    medians = section["medians"]
    shown = [p for p in PROTOCOLS if p in medians]
    header = "| figure (s, median) | " + " | ".join(f"`{p}`" for p in shown)
    header += " | " + " | ".join(f"`{COMPARED[p]}` ÷ `{p}`" for p in shown if p in COMPARED)
    lines = [
        f"Two worker processes, one thread each; median of {section['repeats']} run(s), each "
        "a fresh cluster in a fresh process. A ratio above 1 means comm-dask took less time. "
        f"Same results over every protocol: {'yes' if section['same_results'] else 'NO'}.",
        "",
        header + " |",
        "|---" * (1 + len(shown) + sum(p in COMPARED for p in shown)) + "|",
    ]
    for key, label in FIGURES:
        cells = [f"{medians[p][key]:.2f}" for p in shown]
        ratios = [
            f"{medians[COMPARED[p]][key] / medians[p][key]:.2f}x"
            for p in shown
            if p in COMPARED and COMPARED[p] in medians and medians[p][key]
        ]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")
    moved = [medians[p]["shuffle bytes"] / 1e6 for p in shown]
    lines.append(
        "| shuffle: MB sent by p2p comms | "
        + " | ".join(f"{m:.0f}" for m in moved)
        + " |" * 1
        + " |" * sum(p in COMPARED for p in shown)
    )
    errors = [
        f"- {protocol} run {number}: {figures['error']}"
        for protocol, these in section["runs"].items()
        for number, figures in enumerate(these, 1)
        if "error" in figures
    ]
    if errors:
        lines += ["", *errors]
    return lines


def main(argv: list[str]) -> None:
    protocol = argv[0]
    print(json.dumps(measure(protocol, quick="--quick" in argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
