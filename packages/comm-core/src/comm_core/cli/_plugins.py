"""What plugins give the commands: their options, and the connection arguments made of them.

The ``comm_cli_add_options`` hook adds options to a command's parser through a
:class:`Parser`, which records whose each option is; the
``comm_cli_connection_args`` hook turns the parsed options into keyword
arguments for ``connect()`` and ``listen()``. Each plugin is called on its own
(see :meth:`comm_core.Registry.implementations`), so that a clash or a failure
names the plugin.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from comm_core._registry import HookImplementation, get_registry
from comm_core.cli._common import CLIError
from comm_core.exceptions import PluginError

if TYPE_CHECKING:
    from comm_core.abc import Backend

__all__ = [
    "ConnectionArgs",
    "OptionGroup",
    "Parser",
    "add_plugin_options",
    "connection_args",
    "resolve_connection_args",
]

#: The attribute of the parsed options that holds the command's :class:`_CommandOptions`.
_ATTRIBUTE = "comm_plugin_options"


class _Option:
    """One option a plugin added: its first flag (for messages), ``dest`` and default."""

    __slots__ = ("default", "dest", "flag")

    def __init__(self, flag: str, dest: str, default: Any) -> None:
        self.flag = flag
        self.dest = dest
        self.default = default


class _CommandOptions:
    """The plugins' options on one command, and who owns each flag, ``dest`` and group title."""

    def __init__(self, command: str, parser: argparse.ArgumentParser) -> None:
        self.command = command
        self.parser = parser
        itself = self.itself = f"`comm {command}` itself"
        # argparse has no public view of what a parser holds: its actions are the truth.
        actions = parser._actions
        self.flags = {flag: itself for action in actions for flag in action.option_strings}
        self.dests = {action.dest: itself for action in actions}
        self.dests.update({"run": itself, _ATTRIBUTE: itself})
        self.titles = {g.title: itself for g in parser._action_groups if g.title}
        self.groups: list[OptionGroup] = []
        #: The first clash or refusal, kept in case a plugin's hook swallows the exception.
        self.error: PluginError | None = None

    def refuse(self, message: str) -> PluginError:
        """A :class:`PluginError` with *message*, remembered as this command's first error."""
        error = PluginError(message)
        if self.error is None:
            self.error = error
        return error


class OptionGroup:
    """A titled group of one plugin's options on one command: see :meth:`Parser.group`."""

    def __init__(
        self,
        owner: HookImplementation,
        command: _CommandOptions,
        title: str,
        description: str | None,
        applies_to: str | None,
    ) -> None:
        self._owner = owner
        self._command = command
        self._group = command.parser.add_argument_group(title, description)
        self._options: list[_Option] = []
        #: The group's title in ``--help``, such as ``"WebSocket options"``.
        self.title = title
        #: The schemes the options are for, for messages (``"ws:// and wss://"``).
        self.applies_to = applies_to

    @property
    def plugin(self) -> str:
        """The name of the plugin that owns the group."""
        return self._owner.plugin

    def add_option(self, *flags: str, **settings: Any) -> None:
        """Add an option: the arguments of :meth:`argparse.ArgumentParser.add_argument`.

        Only long options (``--name``); ``required=True`` is refused, since the
        command serves every scheme. The parsed value is the attribute ``dest``
        of the options (by default the first flag without its dashes, ``-``
        turned into ``_``).

        Raises:
            PluginError: a flag or ``dest`` is taken, by the command or by
                another plugin (naming both), a flag is not a long option, or
                argparse refuses the settings.
        """
        command, owner = self._command, self._owner
        named = ", ".join(flags) or "(none)"
        where = f"{owner.describe()} adds option {named} to `comm {command.command}`"
        if not flags:
            raise command.refuse(f"{where}: an option needs a flag, such as --name")
        for flag in flags:
            if not (flag.startswith("--") and len(flag) > 2 and not flag.startswith("---")):
                raise command.refuse(
                    f"{where}: plugins add long options only (--name); {flag!r} is not one"
                )
        if settings.get("required"):
            raise command.refuse(f"{where}: a plugin's option cannot be required")
        dest = settings.pop("dest", None) or flags[0][2:].replace("-", "_")
        for flag in flags:
            owner_of_flag = command.flags.get(flag)
            if owner_of_flag == command.itself:
                raise command.refuse(f"{where}, but {owner_of_flag} has {flag}: rename the option")
            if owner_of_flag is not None:
                raise command.refuse(
                    f"{where}, but {owner_of_flag} has {flag} already: uninstall one of the "
                    "two, or ask their authors to rename the option"
                )
        if dest in command.dests:
            raise command.refuse(
                f"{where}, whose value would be stored as {dest!r} as that of "
                f"{command.dests[dest]}: pass another dest="
            )
        try:
            action = self._group.add_argument(*flags, dest=dest, **settings)
        except (argparse.ArgumentError, TypeError, ValueError) as exc:
            raise command.refuse(f"{where}: argparse refuses it: {exc}") from exc
        for flag in flags:
            command.flags[flag] = owner.describe()
        command.dests[dest] = owner.describe()
        self._options.append(_Option(flags[0], dest, action.default))

    def given(self, options: argparse.Namespace) -> list[str]:
        """The first flag of each of the group's options given on the command line."""
        return [
            option.flag
            for option in self._options
            if getattr(options, option.dest, option.default) != option.default
        ]


