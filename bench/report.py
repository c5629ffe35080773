"""Medians of the repeats, the markdown tables, the JSON file, and the machine's facts."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import IMPLS, format_size

__all__ = ["machine_facts", "render_markdown", "summarize", "write_results"]

ROOT = Path(__file__).resolve().parent.parent

UP, DOWN = "↑", "↓"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # UP or DOWN


_W1 = [
    Metric("round_trips_per_s", "round trips/s", UP),
    Metric("p50_us", "p50 latency (µs)", DOWN),
    Metric("p99_us", "p99 latency (µs)", DOWN),
]
_W2 = [Metric("messages_per_s", "messages/s", UP)]
_W3_ONE = [
    Metric("mb_per_s", "MB/s one-way", UP),
    Metric("first_put_mb_per_s", "first put MB/s", UP),
    Metric("pct_raw", "% of raw socket", UP),
    Metric("rss_growth", "peak RSS growth (x payload)", DOWN),
]
_W3_TWO = [
    Metric("mb_per_s", "MB/s one-way", UP),
    Metric("first_put_mb_per_s", "first put MB/s", UP),
    Metric("pct_raw", "% of raw socket", UP),
    Metric("rss_growth", "client peak RSS growth (x payload)", DOWN),
    Metric("server_rss_growth", "server peak RSS growth (x payload)", DOWN),
]
_W4 = [Metric("connections_per_s", "connections/s", UP)]

_TITLES = {
    "W1": "W1: small round trips (write, server echoes, read)",
    "W2": "W2: pipelined small messages (writes without waiting, one reply at the end)",
    "W3": "W3: large messages (`put` of S bytes, server acks)",
    "W4": "W4: connection setup (connect + handshake + one round trip + close)",
}


def _metrics(workload: str, mode: str) -> list[Metric]:
    if workload == "W3":
        return _W3_TWO if mode == "two" else _W3_ONE
    return {"W1": _W1, "W2": _W2, "W4": _W4}[workload]


# -- aggregation ---------------------------------------------------------------------


def _group_key(record: dict[str, Any]) -> tuple[Any, ...]:
    return (record["workload"], record["backend"], record["mode"], record["loop"], record["size"])


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (workload, backend, mode, loop, size): each impl's medians and errors."""
    groups: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record in records:
        groups[_group_key(record)][record["impl"]].append(record)
    rows = []
    for key, by_impl in groups.items():
        workload, backend, mode, loop, size = key
        row: dict[str, Any] = {
            "workload": workload,
            "backend": backend,
            "mode": mode,
            "loop": loop,
            "size": size,
            "impls": {},
        }
        for impl, runs in by_impl.items():
            ok = [run["metrics"] for run in runs if "metrics" in run]
            medians: dict[str, float] = {}
            spread: dict[str, tuple[float, float]] = {}
            for name in ok[0] if ok else ():
                values = [m[name] for m in ok if isinstance(m.get(name), (int, float))]
                if values and not isinstance(ok[0][name], bool):
                    medians[name] = statistics.median(values)
                    spread[name] = (min(values), max(values))
            row["impls"][impl] = {
                "median": medians,
                "min_max": spread,
                "repeats": len(runs),
                "errors": [run["error"] for run in runs if "error" in run],
            }
        raw = row["impls"].get("raw", {}).get("median", {}).get("mb_per_s")
        if workload == "W3" and raw:
            for entry in row["impls"].values():
                if "mb_per_s" in entry["median"]:
                    entry["median"]["pct_raw"] = 100 * entry["median"]["mb_per_s"] / raw
        rows.append(row)
    return rows


# -- markdown -----------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(ours: float | None, other: float | None) -> str:
    if ours is None or other is None or other == 0:
        return "—"
    return f"{ours / other:.2f}x"


def _size(size: int | None) -> str:
    return "" if size is None else format_size(size)


def _cell(entry: dict[str, Any] | None, key: str) -> tuple[str, float | None]:
    if entry is None:
        return "—", None
    value = entry["median"].get(key)
    if value is None and entry["errors"] and not entry["median"]:
        return "error", None
    return _fmt(value), value


