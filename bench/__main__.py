"""``python -m bench``: run the benchmark suite and write ``bench/results/latest.{md,json}``.

Examples::

    python -m bench --quick                      # smoke test: everything, tiny counts
    python -m bench --mode one --loop asyncio    # full counts, one process, asyncio
    python -m bench --workload W1 --workload W3 --backend tcp --impl comm --impl dask

Filters may be repeated or comma-separated. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import cluster, tls
from bench.config import (
    BACKENDS,
    IMPLS,
    LOOPS,
    MODES,
    WORKLOADS,
    Cell,
    Limits,
    impl_available,
    limits_for,
    loop_available,
)
from bench.importtime import measure_imports
from bench.report import (
    load_average,
    machine_facts,
    render_markdown,
    summarize,
    write_results,
)

ROOT = Path(__file__).resolve().parent.parent


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        for value in values:
            if value not in allowed:
                raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(allowed)}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark comm against Dask's distributed.comm and an asyncio baseline.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, one repeat (smoke test)")
    parser.add_argument("--workload", action="extend", type=_choices(WORKLOADS), default=[])
    parser.add_argument("--backend", action="extend", type=_choices(tuple(BACKENDS)), default=[])
    parser.add_argument("--impl", action="extend", type=_choices(IMPLS), default=[])
    parser.add_argument("--mode", action="extend", type=_choices(MODES), default=[])
    parser.add_argument("--loop", action="extend", type=_choices(LOOPS), default=[])
    parser.add_argument("--repeats", type=int, help="repeats per cell (default: 3, quick: 1)")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "results",
        help="directory for latest.md and latest.json (default: bench/results)",
    )
    return parser.parse_args(argv)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def discover_backends(wanted: list[str]) -> list[str]:
    """The schemes both installed (``comm_core.backends()``) and described in BACKENDS."""
    import comm_core

    installed = set(comm_core.backends())
    for scheme in sorted(installed - {spec.scheme for spec in BACKENDS.values()}):
        _log(f"note: backend {scheme!r} is installed but has no entry in bench.config.BACKENDS")

    def usable(name: str) -> bool:
        spec = BACKENDS[name]
        return spec.scheme in installed and installed.issuperset(spec.needs)

    chosen = [s for s in BACKENDS if usable(s) and (not wanted or s in wanted)]
    for name in wanted:
        if not usable(name):
            _log(f"note: backend {name!r} is not installed; skipped")
    return chosen


def plan(args: argparse.Namespace, limits: Limits) -> list[Cell]:
    """Every cell to run, repeats interleaved across implementations (to share any drift)."""
    workloads = [
        w
        for w in WORKLOADS
        if w not in ("import", "cluster") and (not args.workload or w in args.workload)
    ]
    impls = [i for i in IMPLS if not args.impl or i in args.impl]
    for impl in impls:
        if not impl_available(impl):
            _log(f"note: {impl} is not installed; skipped")
    impls = [i for i in impls if impl_available(i)]
    loops = [loop for loop in LOOPS if not args.loop or loop in args.loop]
    if "uvloop" in loops and not loop_available("uvloop"):
        _log("note: uvloop is not installed; skipped")
        loops.remove("uvloop")
    modes = [m for m in MODES if not args.mode or m in args.mode]
    backends = discover_backends(args.backend)
    cells = []
    for workload in workloads:
        for backend in backends:
            spec = BACKENDS[backend]
            these = [
                i
                for i in impls
                if (i != "baseline" or spec.baseline) and (i != "dask" or spec.dask)
            ]
            if workload == "W3" and spec.raw and "comm" in impls:
                these.append("raw")
            for mode in modes:
                if mode == "two" and not spec.cross_process:
                    continue
                for loop in loops:
                    sizes = limits.w3_sizes if workload == "W3" else (None,)
                    repeats = limits.repeats
                    if workload == "W4" and limits.w4_repeats is not None:
                        repeats = limits.w4_repeats
                    for size in sizes:
                        for repeat in range(repeats):
                            for impl in these:
                                cells.append(
                                    Cell(workload, backend, mode, loop, impl, size, repeat, limits)
                                )
    # Repeats interleaved across backends too (tcp #1, unix #1, tcp #2, ...), as they are
    # across implementations: drift on the machine then hits each backend alike.
    order = {name: index for index, name in enumerate(backends)}
    cells.sort(
        key=lambda c: (
            workloads.index(c.workload), modes.index(c.mode), loops.index(c.loop),
            c.size or 0, c.repeat, order[c.backend],
        )
    )  # fmt: skip
    return cells


def run_cell(cell: Cell) -> dict[str, Any]:
    """Run *cell* in a fresh process (``python -m bench.runner``); its record."""
    record: dict[str, Any] = {k: v for k, v in cell.to_json().items() if k != "limits"}
    cmd = [sys.executable, "-m", "bench.runner", json.dumps(cell.to_json())]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=cell.limits.cell_timeout
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        record["error"] = f"killed after {cell.limits.cell_timeout:g}s (hang?)"
        record["stderr"] = stderr[-4000:]
        return record
    record["wall_s"] = time.perf_counter() - start
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"the runner exited with {proc.returncode} and printed no result"}
    record.update(result)
    if "error" in result:
        record["stderr"] = proc.stderr[-4000:]
    return record


def _summary(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"ERROR {record['error']}"
    metrics = record["metrics"]
    for key, unit in (
        ("round_trips_per_s", "round trips/s"),
        ("messages_per_s", "messages/s"),
        ("mb_per_s", "MB/s"),
        ("connections_per_s", "connections/s"),
    ):
        if key in metrics:
            return f"{metrics[key]:,.0f} {unit}"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limits = limits_for(args.quick, args.repeats)
    cells = plan(args, limits)
    run_imports = not args.workload or "import" in args.workload
    load_start = load_average()
    if load_start is not None and load_start > 0.5:
        _log(f"warning: load average is {load_start}; other work on the machine skews figures")
    started = time.perf_counter()
    records = []
    with tls.credentials():
        for number, cell in enumerate(cells, 1):
            record = run_cell(cell)
            records.append(record)
            _log(f"[{number}/{len(cells)}] {cell.label()}: {_summary(record)}")
        section = None
        if not args.workload or "cluster" in args.workload:
            if cluster.available():
                section = cluster.run(limits.repeats, args.quick, _log)
            else:
                _log("note: comm-dask or dask.dataframe is not installed; cluster section skipped")
    imports = None
    if run_imports:
        _log(f"import time: {limits.import_runs} runs per command")
        labels = ["bare", *(i for i in IMPLS if not args.impl or i in args.impl)]
        imports = measure_imports(limits.import_runs, labels)
    settings = {
        "quick": args.quick,
        "repeats": limits.repeats,
        "w4_repeats": limits.w4_repeats or limits.repeats,
        "limits": asdict(limits),
        "filters": {
            name: getattr(args, name) for name in ("workload", "backend", "impl", "mode", "loop")
        },
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_start": load_start,
    }
    facts = machine_facts(settings)
    rows = summarize(records)
    markdown = render_markdown(rows, imports, facts, cluster.render(section) if section else None)
    md_path, json_path = write_results(
        args.output, records, rows, imports, facts, markdown, cluster=section
    )
    print(markdown)
    _log(f"wrote {md_path} and {json_path} in {settings['total_seconds']:g}s")
    failed = any("error" in r for r in records)
    if section is not None:
        failed = failed or not section["same_results"]
        failed = failed or any("error" in run for runs in section["runs"].values() for run in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
