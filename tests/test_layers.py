"""Across distributions: no module of one names a private (``_x``) name of another.

Whatever two transports share lives in comm-core, public; a transport uses
comm-core's public names only, and comm-tls uses comm-tcp's public classes only.
Checked on the source of every distribution of the repository, statically: imports
of private modules or names, and private attributes read from a name imported from
another distribution.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(ROOT.glob("packages/*/src/*/"), key=str)
PACKAGES = {path.name for path in SOURCES if (path / "__init__.py").exists()}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def offences(path: Path, own: str) -> list[str]:
    """Where module *path* of package *own* names a private name of another package."""
    found = []
    foreign: set[str] = set()  # local names bound to another package's objects
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in PACKAGES and top != own:
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
                    foreign.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            top = node.module.split(".")[0]
            if top not in PACKAGES or top == own:
                continue
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                foreign.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in foreign
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("package", SOURCES, ids=lambda path: path.name)
def test_no_private_name_of_another_distribution(package: Path) -> None:
    assert {"comm_core", "comm_tcp", "comm_tls"} <= PACKAGES
    found = {
        str(path.relative_to(ROOT)): where
        for path in sorted(package.rglob("*.py"))
        if (where := offences(path, package.name))
    }
    assert not found, found


def test_the_check_finds_private_names(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import comm_tcp._direct\n"
        "from comm_core._config import get_setting\n"
        "from comm_core import _registry, connect\n"
        "from comm_tcp import TCPListener\n"
        "from comm_tls import TLSBackend as B\n"
        "TCPListener._make_protocol(None)\n"
        "B._connector\n"
        "connect.__name__\n"
    )
    found = offences(module, "comm_tls")
    assert [line.split(":")[0] for line in found] == ["line 1", "line 2", "line 3", "line 6"]
    assert offences(module, "comm_tcp") == [
        "line 2: from comm_core._config import ...",
        "line 3: from comm_core import _registry",
        "line 7: B._connector",
    ]
