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
* ``hardening``: the reliability suite in ``hardening/`` (hostile peers, fuzzing,
  injected faults, load), at its CI size; ``nox -s hardening -- --soak`` runs
  the long mode, with the coverage-guided fuzzer. Its figures are written to
  ``hardening/results/``.
* ``build``: builds every distribution's wheel and sdist into ``dist/``,
  checks them (``twine check`` and ``tests/distributions``), then installs the
  wheels alone in a fresh virtualenv and runs ``examples/echo.py`` and ``comm
  backends`` there: what a release would publish. About 10 seconds.
* ``summary``: runs last and says, after nox's own list, which sessions the run
  skipped and why, and how to run them.

Opt-in sessions: ``docs`` (Sphinx HTML and the docs' doctests, warnings are
errors), ``demo`` (runs ``comm bench`` and ``examples/echo.py``), ``bench``
(runs ``python -m bench`` if ``bench/`` exists), ``dask`` (comm-dask's tests:
Dask clusters over comm; CI runs it) and ``dask-suite`` (Dask's own comm tests
against comm-dask, fetched from Dask's repository at a pinned commit).

Tests marked ``large`` need gigabytes of memory (messages above 2 GiB); they are
skipped unless ``COMM_LARGE_TESTS=1`` (CI sets it), so that a plain ``nox``
stays well under 2 GB.

Pythons: nox finds those on ``PATH``; this file adds those that pyenv has
installed but not selected (see :func:`_use_pyenv_pythons`). Pythons that are
not found are skipped, not failed. Set ``COMM_STRICT_PYTHONS=1`` to make a
missing Python an error (CI does this when all of them are present). Arguments
after ``--`` go to pytest, ruff or mypy.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # for `download_python`

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
# `summary` comes last: it reports on the sessions before it.
nox.options.sessions = [
    "tests", "integration", "lint", "typecheck", "hardening", "build", "summary",
]  # fmt: skip
# Use the Pythons that are installed; never download one.
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = bool(os.environ.get("COMM_STRICT_PYTHONS"))

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
#: The variable that lets the tests marked ``large`` run (see docs/development.rst).
LARGE_TESTS = "COMM_LARGE_TESTS"
#: The packages whose tests marked ``large`` were skipped in this run (once per Python).
_LARGE_SKIPPED: list[str] = []


def _large_tests_enabled() -> bool:
    """Whether the tests marked ``large`` run: ``COMM_LARGE_TESTS`` set, and not to 0."""
    return os.environ.get(LARGE_TESTS, "0") not in ("", "0")


CORE = "comm-core"
# Distribution names, from the directory names: comm-core first, then the others.
PACKAGES = sorted(
    (path.parent.name for path in ROOT.glob("packages/*/pyproject.toml")),
    key=lambda name: (name != CORE, name),
)
#: The packages whose transport needs Unix domain sockets: skipped where there are none.
NEEDS_AF_UNIX = {"comm-unix"}
#: Distributions whose tests run in a session of their own rather than in ``tests``, and
#: that ``integration`` and ``hardening`` leave out: comm-dask (the ``dask`` session;
#: nothing else depends on it, and it brings Dask).
OWN_SESSION = {"comm-dask": "dask"}
#: The distributions of comm itself: every one but those.
CORE_PACKAGES = [name for name in PACKAGES if name not in OWN_SESSION]


# -- Pythons installed by pyenv ----------------------------------------------------------


def _output(*command: str) -> str | None:
    """The stripped standard output of *command*, or None if it cannot run or fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _use_pyenv_pythons() -> list[str]:
    """Let nox find the Pythons of :data:`PYTHONS` that pyenv installed but does not select.

    pyenv's ``python3.12`` shim runs Python 3.12 only if ``PYENV_VERSION`` (or
    a ``.python-version`` file, or ``pyenv global``) selects a 3.12 version;
    otherwise it fails, and nox reports the interpreter as not found. This adds
    the newest installed release of each missing X.Y to ``PYENV_VERSION``,
    after the versions already selected, so ``python`` stays what it was. It
    also puts pyenv's shims at the end of ``PATH`` if they are not on it.
    Sessions inherit both. Returns the versions it added.
    """
    if sys.platform == "win32":  # pyenv-win has another layout
        return []
    root_text = os.environ.get("PYENV_ROOT") or _output("pyenv", "root")
    root = Path(root_text) if root_text else Path.home() / ".pyenv"
    if not (root / "versions").is_dir():
        return []
    newest: dict[str, tuple[int, str]] = {}  # "3.12" -> (patch, "3.12.1")
    for path in (root / "versions").iterdir():
        match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", path.name)
        if match is None:  # virtualenvs, dev and free-threaded builds
            continue
        minor = f"{match[1]}.{match[2]}"
        if (path / "bin" / f"python{minor}").is_file():
            newest[minor] = max(newest.get(minor, (-1, "")), (int(match[3]), path.name))
    pyenv = shutil.which("pyenv") or str(root / "bin" / "pyenv")
    selected_text = os.environ.get("PYENV_VERSION") or _output(pyenv, "version-name") or "system"
    selected = selected_text.split(":")
    added = [
        newest[minor][1]
        for minor in PYTHONS
        if minor in newest
        and not any(name == minor or name.startswith(f"{minor}.") for name in selected)
    ]
    if not added:
        return []
    os.environ["PYENV_VERSION"] = ":".join([*selected, *added])
    os.environ.setdefault("PYENV_ROOT", str(root))
    shims = str(root / "shims")
    if shims not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [os.environ.get("PATH"), shims]))
    return added


PYENV_ADDED = _use_pyenv_pythons()


def _local_dependencies(name: str) -> list[str]:
    """The packages of this repository that package *name* requires (comm-tls: comm-tcp)."""
    import tomllib

    project = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"]
    required = {re.split(r"[\s<>=!~;\[(]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    return [package for package in PACKAGES if package in required]


def _required_locally(names: tuple[str, ...] | list[str]) -> list[str]:
    """comm-core and the packages of this repository that *names* require, directly or
    through one another (comm-ws: comm-tls, hence comm-tcp), in ``PACKAGES`` order."""
    local = {CORE}
    todo = list(names)
    while todo:
        for dep in _local_dependencies(todo.pop()):
            if dep not in local:
                local.add(dep)
                todo.append(dep)
    return [package for package in PACKAGES if package in local]


def _install_packages(session: nox.Session, *names: str, extras: str | None = "test") -> None:
    """Install local packages ``names`` (non-editable) with ``extras``, in one call.

    comm-core is always installed, since every package depends on it; listing it
    first as a local path lets the resolver use it for the others' ``comm-core``
    requirement instead of looking it up on the index. The same goes for other
    local packages that one of *names* requires, directly or not (comm-tls requires
    comm-tcp; comm-ws requires comm-tls, hence comm-tcp).
    """
    suffix = f"[{extras}]" if extras else ""
    requirements = [f"./packages/{dep}" for dep in _required_locally(names) if dep not in names]
    requirements += [f"./packages/{name}{suffix}" for name in names]
    session.install(*requirements)


@nox.session(python=PYTHONS)
@nox.parametrize("package", CORE_PACKAGES, ids=CORE_PACKAGES)
def tests(session: nox.Session, package: str) -> None:
    """Run one package's tests against its installed (non-editable) build."""
    if package in NEEDS_AF_UNIX and not hasattr(socket, "AF_UNIX"):
        session.skip(f"{package} needs Unix domain sockets")
    _install_packages(session, package)
    session.chdir(f"packages/{package}")
    # `-c` pins the package's own config (and rootdir), so the root pyproject's
    # pytest config never applies here, even if the package has no pytest table.
    session.run("pytest", "-c", "pyproject.toml", "tests", *session.posargs)
    # The packages with tests marked `large` declare the marker in their pytest config.
    if not _large_tests_enabled() and '"large:' in Path("pyproject.toml").read_text():
        _LARGE_SKIPPED.append(package)


