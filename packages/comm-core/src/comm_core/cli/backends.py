"""``comm backends``: the installed transports, and schemes that two distributions claim."""

from __future__ import annotations

import argparse
import json
from typing import Any

from comm_core._config import get_setting
from comm_core._registry import BackendInfo, get_registry
from comm_core._version import __version__
from comm_core.cli._common import EXIT_OK, CLIError, format_table
from comm_core.exceptions import BackendError

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
List every installed comm transport (backend): the URI scheme it serves, the
distribution that provides it, that distribution's version, and the
capabilities the backend declares. A scheme claimed by two distributions is
listed apart as a conflict: it cannot be used until one of them is uninstalled.
"""

EPILOG = """\
exit status:
  0  listed (conflicts included)
  2  usage errors, or an installed plugin is broken
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backends",
        help="list the installed transports",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for machines")
    parser.set_defaults(run=run)


def _as_dict(info: BackendInfo) -> dict[str, Any]:
    cls = info.backend_class
    return {
        "scheme": info.scheme,
        "distribution": info.distribution,
        "version": info.version,
        "plugin": info.plugin,
        "capabilities": sorted(info.capabilities),
        "backend_class": f"{cls.__module__}.{cls.__qualname__}",
    }


def _origin(info: BackendInfo) -> tuple[str, str]:
    if info.distribution is None:
        return "(registered in code)", "-"
    return info.distribution, info.version or "?"


def run(args: argparse.Namespace) -> int:
    registry = get_registry()
    try:
        backends = dict(sorted(registry.backends().items()))
        conflicts = dict(sorted(registry.conflicts().items()))
    except BackendError as exc:
        raise CLIError(str(exc)) from exc
    if args.json:
        print(
            json.dumps(
                {
                    "comm_core": __version__,
                    "backends": [_as_dict(info) for info in backends.values()],
                    "conflicts": [
                        {"scheme": scheme, "claimants": [_as_dict(info) for info in claimants]}
                        for scheme, claimants in conflicts.items()
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK

    if backends:
        rows = [
            [info.scheme, *_origin(info), ", ".join(sorted(info.capabilities)) or "-"]
            for info in backends.values()
        ]
        print(format_table(["SCHEME", "DISTRIBUTION", "VERSION", "CAPABILITIES"], rows))
    else:
        print("No comm backends are installed. Install a transport, such as: pip install comm-tcp")
    if get_setting("disable_plugin_autoload"):
        print(
            "Note: plugin autoload is off (COMM_DISABLE_PLUGIN_AUTOLOAD), so installed "
            "transports are not loaded."
        )
    if conflicts:
        print()
        print(
            "Conflicts: these schemes are claimed by more than one distribution and cannot "
            "be used; uninstall all but one of each:"
        )
        rows = []
        for scheme, claimants in conflicts.items():
            for i, info in enumerate(claimants):
                rows.append(
                    [
                        scheme if i == 0 else "",
                        *_origin(info),
                        f"plugin {info.plugin!r}",
                        ", ".join(sorted(info.capabilities)) or "-",
                    ]
                )
        table = format_table(["SCHEME", "DISTRIBUTION", "VERSION", "PLUGIN", "CAPABILITIES"], rows)
        print("\n".join("  " + line for line in table.splitlines()))
    return EXIT_OK
