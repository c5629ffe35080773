"""The hooks through which a plugin extends comm.

A plugin is a module (or any object) with functions marked
``@comm_core.hookimpl`` whose names match the hooks below. A distribution
publishes its plugin through one entry point in the ``comm_core.backends``
group::

    # pyproject.toml of comm-example
    [project.entry-points."comm_core.backends"]
    example = "comm_example._plugin"

    # comm_example/_plugin.py
    import comm_core

    @comm_core.hookimpl
    def comm_register_backends():
        from comm_example._backend import ExampleBackend  # import lazily
        return [ExampleBackend]

comm's own transports (comm-tcp, comm-tls, comm-inproc) register exactly this
way. Applications and tests can register a plugin or a backend in code with
:func:`comm_core.register_plugin` and :func:`comm_core.register_backend`.

The first two hooks give comm backends and serializer families. The
``comm_cli_*`` hooks extend the ``comm`` command as pytest plugins extend
pytest: a plugin adds options to its commands, turns them into connection
arguments for :func:`comm_core.connect` and :func:`comm_core.listen`, and adds
steps to ``comm doctor``. comm-tls contributes its ``--ca``, ``--cert``, ...
options and its certificate diagnosis this way; the command itself knows no
transport. The command calls these hooks only when it runs, one plugin at a
time (so that it can name the plugin in its messages), in pluggy's order.

The ``comm_same_host_*`` hooks let ``connect("tcp://host:port")`` take a
faster path to a listener on the same host (comm-unix: a Unix socket) or in
the same process (comm-inproc) without an address change; see
:mod:`comm_core.selection` and :doc:`/paths`.

A hook implementation with a name not listed here makes the registry fail with
:class:`~comm_core.exceptions.PluginError`, so a misspelled hook never goes
unnoticed; so does an entry point that names something with no hook
implementation at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

# The command-line hooks take and return comm_core.cli's types (a Parser, DoctorSteps),
# annotated Any here: comm_core.cli imports the registry, which imports this module. So do
# the same-host hooks (comm_core.session's ServerSession, comm_core.selection's Offer and
# Path): comm_core.selection asks the registry for their implementations.
if TYPE_CHECKING:
    import argparse

    from comm_core._options import Options
    from comm_core.abc import Backend, Listener
    from comm_core.protocol import SerializerFamily

__all__ = [
    "PROJECT_NAME",
    "comm_cli_add_options",
    "comm_cli_connection_args",
    "comm_cli_doctor_steps",
    "comm_register_backends",
    "comm_register_serializers",
    "comm_same_host_offer",
    "comm_same_host_path",
    "hookimpl",
    "hookspec",
]

#: The pluggy project name shared by specs and implementations.
PROJECT_NAME = "comm"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marker for plugin functions that implement a comm hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def comm_register_backends() -> Sequence[type[Backend]]:  # type: ignore[empty-body]
    """Return the :class:`~comm_core.Backend` subclasses this plugin provides.

    Each class names its URI scheme in its ``scheme`` attribute. Called once,
    when comm first needs a backend, whichever scheme that is: keep the plugin
    module and the module of each returned class light, and import heavy
    dependencies (asyncio, the transport's libraries) in the backend's methods,
    such as ``get_connector()`` and ``get_listener()``.

    Two plugins that return backends for the same scheme make that scheme
    unusable with :class:`~comm_core.exceptions.BackendConflictError`, naming
    both distributions.

    :return: a sequence of ``Backend`` subclasses (may be empty).
    """


@hookspec
def comm_register_serializers() -> Sequence[SerializerFamily]:  # type: ignore[empty-body]
    """Return the :class:`~comm_core.protocol.SerializerFamily` objects this plugin provides.

    Stream transports use them for values msgpack cannot carry. A family whose
    ``trusted_by_default`` is true is used on write and accepted on read
    unless the caller names other families; one that is false (such as
    ``pickle``, which comm-core provides) only when named. Two families with
    one name raise :class:`~comm_core.exceptions.BackendConflictError`.

    :return: a sequence of ``SerializerFamily`` (may be empty).
    """


# -- the comm command ---------------------------------------------------------------------


@hookspec
def comm_cli_add_options(command: str, parser: Any) -> None:
    """Add command-line options to the ``comm`` command *command*.

    Called when ``comm`` builds its argument parser (for every command, even
    ``comm --help``: keep it light, and import nothing heavy such as ssl), once
    for each of the commands that connect or listen: ``"serve"``, ``"ping"``,
    ``"bench"`` and ``"doctor"``. Add options in groups of your own, whose
    title says whose they are::

        group = parser.group("WebSocket options", applies_to="ws:// and wss://")
        group.add_option("--ws-path", metavar="PATH", help="the request path")

    :meth:`comm_core.cli.OptionGroup.add_option` takes the arguments of
    :meth:`argparse.ArgumentParser.add_argument`; plugins add long options
    only (``--name``), and none may be required. An option (or its ``dest``,
    or a group title) that the command or another plugin already has is an
    error, never a silent override: ``add_option`` raises
    :class:`~comm_core.exceptions.PluginError` naming both plugins, and
    ``comm`` prints it and exits with status 2, whatever the command (as
    pytest refuses to start with clashing plugins). Prefix your options with
    your transport's name when they are not obviously its own.

    Not ``firstresult``: every plugin adds its own options.

    :param command: the command's name.
    :param parser: where this plugin adds its options (a :class:`comm_core.cli.Parser`).
    """


@hookspec
def comm_cli_connection_args(
    command: str,
    scheme: str,
    backend: Backend,
    options: argparse.Namespace,
    server_side: bool,
    in_process: bool,
    notes: list[str],
) -> Mapping[str, Any] | None:
    """Turn the parsed options into connection arguments for *backend*, or return ``None``.

    Called when a command is about to :func:`~comm_core.connect` to an
    address or :func:`~comm_core.listen` on one, once for the address's
    backend. Return ``None`` if this plugin does not serve that backend (most
    plugins serve only their own scheme); otherwise a mapping, maybe empty,
    of keyword arguments for ``connect()`` or ``listen()``, such as
    ``{"security": Security(...)}``. Returning a mapping *consumes* this
    plugin's options for the address: options given on the command line
    that no plugin consumed make ``comm`` fail with a usage error such as
    ``--ca: TLS options are for encrypted schemes such as tls://, and tcp://
    does not use them`` (the group's title and ``applies_to``). Two plugins
    returning the same key is an error too.

    Not ``firstresult``: several plugins may serve one backend (a TLS plugin
    and an authentication plugin, say), and their mappings are merged.

    :param command: ``"serve"``, ``"ping"``, ``"bench"`` or ``"doctor"``.
    :param scheme: the address's scheme (``backend.scheme``).
    :param backend: the address's backend.
    :param options: the parsed command line; this plugin's options are
        attributes named by their ``dest`` (``--temporary-credentials``:
        ``options.temporary_credentials``).
    :param server_side: the arguments are for ``listen()`` (``comm serve``,
        and ``comm bench`` measuring in one process), not ``connect()``.
    :param in_process: ``comm bench`` will pass the same arguments to both
        ``listen()`` and ``connect()`` in this process: make them work for
        both sides, with throwaway credentials if none are given.
    :param notes: lines for the user, such as where credentials were written:
        ``comm serve`` prints them once it listens; the other commands do not.
    :raises comm_core.cli.CLIError: options this plugin cannot use (a missing
        file, a contradiction); ``comm`` prints the message and exits with status 2.
    :return: keyword arguments for ``connect()``/``listen()``, or ``None``.
    """


@hookspec
def comm_cli_doctor_steps(
    scheme: str, backend: Backend, options: argparse.Namespace
) -> Sequence[Any] | None:
    """Return the steps this plugin adds to ``comm doctor`` for an address of *backend*.

    Called once the address is parsed and its backend found. comm's own steps
    are generic: the address, the backend, the name resolution of a host:port
    address, and the comm handshake. A transport adds what only it knows:
    checking its options, opening its connection (comm-core offers
    :data:`comm_core.cli.TCP_CONNECT` for transports over TCP), its own
    handshake. Each :class:`~comm_core.cli.DoctorStep` has a name (its line's
    label), a function that checks one thing and returns a detail for its
    line or raises :class:`~comm_core.cli.StepFailed` with what to fix, and a
    :class:`~comm_core.cli.Stage` that places it among the others. Steps of
    one stage run in the order the plugins give them; a step given by two
    plugins (the same object) runs once.

    :param scheme: the address's scheme (``backend.scheme``).
    :param backend: the address's backend.
    :param options: the parsed command line.
    :return: the steps (may be empty), or ``None`` for none.
    """


# -- same-host paths ----------------------------------------------------------------------


@hookspec
def comm_same_host_offer(
    listener: Listener, session: Any, scheme: str, encrypted: bool
) -> Any | None:
    """Return a faster path this plugin offers to dialers of *listener*, or ``None``.

    Called when a listener made by :func:`comm_core.listen` starts, before it
    accepts anything, if the ``same_host`` setting is on for it; not for a
    listener made otherwise. The :class:`~comm_core.selection.Offer` returned
    (unstarted) typically listens on an address of its own transport and
    serves the same handler, *session*; its ``start()`` returns the
    handshake entries (names starting with ``same_host_``) that every
    greeting of the listener then carries. comm-core stops it when the
    listener stops. An offer that fails to start is logged and left out; the
    listener starts all the same.

    Return ``None`` for a listener whose guarantees the path would not keep.
    For a listener whose backend encrypts (*encrypted*: tls://), a path must
    at least authenticate both ends as the listener does: comm-unix offers
    its Unix socket to a tls:// listener only behind a token that each TLS
    greeting hands out (see :attr:`Offer.per_comm
    <comm_core.selection.Offer.per_comm>` and :meth:`ServerSession.companion
    <comm_core.session.ServerSession.companion>`), and nothing to one whose
    session requires encryption.

    Not ``firstresult``: each plugin may offer its own path (comm-inproc and
    comm-unix both do).

    :param listener: the listener about to start (its address is known, its
        contact address not yet).
    :param session: the listener's :class:`~comm_core.session.ServerSession`:
        the handler to serve (and its ``options``, ``deserialize`` flag and
        ``connection_args``).
    :param scheme: the scheme of the listener's address, such as ``"tcp"``.
    :param encrypted: whether the listener's backend encrypts.
    :return: an :class:`~comm_core.selection.Offer`, or ``None``.
    """


@hookspec
def comm_same_host_path(
    requested: str,
    offer: Mapping[str, Any],
    options: Options,
    connection_args: Mapping[str, Any],
) -> Any | None:
    """Open and verify a connection to an offered path, synchronously, or return ``None``.

    Called by :func:`comm_core.connect` (if the ``same_host`` setting is on
    for it) once the listener at *requested* has sent its greeting holding
    *offer* (its ``same_host_*`` entries), before this side has sent
    anything on that connection; or, when a path to *requested* was verified
    before, with the offer remembered then, before dialling at all. Must not
    block: an implementation connects a non-blocking socket (a listener on
    this host answers at once, or refuses) and checks what proves it reached
    *the same* listener (comm-unix: the kernel's peer credentials against the
    offer's process and user id), and returns ``None`` on any doubt, logging
    why at debug level. ``None`` keeps the dialled connection; nothing is lost.

    Not ``firstresult``: comm-core takes the returned
    :class:`~comm_core.selection.Path` of lowest ``rank`` and calls
    ``discard()`` on the others.

    :param requested: the address given to ``connect()``.
    :param offer: the listener's ``same_host_*`` handshake entries (a peer's
        values: check their types).
    :param options: the settings of this connect.
    :param connection_args: the connection arguments given to ``connect()``.
    :return: a :class:`~comm_core.selection.Path`, or ``None``.
    """