class Parser:
    """What a plugin's ``comm_cli_add_options`` hook adds its options to, for one command."""

    def __init__(self, command: _CommandOptions, owner: HookImplementation) -> None:
        self._command = command
        self._owner = owner
        self._groups: dict[str, OptionGroup] = {}

    @property
    def command(self) -> str:
        """The command's name: ``"serve"``, ``"ping"``, ``"bench"`` or ``"doctor"``."""
        return self._command.command

    def group(
        self, title: str, description: str | None = None, *, applies_to: str | None = None
    ) -> OptionGroup:
        """The group of this plugin's options titled *title*, made on first call.

        Args:
            title: the heading in ``--help``, which says whose options they are,
                such as ``"WebSocket options"``; a plugin may have several groups.
            description: text under the heading (kept as written: lay it out).
            applies_to: the schemes the options are for, used in the error for
                options given with an address whose scheme they do not serve:
                ``"--ws-path: WebSocket options are for ws:// and wss://, and
                tcp:// does not use them"``. Default: the schemes of the
                plugin's distribution.

        Raises:
            PluginError: another plugin (or the command) has a group with that title.
        """
        group = self._groups.get(title)
        if group is not None:
            return group
        owner = self._command.titles.get(title)
        if owner is not None:
            raise self._command.refuse(
                f"{self._owner.describe()} adds the option group {title!r} to "
                f"`comm {self.command}`, which {owner} has already: each plugin titles "
                "its groups after itself"
            )
        if applies_to is None:
            source = self._owner.distribution or f"plugin {self._owner.plugin!r}"
            applies_to = f"the schemes of {source}"
        group = OptionGroup(self._owner, self._command, title, description, applies_to)
        self._command.titles[title] = self._owner.describe()
        self._command.groups.append(group)
        self._groups[title] = group
        return group


