"""``comm backends``: the installed transports, schemes that two claim, and broken plugins."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from comm_core._config import get_setting
from comm_core._registry import BackendInfo, BrokenPlugin, get_registry
from comm_core._version import __version__
from comm_core.cli._common import EXIT_ERROR, EXIT_OK, format_table, print_error

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
List every installed comm transport (backend): the URI scheme it serves, the
distribution that provides it, that distribution's version, and the
capabilities the backend declares. A scheme claimed by two distributions is
listed apart as a conflict: it cannot be used until one of them is uninstalled.
A broken plugin (its entry point fails to import, or names something that is no
comm plugin) is reported as an error after the list: while one is installed,
comm refuses to look up any backend.
"""

EPILOG = """\
exit status:
  0  listed (conflicts included)
  2  usage errors, or an installed plugin is broken (the others are listed)
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "backends",
        help="list the installed transports",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for machines")
    parser.set_defaults(run=run)
    return parser


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


def _broken_as_dict(broken: BrokenPlugin) -> dict[str, Any]:
    return {
        "plugin": broken.plugin,
        "entry_point": broken.entry_point,
        "distribution": broken.distribution,
        "version": broken.version,
        "error": broken.message,
    }


def _origin(info: BackendInfo) -> tuple[str, str]:
    if info.distribution is None:
        return "(registered in code)", "-"
    return info.distribution, info.version or "?"


def run(args: argparse.Namespace) -> int:
    registry = get_registry()
    backends = dict(sorted(registry.backends(strict=False).items()))
    conflicts = dict(sorted(registry.conflicts(strict=False).items()))
    broken = registry.broken()
    if args.json:
        document: dict[str, Any] = {
            "comm_core": __version__,
            "backends": [_as_dict(info) for info in backends.values()],
            "conflicts": [
                {"scheme": scheme, "claimants": [_as_dict(info) for info in claimants]}
                for scheme, claimants in conflicts.items()
            ],
        }
        if broken:
            document["broken"] = [_broken_as_dict(plugin) for plugin in broken]
        print(json.dumps(document, indent=2))
    else:
        _print_table(backends, conflicts, broken)
    # Last, on standard error, as every other command reports a broken plugin.
    for plugin in broken:
        print_error(plugin.message)
    return EXIT_ERROR if broken else EXIT_OK


def _print_table(
    backends: dict[str, BackendInfo],
    conflicts: dict[str, tuple[BackendInfo, ...]],
    broken: tuple[BrokenPlugin, ...],
) -> None:
    if backends:
        rows = [
            [info.scheme, *_origin(info), ", ".join(sorted(info.capabilities)) or "-"]
            for info in backends.values()
        ]
        print(format_table(["SCHEME", "DISTRIBUTION", "VERSION", "CAPABILITIES"], rows))
    elif broken:
        print("No usable comm backend is installed: the plugins below are broken.")
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
    if broken:
        print()
        print("Broken plugins: comm looks up no backend until each is fixed or uninstalled")
        print("(what is wrong with each follows, on standard error):")
        rows = [
            [
                plugin.distribution or "(registered in code)",
                plugin.version or "-",
                f"{plugin.plugin} = {plugin.entry_point}" if plugin.entry_point else plugin.plugin,
            ]
            for plugin in broken
        ]
        table = format_table(["DISTRIBUTION", "VERSION", "ENTRY POINT"], rows)
        print("\n".join("  " + line for line in table.splitlines()))
    sys.stdout.flush()
