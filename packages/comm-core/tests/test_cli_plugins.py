"""Plugins extend the ``comm`` command: options, connection arguments, doctor steps.

The plugins here are registered in code, in a registry that loads no entry
point, and serve the ``memory`` test backend; the command is built and run in
this process. comm-tls's use of the same hooks is tested with the real
transports in the root ``tests/test_cli.py``.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Mapping
from typing import Any

import pytest

import comm_core
from comm_core import PluginError, Registry
from comm_core.cli import (
    TCP_CONNECT,
    CLIError,
    DoctorContext,
    DoctorStep,
    Parser,
    Stage,
    StepFailed,
    build_parser,
    connection_args,
    doctor,
    main,
)
from memory_backend import InProcessMemoryBackend, MemoryBackend

COMMANDS = ["serve", "ping", "bench", "doctor"]


class TokenPlugin:
    """Options for memory://, turned into a ``token`` connection argument."""

    @comm_core.hookimpl
    def comm_cli_add_options(self, command: str, parser: Parser) -> None:
        group = parser.group("Memory options", "For memory://, in tests.", applies_to="memory://")
        group.add_option("--memory-token", metavar="TOKEN", help="the token to present")
        if command == "serve":
            group.add_option("--memory-open", action="store_true", help="accept any token")

    @comm_core.hookimpl
    def comm_cli_connection_args(
        self, scheme: str, options: argparse.Namespace, server_side: bool, notes: list[str]
    ) -> Mapping[str, Any] | None:
        if scheme != "memory":
            return None
        if options.memory_token == "bad":
            raise CLIError("--memory-token: 'bad' is no token")
        if server_side and options.memory_token:
            notes.append(f"clients: --memory-token {options.memory_token}")
        return {"token": options.memory_token} if options.memory_token else {}