@nox.session(python=PYTHONS)
def integration(session: nox.Session) -> None:
    """Run the cross-package tests in tests/ with every package installed."""
    if not (ROOT / "tests").is_dir():
        session.skip("no tests/ directory yet")
    _install_packages(session, *CORE_PACKAGES)
    # nox: tests/test_noxfile.py imports this file.
    session.install("pytest", "hypothesis", "nox")
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
    _install_packages(session, *CORE_PACKAGES)
    # comm-dask without its test extra (pandas, pyarrow): mypy needs distributed only.
    session.install(*(f"./packages/{name}" for name in OWN_SESSION))
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


@nox.session(venv_backend="none", default=False)
def example(session: nox.Session) -> None:
    """The docs' example backend is comm-unix now: `nox -s tests -k comm-unix` tests it."""
    session.skip(
        "the example backend of docs/extending.rst is packages/comm-unix, a distribution "
        "of its own: `nox -s tests -k comm-unix` runs its tests"
    )


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
    _install_packages(session, *CORE_PACKAGES, extras=None)
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
    _install_packages(session, *CORE_PACKAGES, extras=None)
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
    # dask.array and dask.dataframe for the end-to-end section (the cluster workloads).
    session.install("distributed", "uvloop", "dask[array,dataframe]")
    session.run("python", "-m", "bench", *session.posargs)


