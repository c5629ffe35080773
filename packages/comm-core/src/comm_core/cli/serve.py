"""``comm serve ADDRESS``: an echo listener, for ``comm ping``, ``bench`` and ``doctor``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import comm_core
from comm_core.abc import Comm
from comm_core.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    CLIError,
    about,
    backend_for,
    echo,
    stop_on_signals,
)
from comm_core.cli._plugins import connection_args
from comm_core.exceptions import AddressError, CommError, ConnectError

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Listen on ADDRESS and send every message back to its sender. Prints the
address listened on and the address to give clients (the contact address),
then one line per connection; stops on Ctrl-C or SIGTERM.

examples:
  comm serve tcp://127.0.0.1:8786
  comm serve tcp://                      every interface, a free port
  comm ping tcp://127.0.0.1:8786         from another terminal
"""

EPILOG = """\
exit status:
  0  stopped by Ctrl-C or SIGTERM
  1  could not listen (the address is in use, or not this machine's)
  2  other errors: usage, a malformed address, an unknown scheme, options that the
     transport cannot use
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run an echo listener",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("address", metavar="ADDRESS", help="where to listen, such as tcp://:8786")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no line per connection")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log comm's informational messages too"
    )
    parser.set_defaults(run=run)
    return parser


def _say(text: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    import asyncio  # here: `comm backends` and `comm --help` need no event loop

    address, _, backend = backend_for(args.address)
    notes: list[str] = []
    listen_args = connection_args(args, backend, server_side=True, notes=notes)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_serve(address, args, listen_args, notes))
    except KeyboardInterrupt:  # where the event loop cannot handle signals (Windows)
        print("stopped", flush=True)
        return EXIT_OK


async def _serve(
    address: str, args: argparse.Namespace, listen_args: dict[str, Any], notes: list[str]
) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handlers: set[asyncio.Task[Any]] = set()
    comms: set[Comm] = set()
    served = 0

    async def handle(comm: Comm) -> None:
        nonlocal served
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        comms.add(comm)
        served += 1
        peer = comm.peer_address
        if not args.quiet:
            _say(f"{peer}: connected")
        count = 0
        reason = "closed"
        try:
            count = await echo(comm)
        except CommError as exc:
            reason = f"dropped: {exc}"
        finally:
            comms.discard(comm)
            if task is not None:
                handlers.discard(task)
        if not args.quiet:
            _say(f"{peer}: {reason} after {count} message{'s' if count != 1 else ''}")

    with stop_on_signals(loop, stop.set):
        # deserialize=False: custom values are echoed as they came, never deserialized.
        listener = comm_core.listen(address, handle, deserialize=False, **listen_args)
        try:
            await listener.start()
        except ConnectError as exc:
            raise CLIError(about(address, exc, "cannot listen on"), EXIT_FAILURE) from exc
        except AddressError as exc:
            raise CLIError(str(exc)) from exc
        try:
            print(f"listen address: {listener.listen_address}")
            print(f"contact address: {listener.contact_address}")
            for note in notes:  # from the plugins that made the connection arguments
                print(note)
            print("serving; press Ctrl-C to stop", flush=True)
            await stop.wait()
        finally:
            listener.stop()
            for comm in list(comms):
                comm.abort()
            if handlers:
                await asyncio.wait(handlers, timeout=5)
    print(f"stopped after {served} connection{'s' if served != 1 else ''}", flush=True)
    return EXIT_OK
