"""The benchmark server: one connection handler for every workload and implementation.

Run as a process of its own for ``--mode two``::

    python -m bench.server --impl comm --addr tcp://127.0.0.1:0 [--loop uvloop]

It prints its contact address as the first line on stdout, serves until its
stdin is closed (so it never outlives the process that started it), then exits.

Requests, by ``msg["op"]``:

* ``ping``: echoed back unchanged (W1, W4).
* ``push``: counted, no answer (W2).
* ``sync``: answered with ``{"op": "count", "n": <pushes since the last sync>}`` (W2).
* ``put``: answered with ``{"op": "ack", "n": len(msg["data"])}`` (W3).
* ``stats``: answered with this process's memory (W3); ``"reset": True`` first
  resets the peak, so the answer's ``rss`` is the baseline of what follows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import selectors
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import memory
from bench.impls import Impl, Server, get_impl
from bench.loops import run

__all__ = ["make_handler", "serve_forever", "server_process"]

ROOT = Path(__file__).resolve().parent.parent


def memory_stats(reset: bool) -> dict[str, Any]:
    if reset:
        memory.settle()
    reset_ok = memory.reset_peak() if reset else None
    return {"op": "stats", "rss": memory.rss(), "peak": memory.peak_rss(), "reset": reset_ok}


def make_handler(impl: Impl) -> Any:
    """The connection handler for *impl*: serves the requests above until the peer closes."""
    closed = impl.closed_errors

    async def handle(conn: Any) -> None:
        pushed = 0
        try:
            while True:
                msg = await conn.read()
                op = msg["op"]
                if op == "ping":
                    await conn.write(msg)
                elif op == "push":
                    pushed += 1
                elif op == "sync":
                    await conn.write({"op": "count", "n": pushed})
                    pushed = 0
                elif op == "put":
                    await conn.write({"op": "ack", "n": len(msg["data"])})
                elif op == "stats":
                    await conn.write(memory_stats(bool(msg.get("reset"))))
                else:
                    raise ValueError(f"unknown op {op!r}")
                del msg  # a large message must not live on while the next one arrives
        except closed:
            pass
        finally:
            await conn.close()

    return handle


async def start(impl: Impl, address: str) -> Server:
    """Start a listener of *impl* on *address*, serving the benchmark requests."""
    return await impl.listen(address, make_handler(impl))


# -- the server process --------------------------------------------------------------


def _wait_for_stdin_eof() -> None:
    while sys.stdin.buffer.read(4096):
        pass


async def serve_forever(impl_name: str, address: str) -> None:
    """Serve on *address*, print the contact address, stop when stdin closes."""
    impl = get_impl(impl_name)
    server = await start(impl, address)
    print(server.address, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, _wait_for_stdin_eof)
    await server.stop()


def _serve_raw(address: str) -> None:
    from bench.rawsock import RawServer

    server = RawServer(address)
    print(server.address, flush=True)
    _wait_for_stdin_eof()
    server.close()


@contextlib.contextmanager
def server_process(impl: str, address: str, loop: str, timeout: float = 60.0) -> Iterator[str]:
    """Run a server process; yield its contact address; stop it on exit."""
    cmd = [sys.executable, "-m", "bench.server", "--impl", impl, "--addr", address]
    cmd += ["--loop", loop]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"server process {cmd} printed no address in {timeout}s")
        contact = proc.stdout.readline().strip()
        if not contact:
            raise RuntimeError(f"server process {cmd} exited with {proc.wait()}")
        yield contact
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__)
    parser.add_argument("--impl", required=True, choices=["comm", "dask", "baseline", "raw"])
    parser.add_argument("--addr", required=True, help="address to listen on")
    parser.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop"])
    args = parser.parse_args(argv)
    if args.impl == "raw":
        _serve_raw(args.addr)
    else:
        run(serve_forever(args.impl, args.addr), args.loop)


if __name__ == "__main__":
    main()
