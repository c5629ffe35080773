"""Development sessions for the comm monorepo.

Run ``nox`` to run the default sessions, ``nox --list`` to see them all, and
``nox -s NAME`` to run one (``nox -s tests -p 3.12`` picks one Python).

Default sessions:

* ``tests``: one session per Python x package (``tests-3.12(comm-inproc)``).
  Each package is installed non-editable with its ``test`` extra into its own
  virtualenv, so an undeclared dependency or missing package data fails, and
  its ``tests/`` directory is run with the package's own pytest config.
* ``integration``: every package in one virtualenv, running the cross-package
  tests in the root ``tests/`` directory (config: root ``pyproject.toml``).
* ``lint``: ``ruff check`` and ``ruff format --check``.
* ``typecheck``: ``mypy --strict`` over every ``packages/*/src``.

Opt-in sessions: ``docs`` (Sphinx HTML, warnings are errors), ``demo`` (runs
``examples/echo.py``), ``bench`` (runs ``python -m bench`` if ``bench/`` exists).

Pythons that are not installed are skipped, not failed. Set
``COMM_STRICT_PYTHONS=1`` to make a missing Python an error (CI does this when
all of them are present). Arguments after ``--`` go to pytest, ruff or mypy.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # for `download_python`

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "integration", "lint", "typecheck"]
# Use the Pythons that are installed; never download one.
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = bool(os.environ.get("COMM_STRICT_PYTHONS"))

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
CORE = "comm-core"
# Distribution names, from the directory names: comm-core first, then the others.
PACKAGES = sorted(
    (path.parent.name for path in ROOT.glob("packages/*/pyproject.toml")),
    key=lambda name: (name != CORE, name),
)


def _install_packages(session: nox.Session, *names: str, extras: str | None = "test") -> None:
    """Install local packages ``names`` (non-editable) with ``extras``, in one call.

    comm-core is always installed, since every package depends on it; listing it
    first as a local path lets the resolver use it for the others' ``comm-core``
    requirement instead of looking it up on the index.
    """
    suffix = f"[{extras}]" if extras else ""
    requirements = [] if CORE in names else [f"./packages/{CORE}"]
    requirements += [f"./packages/{name}{suffix}" for name in names]
    session.install(*requirements)


@nox.session(python=PYTHONS)
@nox.parametrize("package", PACKAGES, ids=PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests against its installed (non-editable) build."""
    _install_packages(session, package)
    session.chdir(f"packages/{package}")
    # `-c` pins the package's own config (and rootdir), so the root pyproject's
    # pytest config never applies here, even if the package has no pytest table.
    session.run("pytest", "-c", "pyproject.toml", "tests", *session.posargs)


@nox.session(python=PYTHONS)
def integration(session: nox.Session) -> None:
    """Run the cross-package tests in tests/ with every package installed."""
    if not (ROOT / "tests").is_dir():
        session.skip("no tests/ directory yet")
    _install_packages(session, *PACKAGES)
    session.install("pytest", "hypothesis")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check lint rules and formatting with ruff (fix with `ruff check --fix .; ruff format .`)."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """Type-check every package's src/ with mypy --strict (tests are not checked)."""
    sources = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("packages/*/src"))
    if not sources:
        session.skip("no packages/*/src yet")
    _install_packages(session, *PACKAGES)
    # msgpack ships no type information; msgpack-types holds its stubs.
    session.install("mypy", "pytest", "hypothesis", "pluggy", "msgpack-types")
    session.run("mypy", "--strict", *sources, *session.posargs)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the HTML docs into docs/_build/html; any warning fails the build."""
    _install_packages(session, *PACKAGES, extras=None)
    session.install("sphinx")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run examples/echo.py over the in-process transport."""
    if not (ROOT / "examples" / "echo.py").is_file():
        session.skip("no examples/echo.py yet")
    _install_packages(session, CORE, "comm-inproc", extras=None)
    session.run("python", "examples/echo.py", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks in bench/ against Dask's comm (see bench/README.md).

    The packages are installed non-editable, so a run measures one snapshot of
    the work tree. Arguments after `--` go to `python -m bench`, such as
    `nox -s bench -- --quick`.
    """
    if not (ROOT / "bench").is_dir():
        session.skip("no benchmarks yet")
    _install_packages(session, *PACKAGES, extras=None)
    session.install("distributed", "uvloop")
    session.run("python", "-m", "bench", *session.posargs)
