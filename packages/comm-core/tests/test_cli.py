"""The ``comm`` command with comm-core alone: help, usage errors, listings, unknown schemes.

Each test runs the command as a subprocess (``python -m comm_core``), as a user
would. comm-core's own test environment has no transport installed, so these
tests either install fake distributions of their own, turn plugin autoload
off, or use schemes that no distribution provides. The commands that need a
transport are tested in the root ``tests/test_cli.py``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

import comm_core
from conftest import FakeDistributions

COMMANDS = ["backends", "serve", "ping", "bench", "doctor"]


def comm(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m comm_core *args`` with warnings as errors and no COMM_* variable."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMM_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", "comm_core", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**environment, "PYTHONIOENCODING": "utf-8"},
        timeout=60,
    )


NO_PLUGINS = {"COMM_DISABLE_PLUGIN_AUTOLOAD": "1"}


def backend_plugin(scheme: str, capabilities: tuple[str, ...] = ()) -> str:
    """The source of a plugin module that registers a stub backend for *scheme*."""
    return textwrap.dedent(
        f"""
        import comm_core

        class StubBackend(comm_core.Backend):
            scheme = {scheme!r}
            capabilities = frozenset({capabilities!r})

            def get_connector(self):
                raise NotImplementedError

            def get_listener(self, loc, handle_comm, deserialize, **connection_args):
                raise NotImplementedError

            def get_address_host(self, loc):
                return loc

            def resolve_address(self, loc):
                return loc

            def get_local_address_for(self, loc):
                return loc

        @comm_core.hookimpl
        def comm_register_backends():
            return [StubBackend]
        """
    )


# -- the command itself --------------------------------------------------------------------


def test_importing_comm_core_does_not_import_the_cli() -> None:
    code = "import sys, comm_core; print(sorted(m for m in sys.modules if '.cli' in m))"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


_LIGHT_COMMANDS = """
import contextlib, io, sys
from comm_core.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["backends"])
    main(["backends", "--json"])
    with contextlib.suppress(SystemExit):
        main(["--help"])
