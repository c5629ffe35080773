"""The backend registry: pluggy plugins found through entry points, built lazily.

When a plugin is broken
-----------------------
The registry is built on first use: every entry point of the group is loaded
and registered, then every plugin's ``comm_register_backends()`` is called. A
plugin that fails at any of these steps is *broken*: its entry point failed to
import, names something that implements no comm hook (a backend class, a
backend factory as Dask's entry points name, a module without
``@comm_core.hookimpl`` functions), implements a hook that does not exist, or
its ``comm_register_backends()`` raised or returned something else than
backend classes. A broken plugin contributes nothing, and every lookup
(:meth:`Registry.get_backend`, :meth:`Registry.backends`, ...) raises a
:class:`~comm_core.exceptions.PluginError` naming its distribution and entry
point, whatever the scheme looked up: a broken installation is reported, not
worked around. :meth:`Registry.broken` lists the broken plugins without
raising, and ``backends(strict=False)`` the backends of the others, which is
how ``comm backends`` shows both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pluggy

from comm_core import hookspecs
from comm_core._config import get_setting
from comm_core._entrypoints import EntryPoint, entry_points
from comm_core._record import Record
from comm_core.abc import Backend
from comm_core.exceptions import BackendConflictError, PluginError, UnknownSchemeError

if TYPE_CHECKING:
    # The wire protocol (and msgpack) is imported when a stream comm first needs it.
    from comm_core.protocol import SerializerFamily

__all__ = [
    "COMM_DISTRIBUTIONS",
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "BrokenPlugin",
    "HookImplementation",
    "Registry",
    "backends",
    "get_backend",
    "get_registry",
    "register_backend",
    "register_plugin",
]

#: The entry point group in which distributions publish their comm plugin.
ENTRY_POINT_GROUP = "comm_core.backends"

#: The schemes of comm's own transport distributions, which exist on the package index: the
#: only distributions an unknown scheme's error ever tells users to install (never
#: ``comm-<scheme>`` made up from what the user typed, which a typosquatter could own).
COMM_DISTRIBUTIONS: Mapping[str, str] = MappingProxyType(
    {
        "tcp": "comm-tcp",
        "tls": "comm-tls",
        "inproc": "comm-inproc",
        "unix": "comm-unix",
        "ws": "comm-ws",
        "wss": "comm-ws",
    }
)


def scheme_advice(scheme: str, installed: Iterable[str]) -> str:
    """What to do about *scheme*, which no installed backend serves (for messages).

    The distribution to install if *scheme* is one of comm's own
    (:data:`COMM_DISTRIBUTIONS`); else the closest installed or known scheme
    if *scheme* looks like a typo of it (``tpc``: "did you mean tcp://?");
    else to install the distribution that provides it, which comm cannot name.
    """
    distribution = COMM_DISTRIBUTIONS.get(scheme)
    if distribution is not None:
        return f"{distribution} provides {scheme}://: pip install {distribution}"
    import difflib  # only for this error

    installed = set(installed)
    candidates = sorted(installed | set(COMM_DISTRIBUTIONS))
    close = difflib.get_close_matches(scheme, candidates, n=1, cutoff=0.6)
    if close:
        [match] = close
        advice = f"did you mean {match}://?"
        if match not in installed:
            advice += f" ({COMM_DISTRIBUTIONS[match]} provides it: pip install "
            advice += f"{COMM_DISTRIBUTIONS[match]})"
        return advice
    return (
        f"if a third-party distribution provides {scheme}://, install it (comm cannot "
        "tell which one does)"
    )


#: Where the docs show what a plugin looks like (extending.rst, "Plugins and entry points").
_PLUGIN_DOCS = "see 'Plugins and entry points' in comm's guide to extending it"


class BackendInfo(Record):
    """Where a registered backend comes from (immutable; compared by value)."""

    __slots__ = ("scheme", "backend_class", "plugin", "distribution", "version")  # noqa: RUF023 (field order)

    #: The URI scheme.
    scheme: str
    #: The :class:`~comm_core.Backend` subclass.
    backend_class: type[Backend]
    #: The plugin that returned it (entry point name, or the name given in code).
    plugin: str
    #: The distribution that published the plugin, or ``None`` for one registered in code.
    distribution: str | None
    #: The version of that distribution.
    version: str | None

    def __init__(
        self,
        scheme: str,
        backend_class: type[Backend],
        plugin: str,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        self._assign(
            scheme=scheme,
            backend_class=backend_class,
            plugin=plugin,
            distribution=distribution,
            version=version,
        )

    @property
    def capabilities(self) -> frozenset[str]:
        """The capabilities the backend declares."""
        return self.backend_class.capabilities

    def describe(self) -> str:
        """``"comm-tcp 0.1.0 (plugin 'tcp')"`` or ``"plugin 'x' (registered in code)"``."""
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered in code)"
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


class BrokenPlugin(Record):
    """A plugin the registry could not use, and why (immutable; compared by value)."""

    __slots__ = ("plugin", "entry_point", "distribution", "version", "message")  # noqa: RUF023 (field order)

    #: The entry point's name, or the name the plugin was registered with in code.
    plugin: str
    #: What the entry point names, as written (``module[:attr]``); ``None`` for code.
    entry_point: str | None
    #: The distribution that published the entry point, or ``None`` for code.
    distribution: str | None
    #: The version of that distribution.
    version: str | None
    #: What is wrong: the message of the :class:`~comm_core.exceptions.PluginError`
    #: that lookups raise.
    message: str

    def __init__(
        self,
        plugin: str,
        entry_point: str | None,
        distribution: str | None,
        version: str | None,
        message: str,
    ) -> None:
        self._assign(
            plugin=plugin,
            entry_point=entry_point,
            distribution=distribution,
            version=version,
            message=message,
        )


class HookImplementation(Record):
    """One plugin's implementation of a comm hook (immutable; compared by value)."""

    __slots__ = ("hook", "plugin", "distribution", "version", "function", "argnames")  # noqa: RUF023 (field order)

    #: The hook's name, such as ``"comm_cli_add_options"``.
    hook: str
    #: The plugin's name (entry point name, or the name given in code).
    plugin: str
    #: The distribution that published the plugin, or ``None`` for one registered in code.
    distribution: str | None
    #: The version of that distribution.
    version: str | None
    #: The function marked ``@comm_core.hookimpl``.
    function: Any
    #: The hook arguments the function takes, in order.
    argnames: tuple[str, ...]

    def __init__(
        self,
        hook: str,
        plugin: str,
        distribution: str | None,
        version: str | None,
        function: Any,
        argnames: tuple[str, ...],
    ) -> None:
        self._assign(
            hook=hook,
            plugin=plugin,
            distribution=distribution,
            version=version,
            function=function,
            argnames=argnames,
        )

    def call(self, **arguments: Any) -> Any:
        """Call the function with those of the hook's *arguments* it takes, as pluggy does.

        Raises:
            Exception: whatever the plugin's function raises, unchanged.
        """
        return self.function(*(arguments[name] for name in self.argnames))

    def describe(self) -> str:
        """``"comm-tls 0.1.0 (plugin 'tls')"`` or ``"plugin 'x' (registered in code)"``."""
        if self.distribution is None:
            return f"plugin {self.plugin!r} (registered in code)"
        return f"{self.distribution} {self.version} (plugin {self.plugin!r})"


