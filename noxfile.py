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
* ``typecheck``: ``mypy --strict`` over every ``packages/*/src`` and the
  example backend's ``src``.
* ``example``: installs the example third-party backend of the docs
  (``docs/examples/comm-unix``) the way a user would, and runs its tests, which
  are comm-core's conformance kit.
* ``hardening``: the reliability suite in ``hardening/`` (hostile peers, fuzzing,
  injected faults, load), at its CI size; ``nox -s hardening -- --soak`` runs
  the long mode, with the coverage-guided fuzzer. Its figures are written to
  ``hardening/results/``.

Opt-in sessions: ``docs`` (Sphinx HTML and the docs' doctests, warnings are
errors), ``demo`` (runs ``comm bench`` and ``examples/echo.py``), ``bench``
(runs ``python -m bench`` if ``bench/`` exists).

Pythons that are not installed are skipped, not failed. Set
``COMM_STRICT_PYTHONS=1`` to make a missing Python an error (CI does this when
all of them are present). Arguments after ``--`` go to pytest, ruff or mypy.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # for `download_python`

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "integration", "lint", "typecheck", "example", "hardening"]
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
#: The example third-party backend that the docs walk through (its own distribution).
EXAMPLE = "docs/examples/comm-unix"


def _local_dependencies(name: str) -> list[str]:
    """The packages of this repository that package *name* requires (comm-tls: comm-tcp)."""
    import tomllib

    project = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"]
    required = {re.split(r"[\s<>=!~;\[(]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    return [package for package in PACKAGES if package in required]


def _install_packages(session: nox.Session, *names: str, extras: str | None = "test") -> None:
    """Install local packages ``names`` (non-editable) with ``extras``, in one call.

    comm-core is always installed, since every package depends on it; listing it
    first as a local path lets the resolver use it for the others' ``comm-core``
    requirement instead of looking it up on the index. The same goes for other
    local packages that one of *names* requires (comm-tls requires comm-tcp).
    """
    suffix = f"[{extras}]" if extras else ""
    local = {CORE, *(dep for name in names for dep in _local_dependencies(name))}
    requirements = [f"./packages/{dep}" for dep in PACKAGES if dep in local and dep not in names]
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
    if (ROOT / EXAMPLE / "src").is_dir():
        session.install(f"./{EXAMPLE}")
        sources.append(f"{EXAMPLE}/src")
    # msgpack ships no type information; msgpack-types holds its stubs.
    session.install("mypy", "pytest", "hypothesis", "pluggy", "msgpack-types")
    session.run("mypy", "--strict", *sources, *session.posargs)


@nox.session(default=False)
def docs(session: nox.Session) -> None:
    """Build the HTML docs into docs/_build/html and run their examples; warnings fail.

    The examples on the pages (``doctest`` and ``testcode`` blocks) run over
    inproc and over tcp on 127.0.0.1. pytest is needed to document
    ``comm_core.testing``.
    """
    _install_packages(session, *PACKAGES, extras=None)
    session.install("sphinx", "pytest")
    build = ["sphinx-build", "-W", "--keep-going", "-d", "docs/_build/doctrees"]
    session.run(*build, "-b", "html", "docs", "docs/_build/html")
    session.run(*build, "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python=PYTHONS)
def example(session: nox.Session) -> None:
    """Install the example backend docs/examples/comm-unix and run its tests (the kit)."""
    if sys.platform == "win32":
        session.skip("comm-unix needs Unix domain sockets")
    # Non-editable, from its directory, as its users would; comm-core from this tree.
    session.install(f"./packages/{CORE}", f"./{EXAMPLE}[test]")
    session.chdir(EXAMPLE)
    session.run("pytest", "-c", "pyproject.toml", "tests", *session.posargs)


#: The one Python the hardening suite runs on (it measures; one is enough).
HARDENING_PYTHON = "3.11"


@nox.session(python=HARDENING_PYTHON)
def hardening(session: nox.Session) -> None:
    """Run the reliability suite in hardening/ (see docs/hardening.rst).

    ``nox -s hardening -- --soak`` multiplies its counts and durations and runs
    the coverage-guided fuzzer (atheris, installed only then);
    ``-- --comm-loop=uvloop`` runs it on uvloop. Other arguments after ``--`` go
    to pytest.
    """
    _install_packages(session, *PACKAGES, extras=None)
    session.install("pytest", "hypothesis", "trustme")
    if sys.platform != "win32":  # for `-- --comm-loop=uvloop`
        session.install("uvloop")
    soak = "--soak" in session.posargs
    if soak:
        # atheris ships wheels for few Pythons; its tests skip, saying why, without it.
        session.install("atheris", success_codes=[0, 1, 2])
    session.run("pytest", "-c", "hardening/pytest.ini", "hardening", *session.posargs)


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """Run `comm bench` over every transport, then examples/echo.py.

    Arguments after `--` go to `comm bench`, such as `nox -s demo -- tcp --duration 2`.
    """
    _install_packages(session, *PACKAGES, extras=None)
    session.run("comm", "bench", *session.posargs)
    if (ROOT / "examples" / "echo.py").is_file():
        session.run("python", "examples/echo.py")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Run the benchmarks in bench/ against Dask's comm (see bench/README.md).

    The packages are installed non-editable, so a run measures one snapshot of
    the work tree. Arguments after `--` go to `python -m bench`, such as
    `nox -s bench -- --quick`.
    """
    if not (ROOT / "bench").is_dir():
        session.skip("no benchmarks yet")
    # Byte-compile at install time, as pip does: the import-time figures must not include
    # compiling sources (which happens on every run where PYTHONDONTWRITEBYTECODE is set).
    session.env["UV_COMPILE_BYTECODE"] = "1"
    _install_packages(session, *PACKAGES, extras=None)
    session.install("distributed", "uvloop")
    session.run("python", "-m", "bench", *session.posargs)