#: The one Python the ``dask`` session runs on (its cluster workloads take minutes).
DASK_PYTHON = "3.11"


@nox.session(python=DASK_PYTHON, default=False)
def dask(session: nox.Session) -> None:
    """Run comm-dask's tests: Dask over comm+tcp, comm+tls and comm+inproc (see docs/dask.rst).

    Its comm tests, then a LocalCluster with worker processes over Dask's tcp,
    comm+tcp and comm+tls, running a dask.array reduction, a dask.dataframe
    shuffle (about 300 MB between two workers) and 10,000 tiny tasks; the
    results must equal Dask's tcp's. About 3 minutes on 2 cores. Not run by
    ``nox`` alone (it installs Dask, pandas and pyarrow); CI runs it.
    """
    _install_packages(session, *PACKAGES)
    session.chdir("packages/comm-dask")
    session.run("pytest", "-c", "pyproject.toml", "tests", *session.posargs)


#: Dask's repository, and the commit of ``distributed/comm/tests/test_comms.py`` that
#: ``dask-suite`` runs: the release 2026.7.1, with the distributed of that release.
DASK_REPOSITORY = "https://github.com/dask/distributed"
DASK_COMMIT = "3bca3f9f1be3602a59b6e4898de2bab3cb6c0fc4"
DASK_VERSION = "2026.7.1"