class _PluginOrigin(Record):
    __slots__ = ("name", "distribution", "version", "entry_point")  # noqa: RUF023 (field order)

    name: str
    distribution: str | None
    version: str | None
    entry_point: str | None

    def __init__(
        self,
        name: str,
        distribution: str | None,
        version: str | None,
        entry_point: str | None = None,
    ) -> None:
        self._assign(name=name, distribution=distribution, version=version, entry_point=entry_point)


def _hook_names() -> list[str]:
    """The names of comm's hooks, in the order :mod:`comm_core.hookspecs` defines them."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [name for name, obj in vars(hookspecs).items() if hasattr(obj, marker)]


def _describe_object(obj: object) -> str:
    """What an entry point named, for the message saying that it is no plugin."""
    if isinstance(obj, ModuleType):
        return f"module {obj.__name__}"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    module = getattr(obj, "__module__", None)
    qualified = f"{module}.{name}" if module else name
    if isinstance(obj, type) and issubclass(obj, Backend):
        return (
            f"the backend class {qualified}, which is not a plugin (a plugin's "
            "comm_register_backends() returns it)"
        )
    if callable(obj):
        return (
            f"the callable {qualified}, which is not a plugin (comm calls no backend "
            "factory, as Dask does with its entry points)"
        )
    return f"{type(obj).__name__} {obj!r:.60}"


class Registry:
    """Backends by scheme, gathered from plugins on first use.

    Nothing is imported or scanned until a backend is first needed. Then every
    entry point of *group* is loaded (unless autoload is off: the
    ``COMM_DISABLE_PLUGIN_AUTOLOAD`` environment variable or *autoload*), each
    plugin's hooks are validated, and each plugin's
    ``comm_register_backends()`` is called.

    Args:
        group: the entry point group to load plugins from.
        autoload: load entry points; ``None`` reads the
            ``disable_plugin_autoload`` setting.
    """

    def __init__(self, *, group: str = ENTRY_POINT_GROUP, autoload: bool | None = None) -> None:
        self.group = group
        self._autoload = autoload
        self._lock = threading.RLock()
        self._pm: pluggy.PluginManager | None = None
        self._origins: dict[str, _PluginOrigin] = {}
        # Plugins that failed to load or register, then those whose backends hook failed.
        self._load_failures: list[tuple[BrokenPlugin, BaseException | None]] = []
        self._collect_failures: list[tuple[BrokenPlugin, BaseException | None]] = []
        self._infos: dict[str, BackendInfo] | None = None
        self._conflicts: dict[str, list[BackendInfo]] = {}
        self._code_backends: dict[str, BackendInfo] = {}
        self._instances: dict[str, Backend] = {}
        self._families: Mapping[str, SerializerFamily] | None = None
        # implementations() per hook, until a plugin is registered (connect() asks for
        # comm_same_host_path's on every call).
        self._implementations: dict[str, tuple[HookImplementation, ...]] = {}
        self._generation = 0  # plugins registered in code so far

    # -- building -------------------------------------------------------------------

    def _plugin_manager(self) -> pluggy.PluginManager:
        """The plugin manager, with every plugin that loads; broken ones are recorded."""
        with self._lock:
            if self._pm is None:
                pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
                pm.add_hookspecs(hookspecs)
                autoload = self._autoload
                if autoload is None:
                    autoload = not get_setting("disable_plugin_autoload")
                self._origins.clear()
                self._load_failures.clear()
                if autoload:
                    for ep in entry_points(group=self.group):
                        self._load_entry_point(pm, ep)
                self._pm = pm
            return self._pm

    def _load_entry_point(self, pm: pluggy.PluginManager, ep: EntryPoint) -> None:
        dist_name = ep.distribution
        version = ep.version
        where = f"entry point {ep.name!r} = {ep.value!r} of distribution {dist_name} {version}"
        name = ep.name if ep.name not in self._origins else f"{dist_name}:{ep.name}"
        origin = _PluginOrigin(name, dist_name, version, ep.value)
        try:
            plugin = ep.load()
        except Exception as exc:
            message = (
                f"comm backend plugin failed to import: {where} "
                f"(group {self.group!r}): {type(exc).__name__}: {exc}"
            )
            self._load_failures.append((self._broken_plugin(origin, message), exc))
            return
        try:
            self._register(pm, plugin, origin, f"{where} (group {self.group!r})")
        except PluginError as exc:
            self._load_failures.append((self._broken_plugin(origin, str(exc)), exc.__cause__))

    @staticmethod
    def _broken_plugin(origin: _PluginOrigin, message: str) -> BrokenPlugin:
        return BrokenPlugin(
            origin.name, origin.entry_point, origin.distribution, origin.version, message
        )

    def _register(
        self, pm: pluggy.PluginManager, plugin: object, origin: _PluginOrigin, where: str
    ) -> None:
        """Register *plugin*, or raise PluginError and leave nothing of it behind."""
        if origin.name in self._origins or pm.get_plugin(origin.name) is not None:
            raise PluginError(f"a comm plugin named {origin.name!r} is already registered")
        try:
            pm.register(plugin, name=origin.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"invalid comm plugin, {where}: {exc}") from exc
        try:
            if not pm.get_hookcallers(plugin):
                raise PluginError(
                    f"{where} provides no comm hook: it names {_describe_object(plugin)}. "
                    "Expected a module or object with functions marked @comm_core.hookimpl "
                    "named after comm's hooks, such as `@comm_core.hookimpl def "
                    "comm_register_backends(): return [MyBackend]` (hooks: "
                    f"{', '.join(_hook_names())}; {_PLUGIN_DOCS})"
                )
            self._check(pm, origin)
        except PluginError:
            pm.unregister(plugin)
            raise
        self._origins[origin.name] = origin

    def _check(self, pm: pluggy.PluginManager, origin: _PluginOrigin) -> None:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            source = (
                f"distribution {origin.distribution} {origin.version}"
                if origin.distribution
                else "code"
            )
            raise PluginError(
                f"comm plugin {origin.name!r} from {source} implements a hook that does not "
                f"exist ({exc}); known hooks: {', '.join(_hook_names())}"
            ) from exc

    def _raise_if_broken(self) -> None:
        """Raise the PluginError of the first broken plugin, if any (a new one each time)."""
        failures = self._load_failures or self._collect_failures
        if failures:
            broken, cause = failures[0]
            more = len(self._load_failures) + len(self._collect_failures) - 1
            extra = f" (and {more} more broken: `comm backends` lists them)" if more else ""
            raise PluginError(broken.message + extra) from cause

    def _collect(self) -> dict[str, BackendInfo]:
        with self._lock:
            if self._infos is not None:
                return self._infos
            pm = self._plugin_manager()
            claims: dict[str, list[BackendInfo]] = {}
            self._collect_failures = []
            for impl in pm.hook.comm_register_backends.get_hookimpls():
                origin = self._origins.get(
                    impl.plugin_name, _PluginOrigin(impl.plugin_name, None, None)
                )
                try:
                    infos = self._backends_of(impl.function, origin)
                except PluginError as exc:
                    broken = self._broken_plugin(origin, str(exc))
                    self._collect_failures.append((broken, exc.__cause__))
                    continue
                for info in infos:
                    claims.setdefault(info.scheme, []).append(info)
            for scheme, info in self._code_backends.items():
                claims[scheme] = [info]  # registered in code with replace=True wins
            self._infos = {scheme: found[0] for scheme, found in claims.items() if len(found) == 1}
            self._conflicts = {scheme: found for scheme, found in claims.items() if len(found) > 1}
            return self._infos

    def _backends_of(self, hook: Any, origin: _PluginOrigin) -> list[BackendInfo]:
        """Call one plugin's ``comm_register_backends()`` and check what it returns."""
        try:
            classes = hook()
        except Exception as exc:
            raise PluginError(
                f"comm plugin {origin.name!r} failed in comm_register_backends(): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if classes is None:
            classes = ()
        if isinstance(classes, (str, type)) or not isinstance(classes, Iterable):
            raise PluginError(
                f"comm plugin {origin.name!r} returned {classes!r} from "
                "comm_register_backends(); expected a sequence of comm_core.Backend "
                "subclasses"
            )
        return [self._make_info(cls, origin) for cls in classes]

    @staticmethod
    def _make_info(cls: Any, origin: _PluginOrigin) -> BackendInfo:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise PluginError(
                f"comm plugin {origin.name!r} returned {cls!r} from comm_register_backends(); "
                "expected subclasses of comm_core.Backend"
            )
        scheme = getattr(cls, "scheme", None)
        if not isinstance(scheme, str) or not scheme or scheme != scheme.lower():
            raise PluginError(
                f"backend {cls.__qualname__} of comm plugin {origin.name!r} must set a "
                f"lower-case 'scheme' class attribute, got {scheme!r}"
            )
        return BackendInfo(scheme, cls, origin.name, origin.distribution, origin.version)

    # -- public ---------------------------------------------------------------------

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object (a module or instance with ``@hookimpl`` functions).

        Raises:
            PluginError: the plugin is invalid (it implements no comm hook, or one
                that does not exist), or the name is taken.
        """
        with self._lock:
            pm = self._plugin_manager()
            plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
            where = f"plugin {plugin_name!r} (registered in code)"
            self._register(pm, plugin, _PluginOrigin(plugin_name, None, None), where)
            self._implementations.clear()
            self._generation += 1
            self._infos = None
            self._families = None
            self._instances.clear()

    def register_backend(self, backend_class: type[Backend], *, replace: bool = False) -> None:
        """Register *backend_class* for its scheme, from code.

        Raises:
            BackendConflictError: the scheme is taken and *replace* is false.
            PluginError: *backend_class* is not a valid backend.
        """
        with self._lock:
            info = self._make_info(
                backend_class, _PluginOrigin(backend_class.__qualname__, None, None)
            )
            known = self._collect()
            taken = known.get(info.scheme)
            if taken is None and info.scheme in self._conflicts:
                taken = self._conflicts[info.scheme][0]
            if taken is not None and not replace:
                raise BackendConflictError(
                    f"scheme {info.scheme!r} is already served by {taken.describe()}; "
                    f"pass replace=True to register {backend_class.__qualname__} instead"
                )
            self._code_backends[info.scheme] = info
            self._infos = None
            self._instances.pop(info.scheme, None)

    def unregister_backend(self, scheme: str) -> None:
        """Forget the backend registered in code for *scheme* (plugins come back, if any)."""
        with self._lock:
            self._code_backends.pop(scheme, None)
            self._infos = None
            self._instances.pop(scheme, None)

    def serializer_families(self) -> Mapping[str, SerializerFamily]:
        """Every serializer family: comm-core's ``pickle`` plus those plugins register.

        Raises:
            BackendConflictError: two plugins register families with one name.
            PluginError: a plugin is broken (see :meth:`broken`).
        """
        families = self._families
        if families is not None:
            return families
        from comm_core.protocol import pickle_family

        with self._lock:
            pm = self._plugin_manager()
            self._raise_if_broken()
            found: dict[str, SerializerFamily] = {pickle_family.name: pickle_family}
            for impl in pm.hook.comm_register_serializers.get_hookimpls():
                provided = cast("Sequence[SerializerFamily]", impl.function() or ())
                for family in provided:
                    if family.name in found:
                        raise BackendConflictError(
                            f"serializer family {family.name!r} of comm plugin "
                            f"{impl.plugin_name!r} is already registered"
                        )
                    found[family.name] = family
            self._families = MappingProxyType(found)
            return self._families

    def backends(self, *, strict: bool = True) -> Mapping[str, BackendInfo]:
        """A read-only view of the usable backends, by scheme (conflicted ones excluded).

        Args:
            strict: raise if a plugin is broken; ``False`` leaves broken plugins
                out (:meth:`broken` lists them), for listings such as ``comm backends``.

        Raises:
            PluginError: *strict*, and a plugin is broken.
        """
        infos = self._collect()
        if strict:
            self._raise_if_broken()
        return MappingProxyType(infos)

    def conflicts(self, *, strict: bool = True) -> Mapping[str, tuple[BackendInfo, ...]]:
        """Schemes claimed by more than one plugin, with every claimant.

        Raises:
            PluginError: *strict*, and a plugin is broken (as for :meth:`backends`).
        """
        self._collect()
        if strict:
            self._raise_if_broken()
        return MappingProxyType({s: tuple(found) for s, found in self._conflicts.items()})

    def broken(self) -> tuple[BrokenPlugin, ...]:
        """The plugins that could not be used, and why; never raises for them.

        An entry point that fails to import, names no plugin (an object with no
        ``@comm_core.hookimpl`` function), implements a hook that does not exist,
        or whose ``comm_register_backends()`` fails is broken: while one is, every
        lookup raises :class:`~comm_core.exceptions.PluginError`.
        """
        self._collect()
        return tuple(broken for broken, _ in [*self._load_failures, *self._collect_failures])

    def implementations(self, hook: str) -> tuple[HookImplementation, ...]:
        """Each plugin's implementation of *hook*, in the order pluggy would call them.

        For callers of hooks that comm-core does not call itself during lookups,
        such as the command line's; each implementation comes with its plugin's
        name and distribution, for messages. Broken plugins are left out (this
        never raises for them: see :meth:`broken`).

        Raises:
            ValueError: *hook* is not the name of a comm hook.
        """
        known = self._implementations.get(hook)
        if known is not None:
            return known
        if hook not in _hook_names():
            raise ValueError(f"no comm hook is named {hook!r}; hooks: {', '.join(_hook_names())}")
        generation = self._generation
        pm = self._plugin_manager()
        found = []
        for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
            default = _PluginOrigin(impl.plugin_name, None, None)
            origin = self._origins.get(impl.plugin_name, default)
            found.append(
                HookImplementation(
                    hook,
                    origin.name,
                    origin.distribution,
                    origin.version,
                    impl.function,
                    tuple(impl.argnames),
                )
            )
        with self._lock:
            if self._generation == generation:  # no plugin registered meanwhile
                self._implementations[hook] = tuple(found)
        return tuple(found)

    def get_backend(self, scheme: str, *, address: str | None = None) -> Backend:
        """Return the backend instance for *scheme*, created on first use.

        Raises:
            UnknownSchemeError: no installed backend serves *scheme*.
            BackendConflictError: several distributions claim *scheme*.
            PluginError: a plugin is broken, whatever *scheme* is (see :meth:`broken`).
        """
        backend = self._instances.get(scheme)
        if backend is not None:
            return backend
        with self._lock:
            infos = self._collect()
            self._raise_if_broken()
            info = infos.get(scheme)
            if info is None:
                self._raise_missing(scheme, address, infos)
            backend = self._instances.get(scheme)
            if backend is None:
                backend = self._instances[scheme] = info.backend_class()
            return backend

    def _raise_missing(
        self, scheme: str, address: str | None, infos: Mapping[str, Any]
    ) -> NoReturn:
        if scheme in self._conflicts:
            claimants = " and ".join(info.describe() for info in self._conflicts[scheme])
            raise BackendConflictError(
                f"scheme {scheme!r} is claimed by more than one backend: {claimants}; "
                "uninstall one of them"
            )
        known = tuple(sorted(infos))
        subject = f" (address {address!r})" if address else ""
        installed = ", ".join(known) if known else "none"
        raise UnknownSchemeError(
            f"no comm backend for scheme {scheme!r}{subject}; installed schemes: "
            f"{installed}; {scheme_advice(scheme, known)}",
            scheme=scheme,
            known=known,
        )


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """Return the process-wide :class:`Registry`, creating it (empty) on first call."""
    global _default
    registry = _default
    if registry is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
            registry = _default
    return registry


def get_backend(scheme: str) -> Backend:
    """Return the backend for *scheme* from the process-wide registry.

    Raises:
        UnknownSchemeError: no installed backend serves *scheme*; the message
            lists the installed schemes, and names the distribution to install
            if the scheme is one of comm's own, or the scheme meant if it
            looks like a typo (see :func:`scheme_advice`).
        BackendConflictError: two distributions claim *scheme*.
        PluginError: an installed plugin is broken.
    """
    return get_registry().get_backend(scheme)


def backends() -> Mapping[str, BackendInfo]:
    """A read-only view of the installed backends, by scheme.

    Raises:
        PluginError: an installed plugin is broken.
    """
    return get_registry().backends()


def register_backend(backend_class: type[Backend], *, replace: bool = False) -> None:
    """Register *backend_class* process-wide; see :meth:`Registry.register_backend`."""
    get_registry().register_backend(backend_class, replace=replace)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin in the process-wide registry; see :meth:`Registry.register_plugin`."""
    get_registry().register_plugin(plugin, name)
