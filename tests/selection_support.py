"""What the same-host selection tests share: a comm listener in a child process, the
loops to run on, and small helpers (test_selection.py, test_selection_ws.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import comm_core

__all__ = ["CHILD", "UVLOOP", "child_listener", "doctor_same_host", "round_trip", "seen_by"]

#: Whether uvloop is installed.
UVLOOP = importlib.util.find_spec("uvloop") is not None

CHILD = textwrap.dedent(
    """
    import asyncio, json, logging, sys
    import comm_core

    config = json.loads(sys.argv[1])
    if config.get("log"):  # comm's own lines at INFO and above, on stderr
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s"
        )

    async def main():
        seen = []

        async def handler(comm):
            seen.append(comm.local_address.partition("://")[0])
            async for msg in comm:
                if msg == "seen":
                    msg = list(seen)
                elif msg == "who":  # what the listener's side knows of its peer
                    info = comm.extra_info
                    msg = [info.get("authenticated"), info.get("peercert", {}).get("subject")]
                await comm.write(msg)

        args = {}
        if "security" in config:
            from comm_tls import Security

            args["security"] = Security(**config["security"])
        listener = comm_core.listen(
            config.get("address", "tcp://127.0.0.1:0"),
            handler,
            handshake_overrides=config.get("overrides"),
            same_host=config.get("same_host"),
            require_encryption=config.get("require_encryption"),
            **args,
        )
        async with listener:
            print(json.dumps([listener.contact_address]), flush=True)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, sys.stdin.read)

    if config.get("loop") == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)


@contextmanager
def child_listener(
    loop: str = "asyncio", env: dict[str, str] | None = None, **config: Any
) -> Iterator[tuple[int, str, list[str]]]:
    """A listener (``tcp://127.0.0.1:0`` unless *config* has an ``address``) in a child
    process: its pid, contact address, and (after the block) the lines of its stderr.

    *config*: ``address``, ``overrides``, ``same_host``, ``require_encryption``,
    ``security`` (the PEM texts of comm-tls's ``Security``), ``log`` (comm's log
    lines at INFO on stderr). Its handler echoes; it answers ``"seen"`` with the
    schemes of the comms it was handed, ``"who"`` with what it knows of its peer.
    """
    config["loop"] = loop
    environment = {**os.environ, **(env or {})}
    stderr: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, "the child listener did not start"
            (address,) = json.loads(line)
            yield child.pid, address, stderr
        finally:
            # communicate() closes the child's stdin: the child stops then.
            _, err = child.communicate(timeout=30)
            stderr.extend(err.splitlines())
            assert child.returncode == 0, err


async def seen_by(address: str, **args: Any) -> list[str]:
    """The schemes of the comms the child's handler was handed so far (asked without
    selection)."""
    comm = await comm_core.connect(address, timeout=10, same_host=False, **args)
    try:
        await comm.write("seen")
        seen: list[str] = await comm.read()
    finally:
        await comm.close()
    return seen[:-1]  # without the comm that asked


async def round_trip(comm: comm_core.Comm, msg: Any) -> None:
    await comm.write(msg)
    assert await comm.read() == msg


def doctor_same_host(address: str) -> str:
    """The ``same host`` line of ``comm doctor address``, run without comm settings."""
    done = subprocess.run(
        [sys.executable, "-m", "comm_core", "doctor", address],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("COMM_")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "same host" in line]
    return line
