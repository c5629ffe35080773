"""Hostile peers: connections that are not comm clients, or that cheat.

Each attack opens one connection to a listener and misbehaves in one way;
:func:`attack` returns how long the listener took to drop it and what it
sent back. Run as a script, this module is an attacker process that keeps
many such connections going at once for a while, and prints a JSON summary::

    python hostile.py PORT --connections 100 --duration 3 [--credentials FILE]

(``--credentials``: a JSON file holding ``ca``, ``cert`` and ``key`` PEM
text, for the attacks made from inside an established TLS session.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass

from comm_core.protocol import MAGIC, PREAMBLE

__all__ = ["ATTACKS", "Outcome", "attack", "kinds_for"]

#: A TLS 1.x ClientHello record header and the start of its body, then zeros: what a
#: TLS client sends first.
CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + bytes(200)
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hardening\r\n\r\n"
#: What a peer claims as the length of its first frame: a petabyte.
ABSURD = 10**15


def _random_bytes(seed: int = 7) -> bytes:
    data = random.Random(seed).randbytes(4096)
    return bytes([MAGIC[0] ^ 0xFF]) + data[1:]  # not even the first byte of the magic


@dataclass(frozen=True)
class Attack:
    """One way to misbehave."""

    #: Bytes sent at once after connecting.
    payload: bytes = b""
    #: Seconds between single bytes of the preamble (0: no trickle).
    trickle: float = 0.0
    #: On a tls listener, attack from inside an established TLS session (a peer that
    #: holds valid credentials); otherwise the bytes go to the raw TCP port.
    inside_tls: bool = False
    #: Also run against tls listeners.
    on_tls: bool = True


ATTACKS: dict[str, Attack] = {
    "http": Attack(HTTP_REQUEST),
    "tls-client-hello": Attack(CLIENT_HELLO),
    "random-bytes": Attack(_random_bytes()),
    "absurd-frame-length": Attack(PREAMBLE + struct.pack("<IQ", 1, ABSURD), inside_tls=True),
    "slow-preamble": Attack(trickle=1.0, inside_tls=True),
    "silent": Attack(),
}


def kinds_for(scheme: str) -> list[str]:
    return [kind for kind, spec in ATTACKS.items() if scheme == "tcp" or spec.on_tls]


@dataclass(frozen=True)
class Outcome:
    """What one attack saw."""

    kind: str
    #: Seconds from the connection's start (TLS session established, if any) to its end.
    seconds_to_drop: float
    #: Bytes the listener sent before dropping us.
    received: int
    #: "eof", "reset" or "timeout" (not dropped within the time allowed).
    how: str


async def attack(
    kind: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    timeout: float = 30.0,
    trickle: float | None = None,
) -> Outcome:
    """Make one attack of *kind* on the listener at *host*:*port* and wait until dropped.

    *tls* is the client context for attacks made inside TLS sessions on tls
    listeners (and signals that the listener speaks TLS).
    """
    spec = ATTACKS[kind]
    loop = asyncio.get_running_loop()
    context = tls if (tls is not None and spec.inside_tls) else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if context else None
    )
    start = loop.time()
    received = 0
    how = "eof"

    async def drain() -> None:
        nonlocal received, how
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                received += len(data)
                if received > 1 << 20:
                    raise AssertionError(f"the listener sent {received} bytes to a {kind} peer")
        except (ConnectionError, ssl.SSLError, OSError):
            how = "reset"

    async def trickle_preamble(interval: float) -> None:
        for byte in PREAMBLE:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval)  # the attack itself: one byte per interval
        await asyncio.sleep(timeout)  # then sit there

    dropped = asyncio.ensure_future(drain())
    sender: asyncio.Future[None] | None = None
    try:
        if spec.payload:
            writer.write(spec.payload)
        if spec.trickle:
            sender = asyncio.ensure_future(trickle_preamble(trickle or spec.trickle))
        done, _ = await asyncio.wait({dropped}, timeout=timeout)
        if not done:
            how = "timeout"
    except (ConnectionError, OSError):
        how = "reset"
    finally:
        elapsed = loop.time() - start
        for task in (dropped, sender):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(dropped, *([sender] if sender else []), return_exceptions=True)
        writer.transport.abort()
    return Outcome(kind, elapsed, received, how)


# -- the attacker process -----------------------------------------------------------------------


async def _campaign(
    port: int, connections: int, duration: float, kinds: list[str], tls: ssl.SSLContext | None
) -> dict[str, dict[str, float]]:
    """Keep *connections* attacks going for *duration* seconds, spread over *kinds*.

    Each connection slot makes one kind of attack again and again: those the
    listener drops at once come back at once, a flood of new connections.
    """
    outcomes: list[Outcome] = []
    errors: list[str] = []
    deadline = time.monotonic() + duration

    async def worker(index: int) -> None:
        kind = kinds[index % len(kinds)]
        for _ in range(1_000_000):  # bounded in count too; the deadline comes first
            if time.monotonic() >= deadline:
                return
            try:
                outcomes.append(await attack(kind, port, tls=tls, timeout=duration + 30))
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                errors.append(f"{kind}: {exc!r}")

    await asyncio.gather(*(worker(i) for i in range(connections)))
    summary: dict[str, dict[str, float]] = {}
    for kind in kinds:
        times = sorted(o.seconds_to_drop for o in outcomes if o.kind == kind)
        if times:
            summary[kind] = {
                "count": len(times),
                "p50": times[len(times) // 2],
                "max": times[-1],
                "not_dropped": sum(1 for o in outcomes if o.kind == kind and o.how == "timeout"),
            }
    summary["_total"] = {"count": len(outcomes), "errors": len(errors)}
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--kinds", default=",".join(ATTACKS))
    parser.add_argument("--credentials", help="JSON file with ca, cert and key PEM text (tls)")
    args = parser.parse_args(argv)
    tls = None
    if args.credentials:
        with open(args.credentials, encoding="utf-8") as f:
            creds = json.load(f)
        tls = ssl.create_default_context(cadata=creds["ca"])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "client.pem")
            with open(path, "w", encoding="utf-8") as f:
                f.write(creds["cert"] + creds["key"])
            tls.load_cert_chain(path)
    kinds = args.kinds.split(",")
    print("ready", flush=True)
    summary = asyncio.run(_campaign(args.port, args.connections, args.duration, kinds, tls))
    json.dump(summary, sys.stdout)
    print(flush=True)


if __name__ == "__main__":
    main()
