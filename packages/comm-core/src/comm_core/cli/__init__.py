"""The ``comm`` command: ``comm backends``, ``serve``, ``ping``, ``bench`` and ``doctor``.

Installed with comm-core as the ``comm`` console script, and run by ``python -m
comm_core``. It uses the standard library only, and importing :mod:`comm_core`
does not import it. :func:`main` is its one entry point.

Plugins extend the commands through the ``comm_cli_*`` hooks of
:mod:`comm_core.hookspecs`: options, the connection arguments made of them,
and ``comm doctor`` steps. The names this package exports are what those hooks
receive and return, and what a plugin's tests need (:func:`build_parser`,
:func:`connection_args`); the modules of this package are not an API.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence

from comm_core._version import PROTOCOL_VERSION, __version__
from comm_core.cli import backends, bench, doctor, ping, serve
from comm_core.cli._common import (
    EXIT_ERROR,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    PROG,
    CLIError,
    print_error,
)
from comm_core.cli._plugins import OptionGroup, Parser, add_plugin_options, connection_args
from comm_core.cli.doctor import TCP_CONNECT, DoctorContext, DoctorStep, Stage, StepFailed
from comm_core.exceptions import PluginError

__all__ = [
    "TCP_CONNECT",
    "CLIError",
    "DoctorContext",
    "DoctorStep",
    "OptionGroup",
    "Parser",
    "Stage",
    "StepFailed",
    "build_parser",
    "connection_args",
    "main",
]

DESCRIPTION = """\
comm: message-oriented communication for Python distributed systems.
Inspect the installed transports, serve, ping, benchmark, and diagnose addresses.
"""

EPILOG = """\
exit status (see each command's --help for its own):
  0    success
  1    what the command checked failed (no reply, cannot connect or listen, unhealthy)
  2    usage errors, and errors in what was given (a malformed address, an
       uninstalled scheme, options that a transport cannot use), and plugins
       that clash
  130  interrupted by Ctrl-C

Run `comm bench` for a tour: it measures every installed transport in a few seconds.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``comm`` and its commands, with the plugins' options.

    Raises:
        PluginError: two plugins' options clash, or a plugin's
            ``comm_cli_add_options`` hook fails.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{PROG} (comm-core) {__version__}, protocol {PROTOCOL_VERSION}, "
        f"Python {platform.python_version()}",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    backends.add_parser(subparsers)
    for name, command in (("serve", serve), ("ping", ping), ("bench", bench), ("doctor", doctor)):
        add_plugin_options(command.add_parser(subparsers), name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``comm`` command with *argv* (default: ``sys.argv[1:]``); return its exit status."""
    try:
        parser = build_parser()
    except PluginError as exc:  # clashing plugins: no command can be trusted with them
        print_error(str(exc))
        return EXIT_ERROR
    except ValueError as exc:  # a malformed COMM_* environment variable
        print_error(str(exc))
        return EXIT_ERROR
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.error("a command is required: backends, serve, ping, bench or doctor")
    if run is not serve.run:
        # Commands report failures themselves: comm's own warnings (a dropped
        # connection, ...) would only repeat them. `comm serve` logs its own way.
        logging.basicConfig(level=logging.ERROR, format=f"{PROG}: %(name)s: %(message)s")
    try:
        status: int = run(args)
    except CLIError as exc:
        print_error(str(exc))
        return exc.code
    except PluginError as exc:  # a plugin's hook failed, or two plugins clash
        print_error(str(exc))
        return EXIT_ERROR
    except ValueError as exc:  # a malformed COMM_* environment variable
        print_error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`comm bench | head`): exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return status
