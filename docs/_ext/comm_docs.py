"""Directives that generate parts of the comm docs from the code, so that they cannot drift.

``.. comm-settings::``
    A table of every setting in :data:`comm_core.SETTINGS`: name, environment
    variable, default, accepted values and meaning.
``.. comm-error-tree::``
    The class tree of :class:`comm_core.CommError`, with the built-in
    exceptions each error also derives from.
``.. comm-conformance-tests::``
    What the conformance kit checks: each ``test_*`` method of
    :class:`comm_core.testing.BackendConformance` with the first line of its
    docstring.
"""

from __future__ import annotations

import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

#: How the environment variable of a setting is written, by the name of its parser.
_ACCEPTS = {
    "_parse_bool": "``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off``",
    "_parse_seconds": "seconds, a finite number >= 0 (``2.5``)",
    "_parse_size": "bytes, plain or with a unit (``1048576``, ``64MiB``, ``2GB``)",
    "_parse_scheme": "a URI scheme (``inproc``)",
}

_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return f"``{value}``"
    if isinstance(value, int) and value >= 1024:
        for unit, size in _UNITS:
            if value % size == 0:
                return f"``{value}`` ({value // size} {unit})"
    return f"``{value!r}``"


def _describe_parser(parse: Any) -> str:
    name = getattr(parse, "__name__", "")
    if name in _ACCEPTS:
        return _ACCEPTS[name]
    doc = inspect.getdoc(parse)
    return doc.splitlines()[0] if doc else name or "text"


class _GeneratedRst(SphinxDirective):
    """A directive whose body is reStructuredText built by :meth:`lines`."""

    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        source = self.get_source_info()[0] or "<generated>"
        content = StringList(self.lines(), source=source)
        self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)


class SettingsTable(_GeneratedRst):
    """The table of comm-core's settings."""

    def lines(self) -> list[str]:
        from comm_core import SETTINGS

        out = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 20 26 16 38",
            "",
            "   * - Setting",
            "     - Environment variable",
            "     - Default",
            "     - Meaning; what the variable accepts",
        ]
        for setting in SETTINGS.values():
            out += [
                f"   * - ``{setting.name}``",
                f"     - ``{setting.env}``",
                f"     - {_format_default(setting.default)}",
                f"     - {setting.doc}",
                "",
                f"       Accepts: {_describe_parser(setting.parse)}.",
            ]
        return out


class ErrorTree(_GeneratedRst):
    """The hierarchy of comm's errors, as a literal block."""

    def lines(self) -> list[str]:
        from comm_core import exceptions

        root = exceptions.CommError
        out = [".. code-block:: text", "", f"   {root.__name__}"]

        def children(cls: type) -> list[type]:
            return [sub for sub in cls.__subclasses__() if sub.__module__ == root.__module__]

        def label(cls: type, parent: type) -> str:
            extra = [
                base.__name__
                for base in cls.__bases__
                if base is not parent and base.__module__ == "builtins"
            ]
            return cls.__name__ + (f"  (also {', '.join(extra)})" if extra else "")

        def walk(cls: type, prefix: str) -> None:
            subs = children(cls)
            for index, sub in enumerate(subs):
                last = index == len(subs) - 1
                out.append(f"   {prefix}{'└── ' if last else '├── '}{label(sub, cls)}")
                walk(sub, prefix + ("    " if last else "│   "))

        walk(root, "")
        return out


class ConformanceTests(_GeneratedRst):
    """A definition list of the conformance kit's tests."""

    def lines(self) -> list[str]:
        from comm_core.testing import BackendConformance

        out: list[str] = []
        for name, member in vars(BackendConformance).items():
            if not (name.startswith("test_") and callable(member)):
                continue
            doc = inspect.getdoc(member) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else "(undocumented)"
            out += [f"``{name}``", f"   {summary}", ""]
        return out


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("comm-settings", SettingsTable)
    app.add_directive("comm-error-tree", ErrorTree)
    app.add_directive("comm-conformance-tests", ConformanceTests)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
