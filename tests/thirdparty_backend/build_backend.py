"""A PEP 517 build backend with no dependencies, for this one pure-Python project.

It builds a wheel of the ``comm_thirdparty`` package with the metadata of
``pyproject.toml``: the name, version, dependencies and entry points it needs
are read from the few lines of that file that hold them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent
PACKAGE = "comm_thirdparty"


def _project() -> dict[str, Any]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")

    def value(key: str) -> str:
        match = re.search(rf'^{key} = "([^"]*)"$', text, re.MULTILINE)
        assert match, f"no {key} in pyproject.toml"
        return match[1]

    header = re.search(r'^\[project\.entry-points\."comm_core\.backends"\]$', text, re.MULTILINE)
    assert header, "no comm_core.backends entry points in pyproject.toml"
    section = text[header.end() :].split("\n[", 1)[0]
    entry_points = [
        f"{name} = {target}"
        for name, target in re.findall(r'^(\S+) = "([^"]+)"$', section, re.MULTILINE)
    ]
    requires = re.search(r"^dependencies = \[(.*)\]$", text, re.MULTILINE)
    assert requires, "no dependencies in pyproject.toml"
    return {
        "name": value("name"),
        "version": value("version"),
        "summary": value("description"),
        "requires_python": value("requires-python"),
        "requires": re.findall(r'"([^"]+)"', requires[1]),
        "entry_points": entry_points,
    }


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    project = _project()
    version = project["version"]
    dist_info = f"{PACKAGE}-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {version}",
        f"Summary: {project['summary']}",
        f"Requires-Python: {project['requires_python']}",
        *(f"Requires-Dist: {req}" for req in project["requires"]),
    ]
    files: dict[str, bytes] = {
        path.relative_to(ROOT).as_posix(): path.read_bytes()
        for path in sorted((ROOT / PACKAGE).glob("*.py"))
    }
    files[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: build_backend\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entry_points = "\n".join(["[comm_core.backends]", *project["entry_points"]]) + "\n"
    files[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = [_record_line(path, data) for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()

    name = f"{PACKAGE}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name
