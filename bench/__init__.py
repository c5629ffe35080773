"""Benchmarks of comm against Dask's ``distributed.comm`` and a hand-written asyncio baseline.

Run ``python -m bench`` from the repository root (or ``nox -s bench``); see bench/README.md.
"""
