"""The noxfile's own logic: finding the Pythons that pyenv installed, and the summary.

Each test imports noxfile.py in a child process, since importing it changes
the environment (``PYENV_VERSION``, ``PATH``) the way a nox run needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nox")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pyenv's layout is POSIX")


def _fake_pyenv(root: Path, versions: list[str], selected: str) -> None:
    """A pyenv root with *versions* installed (an executable pythonX.Y each) and a
    ``pyenv`` command that prints *selected* as the version name."""
    for version in versions:
        minor = ".".join(version.split(".")[:2])
        python = root / "versions" / version / "bin" / f"python{minor}"
        python.parent.mkdir(parents=True)
        python.write_text("#!/bin/sh\nexit 1\n")
        python.chmod(0o755)
    (root / "shims").mkdir(parents=True, exist_ok=True)
    pyenv = root / "bin" / "pyenv"
    pyenv.parent.mkdir(parents=True)
    pyenv.write_text(f'#!/bin/sh\n[ "$1" = version-name ] && echo {selected}\n')
    pyenv.chmod(0o755)


def _import_noxfile(env: dict[str, str], code: str = "") -> dict[str, object]:
    """Import noxfile.py in a child process with *env*, run *code*, and return what it
    reports: the versions it added, PYENV_VERSION, PATH, and ``out`` if *code* sets it."""
    script = (
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import noxfile\n"
        "out = None\n"
        f"{code}\n"
        "print(json.dumps({'added': noxfile.PYENV_ADDED, 'out': out,"
        " 'PYENV_VERSION': os.environ.get('PYENV_VERSION'), 'PATH': os.environ['PATH']}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


def _environment(root: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYENV")}
    # No pyenv on PATH: the noxfile finds it through PYENV_ROOT.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env["PYENV_ROOT"] = str(root)
    env.update(extra)
    return env


def test_installed_pythons_that_pyenv_does_not_select_are_added_after_the_selected(
    tmp_path: Path,
) -> None:
    root = tmp_path / "pyenv"
    _fake_pyenv(root, ["3.10.2", "3.10.13", "3.11.7", "3.12.1", "3.12.1t", "3.9.18"], "3.11.7")
    report = _import_noxfile(_environment(root))
    # The newest patch of each missing X.Y that nox tests; no free-threaded build, no 3.9.
    assert report["added"] == ["3.10.13", "3.12.1"]
    assert report["PYENV_VERSION"] == "3.11.7:3.10.13:3.12.1"
    # pyenv's shims were not on PATH: they come last, so nothing earlier is shadowed.
    path = str(report["PATH"]).split(os.pathsep)
    assert path[-1] == str(root / "shims")
    assert path[:-1] == _environment(root)["PATH"].split(os.pathsep)


def test_a_selection_that_has_every_python_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "pyenv"
    _fake_pyenv(root, ["3.10.13", "3.11.7", "3.12.1", "3.13.0"], "unused")
    selection = "3.11.7:3.10.13:3.12.1:3.13.0"
    env = _environment(root, PYENV_VERSION=selection)
    report = _import_noxfile(env)
    assert report["added"] == []
    assert report["PYENV_VERSION"] == selection
    assert report["PATH"] == env["PATH"]


def test_no_pyenv_changes_nothing(tmp_path: Path) -> None:
    env = _environment(tmp_path / "no-pyenv-here")
    env["HOME"] = str(tmp_path)
    report = _import_noxfile(env)
    assert report == {"added": [], "out": None, "PYENV_VERSION": None, "PATH": env["PATH"]}


def test_the_summary_names_skipped_sessions_their_reason_and_how_to_run_them(
    tmp_path: Path,
) -> None:
    """nox logs "Session NAME skipped: REASON."; the summary groups them by reason."""
    code = (
        "import logging\n"
        "log = logging.getLogger('nox')\n"
        "log.warning('Session tests-3.12(comm-core) skipped: Python interpreter 3.12 not found.')\n"
        "log.warning('Session integration-3.12 skipped: Python interpreter 3.12 not found.')\n"
        "log.warning('Session example-3.11 skipped: needs Unix domain sockets.')\n"
        "log.warning('Session lint was successful.')\n"
        "noxfile._LARGE_SKIPPED.append('comm-tcp')\n"
        "out = noxfile._summary_lines()\n"
    )
    env = _environment(tmp_path / "no-pyenv-here", HOME=str(tmp_path))
    env.pop("COMM_LARGE_TESTS", None)
    lines = _import_noxfile(env, code)["out"]
    assert isinstance(lines, list)
    text = "\n".join(lines)
    assert (
        "* skipped (Python interpreter 3.12 not found): tests-3.12(comm-core), integration-3.12"
        in text
    )
    assert "`pyenv install 3.12`" in text
    assert "`nox -p 3.12` runs them" in text
    assert "* skipped (needs Unix domain sockets): example-3.11" in text
    assert "`COMM_LARGE_TESTS=1 nox -s tests`" in text
    assert "lint" not in text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the noxfile reads pyproject with tomllib")
def test_a_package_gets_what_its_requirements_require() -> None:
    # comm-ws requires comm-tls, which requires comm-tcp: all three come from the tree.
    report = _import_noxfile(
        dict(os.environ), "out = noxfile._required_locally(['comm-ws', 'comm-tcp'])"
    )
    assert report["out"] == ["comm-core", "comm-tcp", "comm-tls"]