@nox.session(name="dask-suite", python=DASK_PYTHON, default=False)
def dask_suite(session: nox.Session) -> None:
    """Run Dask's own comm tests against comm-dask (see docs/dask.rst).

    Fetches Dask's repository at :data:`DASK_COMMIT` (``git``, the tag of
    :data:`DASK_VERSION`) into a temporary directory outside the work tree;
    copies ``distributed/comm/tests/test_comms.py`` next to
    ``packages/comm-dask/dask_suite/conftest.py``, which maps the suite's
    ``tcp``, ``tls`` and ``inproc`` onto comm-dask's backends, and Dask's test
    certificates (``distributed/tests/tls-*.pem``) into this session's
    installed distributed, where Dask's ``get_cert`` reads them; then runs the
    suite with distributed :data:`DASK_VERSION`. Nothing of Dask's is kept in
    the work tree. ``-- --repo PATH`` fetches from a local clone instead; other
    arguments go to pytest.
    """
    args = list(session.posargs)
    repository = DASK_REPOSITORY
    if "--repo" in args:
        at = args.index("--repo")
        repository = args[at + 1]
        del args[at : at + 2]
    _install_packages(session, *PACKAGES)
    session.install(f"distributed=={DASK_VERSION}", f"dask=={DASK_VERSION}", "pytest-timeout")
    installed = session.run(
        "python", "-c", "import distributed, os; print(os.path.dirname(distributed.__file__))",
        silent=True,
    )  # fmt: skip
    certs = Path(str(installed).strip()) / "tests"
    with tempfile.TemporaryDirectory(prefix="comm-dask-suite-") as tmp:
        clone = Path(tmp) / "distributed"
        git = ["git", "-C", str(clone)]
        session.run("git", "init", "--quiet", str(clone), external=True)
        session.run(
            *git, "fetch", "--quiet", "--depth=1", repository, f"refs/tags/{DASK_VERSION}",
            external=True,
        )  # fmt: skip
        fetched = session.run(*git, "rev-parse", "FETCH_HEAD^{commit}", external=True, silent=True)
        if str(fetched).strip() != DASK_COMMIT:
            session.error(f"tag {DASK_VERSION} of {repository} is {fetched}, not {DASK_COMMIT}")

        def show(path: str) -> str:
            return str(
                session.run(*git, "show", f"{DASK_COMMIT}:{path}", external=True, silent=True)
            )

        suite = Path(tmp) / "suite"
        suite.mkdir()
        (suite / "test_comms.py").write_text(show("distributed/comm/tests/test_comms.py"))
        conftest = ROOT / "packages" / "comm-dask" / "dask_suite" / "conftest.py"
        shutil.copy(conftest, suite / "conftest.py")
        listed = session.run(
            *git, "ls-tree", "--name-only", DASK_COMMIT, "distributed/tests/",
            external=True, silent=True,
        )  # fmt: skip
        certs.mkdir(exist_ok=True)
        for path in str(listed).split():
            name = path.rsplit("/", 1)[-1]
            if name.startswith("tls-") and name.endswith(".pem"):
                (certs / name).write_text(show(path))
        with session.chdir(suite):
            session.run(
                "pytest", "-p", "no:cacheprovider", "--timeout=120", "-rs", "test_comms.py", *args
            )


#: The distributions that a release publishes, built by `nox -s build`.
DIST = ROOT / "dist"


@nox.session
def build(session: nox.Session) -> None:
    """Build and check every wheel and sdist (in dist/), then run the example from the wheels.

    After the wheels are installed alone in a fresh virtualenv,
    ``examples/echo.py`` and ``comm backends`` run there. The checks: ``twine
    check --strict``, and ``tests/distributions`` (one license, one classifier
    style, the same project URLs, ``py.typed`` in every wheel, bounded
    requirements between comm's distributions, nothing hidden in the sdists).
    Each wheel is built from its sdist, as an installer would.
    """
    shutil.rmtree(DIST, ignore_errors=True)
    session.install("build[uv]", "twine", "packaging", "pytest")
    for name in PACKAGES:
        session.run(
            "python", "-m", "build", "--installer=uv", f"--outdir={DIST}", f"packages/{name}",
            silent=True,
        )  # fmt: skip
    artifacts = sorted(str(path) for path in DIST.iterdir())
    session.run("twine", "check", "--strict", *artifacts)
    session.run("pytest", "tests/distributions", env={"COMM_DIST_DIR": str(DIST)})

    wheels = [path for path in artifacts if path.endswith(".whl")]
    with tempfile.TemporaryDirectory(prefix="comm-wheels-") as tmp:
        venv = Path(tmp) / "venv"
        session.run("python", "-m", "venv", str(venv))
        bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
        python = str(bin_dir / "python")
        # The wheels alone: comm's own distributions from dist/, their dependencies
        # (msgpack, pluggy, cryptography) from the index, nothing from this tree.
        session.run("uv", "pip", "install", "--quiet", "--python", python, *wheels)
        with session.chdir(tmp):  # out of the work tree, so nothing imports from it
            where = session.run(
                python, "-c", "import comm_core, comm_tls; print(comm_core.__file__)",
                external=True, silent=True,
            )  # fmt: skip
            imported = Path(str(where).strip()).resolve()
            if not imported.is_relative_to(venv.resolve()):
                session.error(f"comm_core was imported from {imported}, not from the wheel")
            echoed = session.run(
                python, str(ROOT / "examples" / "echo.py"), external=True, silent=True
            )
            print(echoed, end="")
            if "-> got [1, 2, 3]" not in str(echoed):
                session.error("examples/echo.py did not echo its messages")
            listed = session.run(str(bin_dir / "comm"), "backends", external=True, silent=True)
            print(listed, end="")
            schemes = ["inproc", "tcp", "tls"] + (["unix"] if hasattr(socket, "AF_UNIX") else [])
            missing = [scheme for scheme in schemes if scheme not in str(listed)]
            if missing:
                session.error(f"`comm backends` does not list {', '.join(missing)}")