@pytest.fixture
def plugin(memory: MemoryBackend) -> TokenPlugin:
    comm_core.register_backend(InProcessMemoryBackend)
    instance = TokenPlugin()
    comm_core.register_plugin(instance, name="token")
    return instance


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_options_are_in_the_help_of_each_command(
    plugin: TokenPlugin, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(command, "--help")
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "\nMemory options:\n  For memory://, in tests.\n" in help_text
    assert "--memory-token TOKEN" in help_text
    assert ("--memory-open" in help_text) == (command == "serve")


def test_no_options_for_backends(plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("backends", "--help")
    assert "--memory-token" not in capsys.readouterr().out


def test_connection_args(plugin: TokenPlugin) -> None:
    backend = comm_core.get_backend("memory")
    args = parse("ping", "memory://x", "--memory-token", "t0k")
    assert connection_args(args, backend, server_side=False) == {"token": "t0k"}
    assert connection_args(parse("ping", "memory://x"), backend, server_side=False) == {}
    notes: list[str] = []
    args = parse("serve", "memory://x", "--memory-token", "t0k")
    assert connection_args(args, backend, server_side=True, notes=notes) == {"token": "t0k"}
    assert notes == ["clients: --memory-token t0k"]


def test_options_that_no_plugin_uses_for_the_scheme(plugin: TokenPlugin) -> None:
    backend = comm_core.get_backend("memory-local")
    args = parse("serve", "memory-local://x", "--memory-open", "--memory-token", "t")
    with pytest.raises(CLIError) as info:
        connection_args(args, backend, server_side=True)
    assert str(info.value) == (
        "--memory-token, --memory-open: Memory options are for memory://, and memory-local:// "
        "does not use them"
    )
    assert info.value.code == 2
    # Not given: nothing to say.
    assert connection_args(parse("serve", "memory-local://x"), backend, server_side=True) == {}


def test_a_plugin_that_cannot_use_its_options(plugin: TokenPlugin) -> None:
    args = parse("ping", "memory://x", "--memory-token", "bad")
    with pytest.raises(CLIError, match="'bad' is no token"):
        connection_args(args, comm_core.get_backend("memory"), server_side=False)


def test_default_applies_to(memory: MemoryBackend) -> None:
    class Plain:
        @comm_core.hookimpl
        def comm_cli_add_options(self, parser: Parser) -> None:
            parser.group("Plain options").add_option("--plain", action="store_true")

        @comm_core.hookimpl
        def comm_cli_connection_args(self) -> None:
            return None

    comm_core.register_plugin(Plain(), name="plain")
    with pytest.raises(CLIError) as info:
        connection_args(parse("ping", "memory://x", "--plain"), memory, server_side=False)
    assert str(info.value) == (
        "--plain: Plain options are for the schemes of plugin 'plain', and memory:// does not "
        "use them"
    )


def test_options_of_a_plugin_without_connection_args_are_its_own(memory: MemoryBackend) -> None:
    class DoctorOnly:
        @comm_core.hookimpl
        def comm_cli_add_options(self, parser: Parser) -> None:
            parser.group("Probe options").add_option("--probe-depth", type=int, default=1)

    comm_core.register_plugin(DoctorOnly(), name="probe")
    args = parse("doctor", "memory://x", "--probe-depth", "3")
    assert args.probe_depth == 3
    assert connection_args(args, memory, server_side=False) == {}


def test_two_plugins_give_one_argument(plugin: TokenPlugin) -> None:
    class Other:
        @comm_core.hookimpl
        def comm_cli_connection_args(self, scheme: str) -> Mapping[str, Any]:
            return {"token": "mine"}

    comm_core.register_plugin(Other(), name="other")
    args = parse("ping", "memory://x", "--memory-token", "t")
    with pytest.raises(PluginError) as info:
        connection_args(args, comm_core.get_backend("memory"), server_side=False)
    message = str(info.value)
    assert "'token'" in message
    assert "plugin 'other' (registered in code)" in message
    assert "plugin 'token' (registered in code)" in message


@pytest.mark.parametrize("returned", ["[('token', 1)]", "raise KeyError('k')"])
def test_a_failing_connection_args_hook(memory: MemoryBackend, returned: str) -> None:
    namespace: dict[str, Any] = {"comm_core": comm_core}
    exec(  # a plugin whose hook misbehaves
        "class Faulty:\n"
        "    @comm_core.hookimpl\n"
        "    def comm_cli_connection_args(self):\n"
        f"        {returned if returned.startswith('raise') else 'return ' + returned}\n",
        namespace,
    )
    comm_core.register_plugin(namespace["Faulty"](), name="faulty")
    with pytest.raises(PluginError, match=r"plugin 'faulty'.*comm_cli_connection_args"):
        connection_args(parse("ping", "memory://x"), memory, server_side=False)


# -- clashes -----------------------------------------------------------------------------------


def _adding(*flags: str, title: str = "Clash options", **settings: Any) -> object:
    class Adder:
        @comm_core.hookimpl
        def comm_cli_add_options(self, parser: Parser) -> None:
            parser.group(title).add_option(*flags, **settings)

    return Adder()


def test_two_plugins_add_one_option(plugin: TokenPlugin) -> None:
    comm_core.register_plugin(_adding("--memory-token"), name="copycat")
    with pytest.raises(PluginError) as info:
        build_parser()
    message = str(info.value)
    # pluggy calls the plugin registered last first: it is the one that finds the option taken.
    assert message == (
        "plugin 'token' (registered in code) adds option --memory-token to `comm serve`, but "
        "plugin 'copycat' (registered in code) has --memory-token already: uninstall one of "
        "the two, or ask their authors to rename the option"
    )


def test_clash_stops_every_command(plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]) -> None:
    comm_core.register_plugin(_adding("--memory-token"), name="copycat")
    for argv in (["backends"], ["--help"], ["ping", "memory://x"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("comm: error: plugin 'token' (registered in code)")
        assert "plugin 'copycat'" in captured.err


@pytest.mark.parametrize(
    ("flags", "settings", "message"),
    [
        (("--timeout",), {}, "to `comm ping`, but `comm ping` itself has --timeout: rename"),
        (("--help",), {}, "but `comm serve` itself has --help: rename the option"),
        (("-t",), {}, "plugins add long options only (--name); '-t' is not one"),
        (("--x", "-x"), {}, "'-x' is not one"),
        (("timeout",), {}, "'timeout' is not one"),
        ((), {}, "an option needs a flag"),
        (("--must",), {"required": True}, "a plugin's option cannot be required"),
        (("--run",), {}, "stored as 'run'"),
        (("--other",), {"dest": "address"}, "stored as 'address' as that of `comm serve` itself"),
        (("--bad",), {"action": "frobnicate"}, "argparse refuses it"),
    ],
    ids=lambda v: repr(v),
)
def test_options_a_plugin_may_not_add(
    memory: MemoryBackend, flags: tuple[str, ...], settings: dict[str, Any], message: str
) -> None:
    comm_core.register_plugin(_adding(*flags, **settings), name="bad")
    with pytest.raises(PluginError) as info:
        build_parser()
    assert "plugin 'bad' (registered in code) adds option" in str(info.value)
    assert message in str(info.value)


def test_a_clash_cannot_be_swallowed(memory: MemoryBackend) -> None:
    class Sly:
        @comm_core.hookimpl
        def comm_cli_add_options(self, parser: Parser) -> None:
            with contextlib.suppress(PluginError):  # carry on as if nothing happened
                parser.group("Sly options").add_option("--memory-token")

    comm_core.register_plugin(Sly(), name="sly")
    comm_core.register_plugin(TokenPlugin(), name="token")  # called first: sly clashes
    with pytest.raises(PluginError, match=r"plugin 'sly'.*--memory-token.*plugin 'token'"):
        build_parser()


def test_two_plugins_one_group_title(plugin: TokenPlugin) -> None:
    comm_core.register_plugin(_adding("--fine", title="Memory options"), name="titled")
    with pytest.raises(PluginError, match=r"group 'Memory options'.*plugin 'titled'"):
        build_parser()


def test_a_failing_add_options_hook(memory: MemoryBackend) -> None:
    comm_core.register_plugin(_adding("--fine", nonsense=1), name="typo")
    with pytest.raises(PluginError, match=r"plugin 'typo'.*argparse refuses it"):
        build_parser()

    class Raising:
        @comm_core.hookimpl
        def comm_cli_add_options(self) -> None:
            raise RuntimeError("oops")

    comm_core.register_plugin(Raising(), name="raising")
    with pytest.raises(PluginError, match=r"'raising'.*comm_cli_add_options\(\).*RuntimeError"):
        build_parser()


# -- doctor steps ------------------------------------------------------------------------------


def _ok(detail: str | None) -> Any:
    def check(context: DoctorContext) -> str | None:
        return detail

    return check


def _fails(context: DoctorContext) -> str:
    raise StepFailed("the seal is broken", "reseal it")


SEAL_CHECK = DoctorStep("seal", _ok("sealed"), Stage.SECURE)


def test_doctor_steps_in_order(
    plugin: TokenPlugin, capsys: pytest.CaptureFixture[str], registry: Registry
) -> None:
    shared = DoctorStep("wire", _ok("wired"), Stage.CONNECT)

    class Steps:
        @comm_core.hookimpl
        def comm_cli_doctor_steps(self, scheme: str) -> list[DoctorStep]:
            assert scheme == "memory"
            return [
                SEAL_CHECK,
                shared,
                DoctorStep("token", _ok("token ok"), Stage.OPTIONS),
                DoctorStep("quiet", _ok(None), Stage.CONNECT),  # prints no line
            ]

    class Again:
        @comm_core.hookimpl(trylast=True)
        def comm_cli_doctor_steps(self) -> list[DoctorStep]:
            return [shared]  # given twice, run once

    comm_core.register_plugin(Steps(), name="steps")
    comm_core.register_plugin(Again(), name="again")
    args = parse("doctor", "memory://nobody", "--timeout", "0.2", "--ascii")
    assert doctor.run(args) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:7]] == [
        ["ok", "address"],
        ["ok", "backend"],
        ["ok", "token"],
        ["ok", "wire"],
        ["ok", "seal"],
        ["FAIL", "comm"],
    ]
    assert lines[7] == ""
    assert lines[8].startswith("The comm handshake step failed.")


def test_a_failing_step_skips_the_rest(
    plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    class Steps:
        @comm_core.hookimpl
        def comm_cli_doctor_steps(self) -> list[DoctorStep]:
            return [DoctorStep("seal", _fails, Stage.SECURE), TCP_CONNECT]

    comm_core.register_plugin(Steps(), name="steps")
    args = parse("doctor", "memory://nobody", "--ascii")
    assert doctor.run(args) == 1
    out = capsys.readouterr().out
    assert [" ".join(line.split()) for line in out.splitlines()[1:6]] == [
        "ok address memory://nobody",
        "ok backend memory:// from registered in code",
        "FAIL TCP connect memory://nobody has no host and port to open a TCP connection to",
        "-- seal skipped",
        "-- comm handshake skipped",
    ]
    assert "options" not in out  # comm's check of the options prints a line only if it fails


def test_doctor_reports_options_no_plugin_uses(
    plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse("doctor", "memory-local://x", "--memory-token", "t", "--ascii")
    assert doctor.run(args) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "FAIL options --memory-token: Memory options are for memory://, and memory-local:// "
        "does not use them"
    ) in out
    assert "-- comm handshake skipped" in out
    assert "leave out the options that memory-local:// does not use" in out


def test_doctor_passes_the_connection_args(
    plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    class Peek:
        @comm_core.hookimpl
        def comm_cli_doctor_steps(self) -> list[DoctorStep]:
            def peek(context: DoctorContext) -> str:
                return repr(context.connection_args())

            return [DoctorStep("peek", peek, Stage.OPTIONS)]

    comm_core.register_plugin(Peek(), name="peek")
    memory = comm_core.get_backend("memory")
    assert isinstance(memory, MemoryBackend)
    memory.connect_hook = seen.append
    args = parse("doctor", "memory://nobody", "--memory-token", "t0k", "--timeout", "0.2")
    assert doctor.run(args) == 1
    out = capsys.readouterr().out
    assert "peek" in out
    assert "{'token': 't0k'}" in out
    assert seen  # the comm handshake step tried to connect


def test_a_plugin_returning_something_else_than_steps(
    plugin: TokenPlugin, capsys: pytest.CaptureFixture[str]
) -> None:
    class Wrong:
        @comm_core.hookimpl
        def comm_cli_doctor_steps(self) -> list[Any]:
            return [("name", _ok("x"))]

    comm_core.register_plugin(Wrong(), name="wrong")
    assert doctor.run(parse("doctor", "memory://x", "--ascii")) == 1
    out = capsys.readouterr().out
    assert "FAIL plugins" in " ".join(out.split())
    assert "expected comm_core.cli.DoctorStep objects" in out
