"""comm-core's modules import one another in one direction: no import circle.

Every import statement counts, wherever it is (at the top, in a function, under
``if TYPE_CHECKING:``): a circle through a lazy import is a circle all the same,
one that a refactoring or a type checker trips over.
"""

from __future__ import annotations

import ast
from pathlib import Path

import comm_core

PACKAGE = Path(comm_core.__file__).parent


def module_names(package: Path) -> dict[str, Path]:
    """Every module of *package* by dotted name (a package by its own name)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """For each module of *package*, the modules of *package* it imports."""
    modules = module_names(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[: len(here) - node.level + 1]
                    base = ".".join([*here, base] if base else here)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of *graph* that hold more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_comm_core_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE)
    assert {"comm_core.protocol", "comm_core._api", "comm_core.stream"} <= graph.keys()
    found = circles(graph)
    described = [
        " ; ".join(f"{a} -> {sorted(graph[a] & set(circle))}" for a in circle) for circle in found
    ]
    assert not found, "import circles in comm_core: " + " | ".join(described)


def test_the_check_finds_a_circle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n"
    )
    (package / "c.py").write_text("def f():\n    from . import a\n")
    graph = import_graph(package)
    assert graph["pkg.c"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b"]]


def test_the_wire_protocol_is_a_leaf() -> None:
    # The registry hands the codec its serializer families; the codec asks nothing above it.
    graph = import_graph(PACKAGE)
    allowed = {
        "comm_core._bounds",
        "comm_core._config",
        "comm_core._record",
        "comm_core._text",
        "comm_core.exceptions",
    }
    assert graph["comm_core.protocol"] <= allowed, graph["comm_core.protocol"] - allowed


def test_the_stream_comm_is_a_facade_over_its_protocol() -> None:
    # StreamComm asks its protocol through a few methods and reads a few facts; the
    # state (queues, flags, handles) and the write policy are the protocol's alone.
    source = (PACKAGE / "stream.py").read_text(encoding="utf-8")
    (comm_class,) = (
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "StreamComm"
    )
    used = set()
    for node in ast.walk(comm_class):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "protocol"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            used.add(node.attr)
    methods = {
        "next_message",
        "write_message",
        "queue_handshake",
        "undecodable",
        "close",
        "abort",
        "is_closed",
        "message_waiting",
        "greet",
    }
    facts = {"transport", "local", "peer"}
    assert used, "the check found nothing: has StreamComm changed shape?"
    assert used <= methods | facts, sorted(used - methods - facts)
    # No alias of the protocol that the check above would miss.
    aliases = [
        node
        for node in ast.walk(comm_class)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "protocol"
    ]
    assert not aliases