print(sorted(m for m in ("asyncio", "ssl", "msgpack") if m in sys.modules))
"""


def test_listing_backends_imports_no_asyncio() -> None:
    # `comm backends` and `comm --help` start fast: no event loop, no TLS, no codec.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _LIGHT_COMMANDS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_console_script_is_declared() -> None:
    [script] = importlib.metadata.entry_points(group="console_scripts", name="comm")
    assert script.value == "comm_core.cli:main"
    assert script.dist is not None
    assert script.dist.name == "comm-core"


def test_console_script_runs() -> None:
    name = "comm.exe" if sys.platform == "win32" else "comm"
    script = Path(sysconfig.get_path("scripts")) / name
    if not script.exists():
        pytest.skip(f"comm-core is not installed with its scripts in {script.parent}")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert comm_core.__version__ in result.stdout


def test_version() -> None:
    result = comm("--version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"comm (comm-core) {comm_core.__version__}, protocol ")


def test_help_lists_the_commands_and_exit_statuses() -> None:
    result = comm("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: comm ")
    for command in COMMANDS:
        assert f"    {command} " in result.stdout
    assert "exit status" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str) -> None:
    result = comm(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: comm {command} ")
    assert "exit status" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = comm()
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: comm ")
    assert "comm: error: a command is required" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["ping"], "the following arguments are required: ADDRESS"),
        (
            ["ping", "tcp://127.0.0.1:1", "-c", "0"],
            "argument -c/--count: expected a number above 0",
        ),
        (["ping", "tcp://127.0.0.1:1", "-i", "-1"], "argument -i/--interval: expected a number"),
        (["ping", "tcp://127.0.0.1:1", "-s", "lots"], "argument -s/--size: expected a size"),
        (["ping", "tcp://127.0.0.1:1", "--timeout", "nan"], "argument --timeout: expected a"),
        (["bench", "--sizes", "16 bits"], "argument --sizes: expected a size"),
        (["bench", "--duration", "0"], "argument --duration: expected a number of seconds"),
        (["backends", "--frob"], "unrecognized arguments: --frob"),
        (["doctor"], "the following arguments are required: ADDRESS"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = comm(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: comm" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- comm backends -----------------------------------------------------------------------------


def test_backends_with_no_transport() -> None:
    result = comm("backends", **NO_PLUGINS)
    assert result.returncode == 0, result.stderr
    assert "No comm backends are installed" in result.stdout
    assert "pip install comm-tcp" in result.stdout
    assert "COMM_DISABLE_PLUGIN_AUTOLOAD" in result.stdout  # says why
    assert result.stderr == ""


def test_backends_json_with_no_transport() -> None:
    result = comm("backends", "--json", **NO_PLUGINS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "comm_core": comm_core.__version__,
        "backends": [],
        "conflicts": [],
    }


def test_backends_lists_distribution_version_and_capabilities(
    fake_dists: FakeDistributions,
) -> None:
    fake_dists.add(
        "comm-clisolo",
        {"clisolo": "clisolo_plugin"},
        {"clisolo_plugin": backend_plugin("clisolo", ("encrypted", "zero-copy"))},
        version="2.5.1",
    )
    result = comm("backends", PYTHONPATH=str(fake_dists.root))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SCHEME", "DISTRIBUTION", "VERSION", "CAPABILITIES"]
    [row] = [line for line in lines if line.startswith("clisolo ")]
    assert row.split() == ["clisolo", "comm-clisolo", "2.5.1", "encrypted,", "zero-copy"]
    assert "Conflicts" not in result.stdout

    document = json.loads(comm("backends", "--json", PYTHONPATH=str(fake_dists.root)).stdout)
    [entry] = [b for b in document["backends"] if b["scheme"] == "clisolo"]
    assert entry == {
        "scheme": "clisolo",
        "distribution": "comm-clisolo",
        "version": "2.5.1",
        "plugin": "clisolo",
        "capabilities": ["encrypted", "zero-copy"],
        "backend_class": "clisolo_plugin.StubBackend",
    }


def test_backends_shows_conflicts(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-dupa", {"clidup": "dupa_plugin"}, {"dupa_plugin": backend_plugin("clidup")}
    )
    fake_dists.add(
        "comm-dupb",
        {"clidup": "dupb_plugin"},
        {"dupb_plugin": backend_plugin("clidup")},
        version="3.0",
    )
    result = comm("backends", PYTHONPATH=str(fake_dists.root))
    assert result.returncode == 0, result.stderr
    table, _, conflicts = result.stdout.partition("Conflicts:")
    assert "clidup" not in table  # not usable, so not listed as a backend
    assert "uninstall all but one" in conflicts
    rows = [line.split() for line in conflicts.splitlines()]
    claimants = [row for row in rows if any(cell.startswith("comm-dup") for cell in row)]
    # The first claimant's row names the scheme; the next one does not repeat it.
    assert claimants[0][0] == "clidup"
    assert sorted([claimants[0][1:3], claimants[1][0:2]]) == [
        ["comm-dupa", "1.0"],
        ["comm-dupb", "3.0"],
    ]

    document = json.loads(comm("backends", "--json", PYTHONPATH=str(fake_dists.root)).stdout)
    [conflict] = document["conflicts"]
    assert conflict["scheme"] == "clidup"
    assert sorted(c["distribution"] for c in conflict["claimants"]) == ["comm-dupa", "comm-dupb"]
    assert "clidup" not in {b["scheme"] for b in document["backends"]}


def test_backends_with_a_broken_plugin(fake_dists: FakeDistributions) -> None:
    fake_dists.add(
        "comm-clibroken", {"broken": "clibroken_plugin"}, {"clibroken_plugin": "raise 1 / 0\n"}
    )
    fake_dists.add(
        "comm-clifine", {"clifine": "clifine_plugin"}, {"clifine_plugin": backend_plugin("clifine")}
    )
    result = comm("backends", PYTHONPATH=str(fake_dists.root))
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: comm backend plugin failed to import")
    assert "comm-clibroken" in result.stderr
    assert "ZeroDivisionError" in result.stderr
    assert "Traceback" not in result.stderr
    # The others are listed, and the broken one too, apart.
    table, _, broken = result.stdout.partition("Broken plugins:")
    assert "clifine " in table
    assert "comm-clibroken" not in table
    assert "comm looks up no backend" in broken
    assert ["comm-clibroken", "1.0", "broken", "=", "clibroken_plugin"] in [
        line.split() for line in broken.splitlines()
    ]


@pytest.mark.parametrize(
    "value",
    ["clidask_mod:DaskBackend", "clidask_mod:make_backend", "clidask_mod"],
    ids=["backend-class", "factory", "module"],
)
def test_backends_with_an_entry_point_that_names_no_plugin(
    fake_dists: FakeDistributions, value: str
) -> None:
    # Dask's shape: the entry point names a backend class or factory, not a plugin module.
    source = backend_plugin("clidask").replace("@comm_core.hookimpl", "")
    source = source.replace("StubBackend", "DaskBackend")
    source += "\ndef make_backend():\n    return DaskBackend()\n"
    fake_dists.add("comm-clidask", {"clidask": value}, {"clidask_mod": source}, version="0.9")
    fake_dists.add(
        "comm-clifine", {"clifine": "clifine_plugin"}, {"clifine_plugin": backend_plugin("clifine")}
    )
    result = comm("backends", PYTHONPATH=str(fake_dists.root))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"comm: error: entry point 'clidask' = {value!r} of distribution comm-clidask 0.9 "
        "(group 'comm_core.backends') provides no comm hook"
    )
    assert "@comm_core.hookimpl def comm_register_backends(): return [MyBackend]" in line
    assert "clifine " in result.stdout.partition("Broken plugins:")[0]

    document = json.loads(comm("backends", "--json", PYTHONPATH=str(fake_dists.root)).stdout)
    assert "clifine" in {b["scheme"] for b in document["backends"]}
    [broken] = document["broken"]
    assert broken["distribution"] == "comm-clidask"
    assert broken["entry_point"] == value
    assert "provides no comm hook" in broken["error"]

    # Every other command says so too, instead of "no comm backend for scheme 'clidask'".
    result = comm("ping", "clidask://x", PYTHONPATH=str(fake_dists.root))
    assert result.returncode == 2
    assert "comm-clidask 0.9" in result.stderr
    assert "provides no comm hook" in result.stderr
    assert "no comm backend for scheme" not in result.stderr


# -- unknown schemes, malformed addresses, no transport ----------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ping", "nope://127.0.0.1:8786"],
        ["serve", "nope://127.0.0.1:8786"],
        ["bench", "nope"],
        ["bench", "nope://127.0.0.1:8786"],
    ],
    ids=lambda v: " ".join(v),
)
def test_unknown_scheme(args: list[str]) -> None:
    result = comm(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("comm: error: no comm backend for scheme 'nope'")
    assert result.stderr.endswith(
        "if a third-party distribution provides nope://, install it (comm cannot tell which "
        "one does)\n"
    )
    assert "pip install" not in result.stderr  # never comm-<whatever was typed>
    assert result.stderr.count("\n") == 1  # one line, no traceback


@pytest.mark.parametrize("args", [["ping", "://x"], ["serve", "1tcp://x"]])
def test_malformed_address(args: list[str]) -> None:
    result = comm(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: address ")
    assert result.stderr.count("\n") == 1


def test_bench_with_no_transport() -> None:
    result = comm("bench", **NO_PLUGINS)
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: no comm transport is installed")
    assert "pip install comm-inproc comm-tcp" in result.stderr


def test_malformed_environment_variable() -> None:
    result = comm("ping", "127.0.0.1:8786", COMM_DEFAULT_SCHEME="1+")
    assert result.returncode == 2
    assert result.stderr.startswith("comm: error: environment variable COMM_DEFAULT_SCHEME=")


@pytest.mark.parametrize("ascii_only", [False, True], ids=["unicode", "ascii"])
def test_doctor_unknown_scheme(ascii_only: bool) -> None:
    result = comm("doctor", "nope://127.0.0.1:8786", *(["--ascii"] if ascii_only else []))
    assert result.returncode == 1
    assert result.stderr == ""
    ok, fail = ("ok", "FAIL") if ascii_only else ("✓", "✗")
    lines = result.stdout.splitlines()
    assert lines[0] == "comm doctor nope://127.0.0.1:8786"
    assert lines[1].split() == [ok, "address", "nope://127.0.0.1:8786"]
    assert lines[2].split()[:2] == [fail, "backend"]
    assert "no installed transport serves nope://" in lines[2]
    assert "The backend step failed" in result.stdout
    assert "pip install" not in result.stdout


def test_doctor_ascii_when_stdout_cannot_encode_unicode() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("COMM_")}
    result = subprocess.run(
        [sys.executable, "-m", "comm_core", "doctor", "nope://x"],
        capture_output=True,
        env={**environment, "PYTHONIOENCODING": "ascii"},
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout.decode("ascii").splitlines()[1].split()[0] == "ok"


def test_doctor_malformed_address() -> None:
    result = comm("doctor", "://x", "--ascii")
    assert result.returncode == 1
    assert result.stdout.splitlines()[1].split()[:2] == ["FAIL", "address"]
    assert "The address step failed" in result.stdout
    assert "scheme://location" in result.stdout