def add_plugin_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Let every plugin add its options to *parser*, the parser of ``comm COMMAND``.

    Broken plugins are left out here: the command reports them when it looks
    up a backend (and ``comm backends`` lists them).

    Raises:
        PluginError: two plugins (or a plugin and the command) clash, or a
            plugin's hook fails.
    """
    options = _CommandOptions(command, parser)
    parser.set_defaults(**{_ATTRIBUTE: options})
    for impl in get_registry().implementations("comm_cli_add_options"):
        try:
            impl.call(command=command, parser=Parser(options, impl))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{impl.describe()} failed in comm_cli_add_options() for `comm {command}`: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if options.error is not None:  # refused, and the plugin carried on regardless
            raise options.error


class ConnectionArgs:
    """The connection arguments that the plugins give for one address, or what is wrong.

    *values* are the keyword arguments; *failure* is the first error a plugin
    raised about its own options, and *unused* the error for options given
    that no plugin serving the address consumed.
    """

    def __init__(
        self, values: dict[str, Any], failure: CLIError | None, unused: CLIError | None
    ) -> None:
        self.values = values
        self.failure = failure
        self.unused = unused

    def get(self) -> dict[str, Any]:
        """The keyword arguments for ``connect()``/``listen()``.

        Raises:
            CLIError: options were given that no plugin uses for the address,
                or a plugin cannot use its options.
        """
        if self.unused is not None:
            raise self.unused
        if self.failure is not None:
            raise self.failure
        return dict(self.values)


def resolve_connection_args(
    options: argparse.Namespace,
    backend: Backend,
    *,
    server_side: bool,
    in_process: bool = False,
    notes: list[str] | None = None,
) -> ConnectionArgs:
    """Ask every plugin for its connection arguments for *backend*; see :func:`connection_args`.

    Raises:
        PluginError: a plugin's hook failed with something else than a
            :class:`CLIError`, returned something else than a mapping or
            ``None``, or two plugins give the same argument.
    """
    command: _CommandOptions | None = getattr(options, _ATTRIBUTE, None)
    name = command.command if command is not None else ""
    scheme = backend.scheme
    values: dict[str, Any] = {}
    owners: dict[str, str] = {}
    serving: set[str] = set()
    answering: set[str] = set()
    failure: CLIError | None = None
    for impl in get_registry().implementations("comm_cli_connection_args"):
        answering.add(impl.plugin)
        try:
            result = impl.call(
                command=name,
                scheme=scheme,
                backend=backend,
                options=options,
                server_side=server_side,
                in_process=in_process,
                notes=notes if notes is not None else [],
            )
        except CLIError as exc:
            serving.add(impl.plugin)
            failure = failure or exc
            continue
        except Exception as exc:
            raise PluginError(
                f"{impl.describe()} failed in comm_cli_connection_args() for {scheme}://: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if result is None:
            continue
        if not isinstance(result, Mapping):
            raise PluginError(
                f"{impl.describe()} returned {result!r:.60} from comm_cli_connection_args(); "
                "expected a mapping of keyword arguments, or None"
            )
        serving.add(impl.plugin)
        for key, value in result.items():
            if key in owners:
                raise PluginError(
                    f"{impl.describe()} and {owners[key]} both give the connection argument "
                    f"{key!r} for {scheme}://: uninstall one of them"
                )
            owners[key] = impl.describe()
            values[key] = value
    unused = []
    for group in command.groups if command is not None else ():
        # Options of a plugin that makes no connection arguments are its own business.
        if group.plugin in serving or group.plugin not in answering:
            continue
        given = group.given(options)
        if given:
            unused.append(
                f"{', '.join(given)}: {group.title} are for {group.applies_to}, and "
                f"{scheme}:// does not use them"
            )
    return ConnectionArgs(values, failure, CLIError("; ".join(unused)) if unused else None)


def connection_args(
    options: argparse.Namespace,
    backend: Backend,
    *,
    server_side: bool,
    in_process: bool = False,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The keyword arguments for ``connect()`` (or ``listen()``, *server_side*) to *backend*.

    Each plugin's ``comm_cli_connection_args`` hook gives its part (``None``
    for a backend it does not serve); the parts are merged.

    Raises:
        CLIError: options were given that no plugin uses for the backend's
            scheme, or a plugin cannot use its options.
        PluginError: a plugin failed, or two give one argument.
    """
    return resolve_connection_args(
        options, backend, server_side=server_side, in_process=in_process, notes=notes
    ).get()
