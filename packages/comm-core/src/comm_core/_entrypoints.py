"""Entry points of installed distributions, read without :mod:`importlib.metadata`.

Importing :mod:`importlib.metadata` costs more than the rest of comm-core together
(it pulls in :mod:`email`, :mod:`zipfile`, :mod:`pathlib` and more), and the
registry needs very little of it: the ``[comm_core.backends]`` section of each
distribution's ``entry_points.txt``, and the name and version of the few
distributions that have one. This module reads exactly that from the
``*.dist-info`` and ``*.egg-info`` directories on :data:`sys.path`, with the same
rules as :func:`importlib.metadata.entry_points`:

* distributions are searched along :data:`sys.path` in order (``""`` is the
  current directory), and of several with one normalized name the first wins;
* a path entry that is an ``.egg`` directory contributes its ``EGG-INFO``;
* ``entry_points.txt`` is an INI file whose section names are groups and whose
  lines are ``name = module[:attr.path] [extras]``.

Where that is not the whole picture, :func:`entry_points` hands over to
:mod:`importlib.metadata`: when a path entry is a zip file or anything else but a
directory, or when an import hook on :data:`sys.meta_path` other than the
standard path finder can find distributions.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import import_module
from importlib.machinery import PathFinder
from typing import Any

__all__ = ["EntryPoint", "entry_points"]

_VALUE = r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?(\[.*\])?\s*$"


class EntryPoint:
    """One entry point: its name, its ``module:attr`` value and its distribution."""

    __slots__ = ("distribution", "group", "name", "value", "version")

    def __init__(
        self, name: str, value: str, group: str, distribution: str | None, version: str | None
    ) -> None:
        #: The entry point's name (the left of ``=``).
        self.name = name
        #: ``module[:attr.path]``, as written.
        self.value = value
        #: The group (section) it was found in.
        self.group = group
        #: The distribution's name as its metadata spells it (``comm-tcp``).
        self.distribution = distribution
        #: The distribution's version.
        self.version = version

    def load(self) -> Any:
        """Import the module and return the object the value names.

        Raises:
            ValueError: the value is not ``module[:attr.path]``.
            Exception: whatever importing the module raises.
        """
        match = re.match(_VALUE, self.value)
        if match is None:
            raise ValueError(f"entry point value {self.value!r} is not 'module[:attr]'")
        obj: Any = import_module(match.group("module"))
        attrs = match.group("attr")
        for attr in attrs.split(".") if attrs else ():
            obj = getattr(obj, attr)
        return obj

    def __repr__(self) -> str:
        return (
            f"EntryPoint(name={self.name!r}, value={self.value!r}, group={self.group!r}, "
            f"distribution={self.distribution!r})"
        )


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None


def _headers(path: str) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from the header block of a METADATA/PKG-INFO file."""
    name = version = None
    try:
        with open(path, encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key = key.strip().lower()
                if key == "name":
                    name = value.strip()
                elif key == "version":
                    version = value.strip()
                if name is not None and version is not None:
                    break
    except (OSError, UnicodeDecodeError):
        pass
    return name, version


def _section(text: str, group: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[" and line[-1] == "]":
            section = line.strip("[]")  # as importlib.metadata reads it: no inner strip
            continue
        if section == group:
            name, sep, value = line.partition("=")
            if sep and name.strip():
                found.append((name.strip(), value.strip()))
    return found


def _metadata_dirs(entry: str) -> list[tuple[str, str]]:
    """``(normalized name, metadata directory)`` of the distributions at one path entry."""
    root = entry or "."
    try:
        children = sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    if root.lower().endswith(".egg"):
        stem = os.path.basename(root.rstrip("/" + os.sep))
        for child in children:
            if child.lower() == "egg-info":
                found.append((_normalize(stem.partition("-")[0]), os.path.join(root, child)))
    for child in children:
        low = child.lower()
        if low.endswith((".dist-info", ".egg-info")):
            path = os.path.join(root, child)
            if os.path.isdir(path):
                found.append((_normalize(low.rpartition(".")[0].partition("-")[0]), path))
    return found


def _simple_layout() -> bool:
    """Whether every distribution on this interpreter lives in a directory we can read."""
    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_distributions"):
            return False
    for entry in sys.path:
        if entry and not os.path.isdir(entry) and os.path.exists(entry):
            return False  # a zip file, or something an import hook serves
    return True


def _from_importlib(group: str) -> list[EntryPoint]:
    from importlib.metadata import entry_points as importlib_entry_points

    found = []
    for ep in importlib_entry_points(group=group):
        dist = getattr(ep, "dist", None)
        found.append(
            EntryPoint(
                ep.name,
                ep.value,
                group,
                dist.name if dist is not None else None,
                dist.version if dist is not None else None,
            )
        )
    return found


def entry_points(group: str) -> list[EntryPoint]:
    """Every entry point of *group* that installed distributions publish.

    The same entry points as ``importlib.metadata.entry_points(group=group)``,
    in a stable order: path entries in :data:`sys.path` order, and within one,
    distributions by directory name.
    """
    if not _simple_layout():
        return _from_importlib(group)
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for entry in sys.path:
        for normalized, path in _metadata_dirs(entry):
            if normalized in seen:
                continue
            seen.add(normalized)
            text = _read(os.path.join(path, "entry_points.txt"))
            if text is None or f"[{group}]" not in text:
                continue
            pairs = _section(text, group)
            if not pairs:
                continue
            metadata = (
                "PKG-INFO"
                if path.lower().endswith(".egg-info") or path.endswith("EGG-INFO")
                else "METADATA"
            )
            name, version = _headers(os.path.join(path, metadata))
            for ep_name, value in pairs:
                found.append(EntryPoint(ep_name, value, group, name, version))
    return found
