"""The build hook of this distribution: its sdist leaves out the repository's ``.gitignore``.

hatchling copies the nearest ``.gitignore`` into every sdist; in comm's monorepo that is
the repository's own, which has nothing to say about one distribution's files.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Drops ``.gitignore`` from the files that hatchling forces into the sdist."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        forced: dict[str, str] = build_data.get("force_include", {})
        for source in [source for source, target in forced.items() if target == ".gitignore"]:
            del forced[source]