# -- the summary at the end of a run -------------------------------------------------------


class _Skips(logging.Handler):
    """Collects the sessions that nox reports as skipped, with nox's reason."""

    _LINE = re.compile(r"Session (?P<name>\S+) skipped: (?P<reason>.+?)(?: \(took .*\))?\.?$")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.skipped: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = self._LINE.match(record.getMessage())
        if match:
            self.skipped[match["name"]] = match["reason"]


_SKIPS = _Skips()
logging.getLogger("nox").addHandler(_SKIPS)

_OPT_IN = ["docs", "demo", "bench", "dask", "dask-suite"]


def _summary_lines() -> list[str]:
    """What the run left out and how to run it: the text of the `summary` session."""
    lines = []
    by_reason: dict[str, list[str]] = {}
    for name, reason in _SKIPS.skipped.items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        lines.append(f"* skipped ({reason}): {', '.join(names)}")
        missing = re.fullmatch(r"Python interpreter (\S+) not found", reason)
        if missing:
            version = missing[1]
            lines.append(
                f"  Install Python {version} (`pyenv install {version}`, `uv python install "
                f"{version}` or your system's packages), then `nox -p {version}` runs them."
            )
        else:
            lines.append(f"  `nox -s {names[0]}` runs one once that is fixed.")
    if PYENV_ADDED:
        lines.append(f"* Pythons from pyenv: {', '.join(PYENV_ADDED)} (added to PYENV_VERSION).")
    if _LARGE_SKIPPED:
        lines.append(
            "* The tests marked `large` (messages above 2 GiB, about 4.5 GB of memory) were "
            f"skipped ({', '.join(sorted(set(_LARGE_SKIPPED)))}): `{LARGE_TESTS}=1 nox -s "
            "tests` runs them (CI does)."
        )
    lines.append(
        f"* Not run by default: the sessions {', '.join(_OPT_IN)} "
        "(`nox -s docs` runs one; `nox --list` describes them all)."
    )
    return lines


def _print_summary() -> None:
    count = len(_SKIPS.skipped)
    skipped = f"{count} session{'s were' if count > 1 else ' was'} skipped" if count else "none"
    text = "\n".join([f"nox summary: skipped sessions: {skipped}.", *_summary_lines()])
    print(f"\n{text}", file=sys.stderr, flush=True)


@nox.session(venv_backend="none")
def summary(session: nox.Session) -> None:
    """Say, after nox's own list, which sessions were skipped and why, and how to run them.

    It is the last of the default sessions; it reports on those that ran before it.
    """
    # Printed when nox exits, after its list of sessions, so that it is the last word.
    atexit.register(_print_summary)
