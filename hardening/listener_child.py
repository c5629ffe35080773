"""A listener in a process of its own, for attacks that could kill the process.

``python listener_child.py tcp|tls|unix|ws [--credentials FILE] [--handshake-timeout S]
[--read-high-water BYTES]`` listens on 127.0.0.1 (port 0), or for unix on a
fresh socket path, with an echo handler, prints ``{"address": ..., "pid":
...}`` (the contact address) as one JSON line, and serves
until its stdin closes; then it stops the listener and exits with status 0.
Any other end (a signal, an exception, ``MemoryError`` under its
address-space limit) is what the tests look for.

The handler writes back every message, with two exceptions: the string
``"hold"`` makes it stop reading that comm for good (a handler that does
not read, for flow-control attacks), and ``{"op": "stats"}`` is answered
with what the handler has seen (comms, messages, errors by type).
``--credentials``: a JSON file with the ``ca``, ``cert`` and ``key`` PEM
text of a tls listener.

With ``--dial PORT,PORT,...`` it is a dialer instead: it calls
:func:`comm_core.connect` on 127.0.0.1 at each port in turn and prints one
JSON line per port (what was raised, and after how long).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import resource
import sys
from collections import Counter
from typing import Any

import comm_core
from comm_core import Comm, CommClosedError, ProtocolError, SerializationError

#: The address-space limit: a runaway allocation fails here, not on the machine.
MEMORY_LIMIT = 3 * 2**30


async def serve(args: argparse.Namespace) -> None:
    stats: Counter[str] = Counter()
    stopping = asyncio.Event()

    async def handler(comm: Comm) -> None:
        stats["comms"] += 1
        try:
            while True:
                try:
                    msg = await comm.read()
                except SerializationError:
                    stats["read:SerializationError"] += 1
                    continue  # one message refused; the comm goes on
                stats["messages"] += 1
                if msg == "hold":
                    stats["held"] += 1
                    await stopping.wait()
                    return
                if isinstance(msg, dict) and msg.get("op") == "stats":
                    await comm.write(dict(stats))
                    continue
                try:
                    await comm.write(msg)
                except SerializationError:
                    stats["write:SerializationError"] += 1
        except ProtocolError as exc:
            stats[f"read:{type(exc).__name__}"] += 1
        except CommClosedError:
            stats["closed"] += 1
        finally:
            comm.abort()

    options: dict[str, Any] = {"handshake_timeout": args.handshake_timeout}
    if args.read_high_water:
        options["read_high_water"] = args.read_high_water
    if args.credentials:
        options["security"] = _security(args.credentials)
    where = "unix://" if args.scheme == "unix" else f"{args.scheme}://127.0.0.1:0"
    listener = comm_core.listen(where, handler, **options)
    await listener.start()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def stdin_readable() -> None:
        if not os.read(sys.stdin.fileno(), 4096) and not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), stdin_readable)
    print(json.dumps({"address": listener.contact_address, "pid": os.getpid()}), flush=True)
    try:
        await done
    finally:
        loop.remove_reader(sys.stdin.fileno())
        listener.stop()
        stopping.set()


async def dial(args: argparse.Namespace) -> None:
    """Dial each of the comma-separated ports on 127.0.0.1 in turn; print one JSON line
    per port: what connect() raised (or that it succeeded), and how long it took."""
    import time

    options: dict[str, Any] = {"timeout": args.handshake_timeout + 1}
    if args.credentials:
        options["security"] = _security(args.credentials)
    with comm_core.configure(handshake_timeout=args.handshake_timeout):
        for port in args.dial.split(","):
            start = time.perf_counter()
            result: dict[str, Any] = {"type": "", "error": ""}
            try:
                comm = await comm_core.connect(f"{args.scheme}://127.0.0.1:{port}", **options)
            except Exception as exc:
                result = {"type": type(exc).__name__, "error": f"{exc!s:.300}"}
                result["comm_error"] = isinstance(exc, comm_core.CommError)
                result["oserror"] = isinstance(exc, OSError)
            else:
                comm.abort()
                result.update(type="connected", comm_error=False, oserror=False)
            result["seconds"] = time.perf_counter() - start
            print(json.dumps(result), flush=True)


def _security(path: str) -> Any:
    from comm_tls import Security

    with open(path, encoding="utf-8") as f:
        creds = json.load(f)
    return Security(ca=creds["ca"], cert=creds["cert"], key=creds["key"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scheme", choices=["tcp", "tls", "unix", "ws"])
    parser.add_argument("--credentials")
    parser.add_argument("--handshake-timeout", type=float, default=1.0)
    parser.add_argument("--read-high-water", type=int, default=0)
    parser.add_argument("--memory-limit", type=int, default=MEMORY_LIMIT)
    parser.add_argument("--dial", help="dial these ports (comma-separated) instead")
    args = parser.parse_args(argv)
    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_AS, (args.memory_limit, args.memory_limit))
    # The listener logs each peer it drops: to stderr, which the test keeps in a file.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(dial(args) if args.dial else serve(args))


if __name__ == "__main__":
    main()