def _table(workload: str, rows: list[dict[str, Any]]) -> list[str]:
    has_raw = workload == "W3" and any("raw" in row["impls"] for row in rows)
    impls = [impl for impl in IMPLS if any(impl in row["impls"] for row in rows)]
    head = ["backend", "mode", "loop"] + (["size"] if workload == "W3" else []) + ["metric"]
    head += impls + (["raw socket"] if has_raw else [])
    others = [impl for impl in impls if impl != "comm"]
    head += [f"comm/{other}" for other in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        for metric in _metrics(workload, row["mode"]):
            cells = [row["backend"], row["mode"], row["loop"]]
            if workload == "W3":
                cells.append(_size(row["size"]))
            cells.append(f"{metric.label} {metric.better}")
            values: dict[str, float | None] = {}
            for impl in impls:
                text, values[impl] = _cell(row["impls"].get(impl), metric.key)
                cells.append(text)
            if has_raw:
                raw = row["impls"].get("raw")
                if metric.key == "pct_raw" and raw and raw["median"]:
                    cells.append("100")
                elif metric.key in {"mb_per_s", "first_put_mb_per_s"}:
                    cells.append(_cell(raw, metric.key)[0])
                else:
                    cells.append("—")
            cells += [_ratio(values.get("comm"), values.get(other)) for other in others]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _errors(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for row in rows:
        for impl, entry in row["impls"].items():
            for error in dict.fromkeys(entry["errors"]):  # unique, in order
                where = " ".join(
                    str(part)
                    for part in (row["workload"], _size(row["size"]), row["backend"], row["mode"])
                    if part
                )
                first = error.strip().splitlines()[0] if error.strip() else "?"
                lines.append(f"- {where} {row['loop']} **{impl}**: {first}")
    return lines


def _import_table(imports: dict[str, Any]) -> list[str]:
    lines = [
        "| import | `python -c` | median (ms) | minus bare `python -c pass` (ms) |",
        "|---|---|---|---|",
    ]
    for label, entry in imports.items():
        if "error" in entry:
            lines.append(f"| {label} | `{entry['code']}` | error: {entry['error']} | — |")
            continue
        minus = "—" if label == "bare" else _fmt(entry["minus_bare_ms"])
        lines.append(f"| {label} | `{entry['code']}` | {_fmt(entry['median_ms'])} | {minus} |")
    return lines


def render_markdown(
    rows: list[dict[str, Any]],
    imports: dict[str, Any] | None,
    facts: dict[str, Any],
    cluster: list[str] | None = None,
) -> str:
    """The report: machine facts, one table per workload, the cluster section, import time,
    errors."""
    versions = ", ".join(f"{name} {ver}" for name, ver in facts["versions"].items() if ver)
    settings = facts["settings"]
    load = facts["load_average_1min"]
    w4_repeats = settings.get("w4_repeats", settings["repeats"])
    out = [
        "# comm benchmarks",
        "",
        f"{facts['date']} · Python {facts['python']} · {facts['platform']} · "
        f"{facts['cpu_count']} CPUs · {versions}",
        "",
        f"Settings: {'quick' if settings['quick'] else 'full'}, median of "
        f"{settings['repeats']} repeat(s) per cell ({w4_repeats} for W4), "
        "each in a fresh process; loopback only. "
        f"Load average (1 min) at start {load['start']}, at end {load['end']}; "
        f"the run took {settings['total_seconds']:g} s.",
        "",
        f"{UP} higher is better, {DOWN} lower is better. Ratios are comm ÷ other: "
        f"above 1 is better for {UP} figures, below 1 is better for {DOWN} figures. "
        "MB = 10^6 bytes.",
    ]
    order = {"W1": 0, "W2": 1, "W3": 2, "W4": 3}
    for workload in sorted({row["workload"] for row in rows}, key=order.__getitem__):
        these = sorted(
            (row for row in rows if row["workload"] == workload),
            key=lambda r: (r["backend"] != "tcp", r["backend"], r["mode"], r["loop"], r["size"]),
        )
        out += ["", f"## {_TITLES[workload]}", "", *_table(workload, these)]
    if cluster:
        out += ["", "## End to end: a Dask cluster over Dask's transports and comm-dask's", ""]
        out += cluster
    if imports:
        out += ["", "## Import time (fresh interpreter, median of runs)", ""]
        out += _import_table(imports)
    errors = _errors(rows)
    if errors:
        out += ["", "## Errors", "", *errors]
    return "\n".join(out) + "\n"


# -- facts and files -------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def load_average() -> float | None:
    """The 1-minute load average; other work on the machine skews every figure."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def machine_facts(settings: dict[str, Any]) -> dict[str, Any]:
    """Python, platform, CPUs, load, package versions, date, and the suite's settings."""
    dists = [
        "comm-core",
        "comm-tcp",
        "comm-tls",
        "comm-inproc",
        "comm-dask",
        "msgpack",
        "distributed",
        "tornado",
    ]
    dists.append("uvloop")
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": Path(sys.executable).name,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_1min": {"start": settings.get("load_start"), "end": load_average()},
        "versions": {dist: _version(dist) for dist in dists},
        "git": _git_revision(),
        "dask_config": _dask_config(),
        "settings": settings,
    }


def _dask_config() -> dict[str, Any] | None:
    """Dask's comm settings that bear on the figures (compression, offload, sharding)."""
    try:
        import dask.config
        import distributed  # noqa: F401  (loads distributed's defaults into dask.config)
    except ImportError:
        return None
    keys = ("compression", "offload", "shard")
    return {key: dask.config.get(f"distributed.comm.{key}", None) for key in keys}


def write_results(
    directory: Path,
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    imports: dict[str, Any] | None,
    facts: dict[str, Any],
    markdown: str,
    cluster: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``latest.md`` and ``latest.json`` (every repeat's figures) into *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    md_path, json_path = directory / "latest.md", directory / "latest.json"
    md_path.write_text(markdown)
    data = {
        "machine": facts,
        "cells": records,
        "summary": rows,
        "import_time": imports,
        "cluster": cluster,
    }
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    return md_path, json_path
