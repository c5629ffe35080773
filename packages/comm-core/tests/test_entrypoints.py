"""comm-core's own entry point reader agrees with importlib.metadata."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from comm_core import _entrypoints


def _ours(group: str) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (ep.name, ep.value, ep.distribution, ep.version) for ep in _entrypoints.entry_points(group)
    ]


def _theirs(group: str) -> list[tuple[str, str, str | None, str | None]]:
    found = []
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist
        assert dist is not None
        found.append((ep.name, ep.value, dist.name, dist.version))
    return found


def _write_dist(
    root: Path, dirname: str, name: str, version: str, entry_points: str, *, pkg_info: bool = False
) -> None:
    info = root / dirname
    info.mkdir(parents=True)
    (info / ("PKG-INFO" if pkg_info else "METADATA")).write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: x\n\nbody: no\n",
        encoding="utf-8",
    )
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    importlib.invalidate_caches()


@pytest.mark.parametrize("group", ["comm_core.backends", "console_scripts", "pytest11"])
def test_same_entry_points_as_importlib_for_this_environment(group: str) -> None:
    assert sorted(_ours(group)) == sorted(_theirs(group))


def test_layouts_parsing_and_first_on_the_path_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    group = "comm_test.entrypoints"
    _write_dist(
        first,
        "Demo_Pkg-2.0.dist-info",
        "Demo.Pkg",
        "2.0",
        "# a comment\n\n[other]\nx = nope:nope\n"
        f"[{group}]\n  alpha =  mod_a:obj.attr [extra1, extra2]\nbeta=mod_b\n"
        "[later]\ny = z\n",
    )
    # The same distribution under another spelling, later on the path: shadowed.
    _write_dist(second, "demo_pkg-1.0.dist-info", "demo-pkg", "1.0", f"[{group}]\ngamma = mod_c\n")
    _write_dist(
        second,
        "legacy_thing-0.3-py3.11.egg-info",
        "legacy-thing",
        "0.3",
        f"[{group}]\ndelta = mod_d:f\n",
        pkg_info=True,
    )
    egg = second / "eggy-1.1-py3.11.egg"
    _write_dist(egg, "EGG-INFO", "eggy", "1.1", f"[{group}]\nepsilon = mod_e\n", pkg_info=True)
    (second / "not-a-dist.dist-info").write_text("a file, not a directory", encoding="utf-8")
    monkeypatch.syspath_prepend(str(egg))
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))

    ours = _ours(group)
    assert sorted(ours) == sorted(_theirs(group))
    assert ("alpha", "mod_a:obj.attr [extra1, extra2]", "Demo.Pkg", "2.0") in ours
    assert ("beta", "mod_b", "Demo.Pkg", "2.0") in ours
    assert not [ep for ep in ours if ep[0] == "gamma"]
    assert ("delta", "mod_d:f", "legacy-thing", "0.3") in ours
    assert ("epsilon", "mod_e", "eggy", "1.1") in ours

    # A line that is not ``name = value`` is skipped (importlib.metadata raises on it).
    (first / "Demo_Pkg-2.0.dist-info" / "entry_points.txt").write_text(
        f"[{group}]\nnot an entry\n= no name\nalpha = mod_a\n", encoding="utf-8"
    )
    assert [ep[:2] for ep in _ours(group) if ep[2] == "Demo.Pkg"] == [("alpha", "mod_a")]


def test_load_resolves_attributes_and_rejects_malformed_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ep_target_mod.py").write_text("class Holder:\n    value = 42\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        ep = _entrypoints.EntryPoint("x", "ep_target_mod:Holder.value [extra]", "g", None, None)
        assert ep.load() == 42
        with pytest.raises(ValueError, match="is not 'module"):
            _entrypoints.EntryPoint("x", "not valid!", "g", None, None).load()
        with pytest.raises(AttributeError):
            _entrypoints.EntryPoint("x", "ep_target_mod:Missing", "g", None, None).load()
    finally:
        sys.modules.pop("ep_target_mod", None)


def test_a_zip_on_the_path_hands_over_to_importlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "bundle.zip"
    group = "comm_test.zipped"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped_dist-0.5.dist-info/METADATA", "Name: zipped-dist\nVersion: 0.5\n\n")
        zf.writestr("zipped_dist-0.5.dist-info/entry_points.txt", f"[{group}]\nz = zmod\n")
    monkeypatch.syspath_prepend(str(archive))
    importlib.invalidate_caches()
    assert not _entrypoints._simple_layout()
    assert _ours(group) == [("z", "zmod", "zipped-dist", "0.5")]


def test_building_the_registry_leaves_importlib_metadata_out(tmp_path: Path) -> None:
    (tmp_path / "lean_plugin.py").write_text(
        "import comm_core\n\n@comm_core.hookimpl\ndef comm_register_backends():\n    return []\n",
        encoding="utf-8",
    )
    _write_dist(
        tmp_path, "lean-1.0.dist-info", "lean", "1.0", "[comm_core.backends]\nlean = lean_plugin\n"
    )
    code = (
        "import sys, comm_core; comm_core.get_registry().backends(); "
        "assert 'lean_plugin' in sys.modules; "
        "print(sorted(m for m in ('importlib.metadata', 'email', 'zipfile', 'pickle') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    ).stdout
    assert out.strip() == "[]"
